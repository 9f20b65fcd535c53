"""
A FETCH whose session ends under it (the client gone, or gomail stopping
and saying BYE) at every step of its disk work: nothing fails (it read the
session's folder, None once the client is gone), nothing more is written,
no response is left half-written, and nothing of the FETCH stays behind.
"""

from __future__ import annotations

import gc
import re
import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess import imapmailbox
from gomail.mailaccess.imapreadahead import ReadAhead
from tests.imaptesting import IMAPClient
from tests.test_imap_readahead import LARGE, MULTI, ONE, Harness, unique

#: FETCHes whose disk work is cut at every step: read ahead, streamed, indexed, \Seen set.
QUERIES = [b"(BODY.PEEK[])", b"(UID BODY.PEEK[] FLAGS)", b"(BODY[])", b"(BODYSTRUCTURE BODY.PEEK[])",
           b"(BODY.PEEK[1] BODY.PEEK[2.MIME])", b"(ENVELOPE RFC822)", b"(BODY.PEEK[]<10.100>)"]


def responses(data: bytes) -> list[bytes]:
    """The responses in C{data}, each with its literals; fails on one cut short (a line or a literal unfinished)."""
    found = []
    pos = 0
    while pos < len(data):
        end = pos
        while True:
            line_end = data.find(b"\r\n", end)
            if line_end < 0:
                raise AssertionError(f"unfinished response {data[pos:pos + 80]!r}")
            literal = re.search(rb"\{(\d+)\}$", data[end:line_end])
            if literal is None:
                end = line_end + 2
                break
            end = line_end + 2 + int(literal.group(1))
            if end > len(data):
                raise AssertionError(f"unfinished literal in {data[pos:pos + 80]!r}")
        found.append(data[pos:end])
        pos = end
    return found


class FetchEndsWithSessionTests(SynchronousTestCase):
    """The session ends while its FETCH waits for the I/O pool."""

    def fetch_until(self, query: bytes, steps: int, end: Callable[[IMAPClient], None],
                    messages: tuple[bytes, ...]) -> tuple[bytes, bytes, int]:
        """
        FETCH 1:* C{query} over C{messages}, its I/O-pool jobs let run one
        at a time (the reactor's turns between); after C{steps} of them
        C{end} ends the session, then every job left runs. (What was
        written before C{end}, what after, the jobs run.)
        """
        harness = Harness(self.mktemp())
        for n, content in enumerate(messages):
            harness.deliver(unique(n), content, mtime=1_700_000_000 + n)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.pool.synchronous = False
        client.proto.dataReceived(b"f FETCH 1:* " + query + b"\r\n")
        ran = 0
        while ran < steps and harness.pool.pending:
            client.take()
            harness.pool.release_one()
            ran += 1
        before = client.take()
        end(client)
        while harness.pool.pending:
            harness.pool.release_one()
            harness.clock.advance(0)
            ran += 1
        self.assertEqual(harness.pool.pending, [])
        return before, client.take(), ran

    def all_steps(self, query: bytes, end: Callable[[IMAPClient], None],
                  messages: tuple[bytes, ...] = (ONE, MULTI, LARGE, ONE)) -> list[tuple[bytes, bytes]]:
        """fetch_until at every step of C{query}'s disk work: one (before, after) each."""
        _, _, total = self.fetch_until(query, 10_000, lambda client: None, messages)
        return [self.fetch_until(query, steps, end, messages)[:2] for steps in range(total + 1)]

    def test_client_gone(self):
        """
        The client goes at any step: nothing is logged as an error (the FETCH
        used the session's folder, None by then), nothing more is written,
        and no timer is left for the session (its idle timer is not re-armed).
        """

        def gone(client: IMAPClient) -> None:
            client.transport.loseConnection()
            client.proto.connectionLost(Failure(ConnectionDone()))
            client.transport.clear()

        for query in QUERIES:
            for steps, (_, after) in enumerate(self.all_steps(query, gone)):
                self.assertEqual(after, b"", (query, steps))
                gc.collect()  # a Deferred failing unhandled is logged when collected
                self.assertEqual(self.flushLoggedErrors(), [], (query, steps))

    def test_idle_timer_not_rearmed(self):
        """A FETCH the client left does not re-arm the session's idle timer (30 minutes of a session gone)."""
        harness = Harness(self.mktemp())
        harness.deliver(unique(0), ONE)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.pool.synchronous = False
        client.proto.dataReceived(b"f FETCH 1 (BODY.PEEK[])\r\n")
        client.transport.loseConnection()
        client.proto.connectionLost(Failure(ConnectionDone()))
        harness.pool.release()
        harness.clock.advance(0)
        self.assertEqual([call for call in harness.clock.getDelayedCalls()
                          if getattr(call.func, "__self__", None) is client.proto], [])

    def test_no_seen_for_a_client_gone(self):
        """The client goes while BODY[] waits for the message's index: nothing was sent, \\Seen is not set."""
        harness = Harness(self.mktemp())
        harness.deliver(unique(0), MULTI)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.pool.synchronous = False
        client.proto.dataReceived(b"f FETCH 1 (BODYSTRUCTURE BODY[])\r\n")
        self.assertEqual([job[0].__name__ for job in harness.pool.pending], ["read_indexed"])
        client.transport.loseConnection()
        client.proto.connectionLost(Failure(ConnectionDone()))
        harness.pool.release()
        self.assertEqual(harness.files("cur"), [unique(0) + ":2,"])

    def test_bye(self):
        """
        gomail stops (BYE) at any step of a FETCH of messages read ahead,
        indexed or flagged: what was written before is whole responses, BYE
        is the last thing written (no `* 2 FETCH (BODY[] )` after it). (Not
        a large message: BYE is written into its literal while it streams.)
        """
        for query in (b"(BODY.PEEK[])", b"(BODY[])", b"(BODYSTRUCTURE BODY.PEEK[])", b"(ENVELOPE BODY.PEEK[1])"):
            for steps, (before, after) in enumerate(self.all_steps(query, lambda c: c.proto.server_stopping(),
                                                                   (ONE, MULTI, ONE, MULTI))):
                answer = responses(before + after)
                self.assertEqual(answer[-1], b"* BYE Server shutting down\r\n", (query, steps))
                for response in answer[:-1]:
                    self.assertRegex(response, rb"(?s)^(\* \d+ FETCH \(.*\)|f OK FETCH completed)\r\n$",
                                     (query, steps))

    def test_read_ahead_goes_with_the_fetch(self):
        """Once a FETCH is answered nothing holds its read-ahead (nor what it read): the folder keeps none."""
        made: list[weakref.ref[ReadAhead]] = []

        class Recorded(ReadAhead):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                made.append(weakref.ref(self))

        self.patch(imapmailbox, "ReadAhead", Recorded)
        harness = Harness(self.mktemp())
        for n in range(3):
            harness.deliver(unique(n), ONE)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        self.assertTrue(client.send(b"f FETCH 1:* (BODY.PEEK[])\r\n").endswith(b"f OK FETCH completed\r\n"))
        gc.collect()
        self.assertEqual(len(made), 1)
        self.assertIsNone(made[0]())
