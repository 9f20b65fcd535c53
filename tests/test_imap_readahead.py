"""
FETCH of whole messages read ahead (L{gomail.mailaccess.imapreadahead}):
the same bytes as one message at a time, several small messages to an
I/O-pool job, never more than the budget read and not yet sent to a client
that does not read, messages removed or renamed meanwhile answered as
before. Bytes in, bytes out, over in-memory transports on a task.Clock.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess.imapreadahead import read_batch
from gomail.mailaccess.imapsections import FirstBlock
from gomail.mailaccess.imapstore import BLOCK
from tests.imaptesting import IMAPClient, IMAPHarness
from tests.smtphelpers import ManualRun, TLSStringTransport

ONE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: one\r\n\r\nhello\r\n"
MULTI = (b"From: a@b\r\nSubject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n"
         b"\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\npart one\r\n--XX\r\n"
         b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n")
LARGE = b"Subject: large\r\nFrom: x@y\r\n\r\n" + b"".join(b"line %06d of a larger body\r\n" % i for i in range(4000))
LF_ONLY = b"Subject: lf only\nFrom: lf@example.org\n\nbody\n.\n"
NO_BLANK = b"Subject: no blank line\r\nX-A: b\r\n"
MESSAGES = [ONE, MULTI, LARGE, LF_ONLY, NO_BLANK, b"", ONE + b"more\r\n" * 100]
#: The attribute sets whose answers must not change (mixed ones included).
QUERIES = [b"UID", b"FLAGS", b"RFC822.SIZE", b"INTERNALDATE", b"BODY[]", b"BODY.PEEK[]", b"RFC822", b"ENVELOPE",
           b"BODYSTRUCTURE", b"(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])", b"(BODY.PEEK[] ENVELOPE)",
           b"(FLAGS BODY.PEEK[] UID)", b"(BODY.PEEK[] BODY.PEEK[])", b"(RFC822 BODY[])", b"FULL",
           b"(INTERNALDATE RFC822.SIZE BODY.PEEK[] BODYSTRUCTURE)"]


def unique(n: int) -> str:
    """The unique name (a Maildir file's name before its info) of the n-th test message."""
    return f"{1_700_000_000 + n}.m{n}_0.mx.test"


def octets(result: Any) -> int:
    """Message bytes in what an I/O-pool job gave (a batch, one message's first block, a block)."""
    if isinstance(result, list):
        return sum(octets(item) for item in result)
    if isinstance(result, FirstBlock):
        return len(result.first)
    return len(result) if isinstance(result, bytes) else 0


class SlowClient(TLSStringTransport):
    """
    A client that reads only when told (L{read}): past C{window} unread
    octets the server's producer is paused. Once C{counting}, what is
    written is only counted and hashed (FETCHes of 50 MB are not kept).
    """

    window = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counting = False
        self.sent = self.taken = 0
        self.digest = hashlib.sha256()
        self.tail = b""
        self.paused = False

    def write(self, data: bytes) -> None:
        """Kept, or once C{counting} counted and hashed; past C{window} unread octets the producer is paused."""
        if not self.counting:
            super().write(data)
            return
        self.sent += len(data)
        self.digest.update(data)
        self.tail = (self.tail + data)[-200:]
        if self.producer is not None and not self.paused and self.sent - self.taken > self.window:
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        """As L{write} of the pieces joined."""
        self.write(b"".join(data))

    def unregisterProducer(self) -> None:
        """No producer, none paused."""
        super().unregisterProducer()
        self.paused = False

    def read(self) -> None:
        """The client takes everything sent so far."""
        self.taken = self.sent
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()


class Harness(IMAPHarness):
    """An L{IMAPHarness} whose I/O pool is a L{ManualRun} (synchronous until told), counting the message bytes read."""

    def __init__(self, directory: str, **settings: Any) -> None:
        super().__init__(directory, **settings)
        self.pool = ManualRun()
        self.pool.synchronous = True
        self.read = 0
        self.jobs: list[str] = []
        self.server.run = self.run

    def run(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        """The account's C{run}: the job's name recorded, it waits in the pool, the message bytes it read counted."""
        self.jobs.append(getattr(f, "__name__", ""))
        return self.pool(f, *args, **kwargs).addCallback(self._count)

    def _count(self, result: Any) -> Any:
        self.read += octets(result)
        return result

    def slow_client(self) -> tuple[Any, SlowClient]:
        """A logged-in session with INBOX selected, over a L{SlowClient}."""
        peer = IPv4Address("TCP", "192.0.2.7", 40000)
        transport = SlowClient(peerAddress=peer)
        proto = self.server.factory(implicit_tls=False).buildProtocol(peer)
        proto.makeConnection(transport)
        client = IMAPClient(proto, transport, self.clock)
        client.take()
        assert b"l1 OK" in client.login()
        assert b"s OK" in client.send(b"s SELECT INBOX\r\n")
        return proto, transport


class FetchTests(SynchronousTestCase):
    """What a client sees of a FETCH, read ahead or not."""

    def harness(self, messages: list[bytes] = MESSAGES) -> Harness:
        """A L{Harness} whose INBOX holds C{messages} (in this order: their times rise), not yet listed."""
        harness = Harness(self.mktemp())
        for n, content in enumerate(messages):
            harness.deliver(unique(n), content, mtime=1_700_000_000 + 100 * n)
        return harness

    def fetch(self, query: bytes, command: bytes = b"FETCH 1:*", budget: int | None = None,
              manual: bool = False) -> tuple[bytes, bytes, list[str]]:
        """(the FETCH's answer, a FETCH FLAGS after it, the files in cur/) on a fresh Maildir."""
        harness = self.harness()
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        if budget is not None:
            client.proto.mbox.read_ahead_budget = budget
        if not manual:
            answer = client.send(b"f " + command + b" " + query + b"\r\n")
        else:
            harness.pool.synchronous = False
            client.proto.dataReceived(b"f " + command + b" " + query + b"\r\n")
            answer = b""
            for _ in range(10_000):  # one I/O-pool job at a time, the reactor's turns between
                answer += client.take()
                if not harness.pool.pending:
                    break
                harness.pool.release_one()
            harness.pool.synchronous = True
            answer += client.take()
        return answer, client.send(b"g FETCH 1:* FLAGS\r\n"), harness.files("cur")

    def test_same_answers_read_ahead_or_not(self):
        """
        Every attribute set (UID, FLAGS, sizes, dates, BODY[], BODY.PEEK[],
        RFC822, ENVELOPE, BODYSTRUCTURE, mixed) answers byte for byte the
        same read ahead (one batch, a message a batch, I/O finishing later)
        as one message at a time (budget 0: the path from before read-ahead),
        with the same flags on disk afterwards.
        """
        for query in QUERIES:
            for command in (b"FETCH 1:*", b"UID FETCH 2:*", b"FETCH 6,2,3:4"):
                plain = self.fetch(query, command, budget=0)
                self.assertTrue(plain[0].endswith(b"f OK FETCH completed\r\n"), (query, plain[0][-300:]))
                for variant in ({}, {"budget": 1}, {"manual": True}, {"manual": True, "budget": 200}):
                    self.assertEqual(self.fetch(query, command, **variant), plain, (query, command, variant))

    def test_whole_messages_as_stored(self):
        """BODY.PEEK[] with UID, FLAGS, RFC822.SIZE and INTERNALDATE: each message's stored bytes in a literal."""
        answer, _, _ = self.fetch(b"(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])", b"FETCH 1:2")
        self.assertEqual(answer, b"".join(
            b"* %d FETCH (UID %d FLAGS (\\Recent) RFC822.SIZE %d INTERNALDATE \"%s\" BODY[] {%d}\r\n%s)\r\n"
            % (n, n, len(content), date, len(content), content)
            for n, content, date in ((1, ONE, b"14-Nov-2023 22:13:20 +0000"), (2, MULTI, b"14-Nov-2023 22:15:00 +0000"))
        ) + b"f OK FETCH completed\r\n")

    def test_body_sets_seen(self):
        """BODY[] (read ahead) sets \\Seen: FLAGS in the answer, S in the file names; RFC822 too."""
        answer, flags, files = self.fetch(b"BODY[]", b"FETCH 1:2", manual=True)
        self.assertEqual(answer, b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\n" % (len(ONE), ONE) +
                         b"* 2 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\n" % (len(MULTI), MULTI) +
                         b"f OK FETCH completed\r\n")
        self.assertEqual(files[:2], [unique(0) + ":2,S", unique(1) + ":2,S"])
        self.assertIn(b"* 3 FETCH (FLAGS (\\Recent))", flags)
        _, _, files = self.fetch(b"RFC822", b"FETCH 3")
        self.assertEqual(files[2], unique(2) + ":2,S")

    def test_body_with_envelope(self):
        """BODY.PEEK[] with ENVELOPE (the header read first) is answered; it ended the session before."""
        answer, _, _ = self.fetch(b"(BODY.PEEK[] ENVELOPE)", b"FETCH 1")
        self.assertEqual(answer, b"* 1 FETCH (BODY[] {%d}\r\n%s ENVELOPE (NIL \"one\" ((NIL NIL \"alice\" "
                                 b"\"example.org\")) ((NIL NIL \"alice\" \"example.org\")) ((NIL NIL \"alice\" "
                                 b"\"example.org\")) ((NIL NIL \"bob\" \"example.com\")) NIL NIL NIL NIL))\r\n"
                                 b"f OK FETCH completed\r\n" % (len(ONE), ONE))

    def test_small_messages_several_to_a_pool_job(self):
        """A FETCH of 200 small messages hands the I/O pool a few jobs, not one a message."""
        harness = self.harness([ONE] * 200)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.jobs.clear()
        answer = client.send(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        self.assertEqual(answer.count(b"{%d}\r\n%s)\r\n" % (len(ONE), ONE)), 200)
        self.assertEqual(harness.jobs, ["read_batch"])
        self.assertEqual(harness.read, 200 * len(ONE))

    def test_many_messages_at_once(self):
        """
        3,000 messages answered without waiting (tiny ones read ahead; UID
        and FLAGS, which need no disk) are all answered: such a run (nested
        calls in twisted's FETCH) gives the reactor a turn every 64 messages,
        so it never reaches Python's recursion limit (FETCH 1:* (UID FLAGS)
        stopped after 241 messages before).
        """
        harness = self.harness([b"x\r\n"] * 3000)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        answer = client.send(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        self.assertEqual(answer.count(b" FETCH (BODY[] {3}\r\nx\r\n)\r\n"), 3000)
        self.assertTrue(answer.endswith(b"f OK FETCH completed\r\n"))
        answer = client.send(b"g FETCH 1:* (UID FLAGS)\r\n")
        self.assertEqual(answer.count(b" FLAGS (\\Recent))\r\n"), 3000)
        self.assertTrue(answer.endswith(b"* 3000 FETCH (UID 3000 FLAGS (\\Recent))\r\ng OK FETCH completed\r\n"))

    def test_message_removed_before_it_is_read(self):
        """A message another session removed before the FETCH read it is NIL; the others whole; the session goes on."""
        harness = self.harness([ONE, MULTI, LF_ONLY])
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.pool.synchronous = False
        client.proto.dataReceived(b"f FETCH 1:3 (BODY.PEEK[])\r\n")
        self.assertEqual(client.take(), b"")
        os.unlink(os.path.join(harness.maildir(), "cur", harness.files("cur")[1]))
        harness.pool.release()
        harness.pool.synchronous = True
        self.assertEqual(client.take(), b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(ONE), ONE) +
                         b"* 2 FETCH (BODY[] NIL)\r\n" +
                         b"* 3 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(LF_ONLY), LF_ONLY) + b"f OK FETCH completed\r\n")
        self.assertEqual(client.send(b"n NOOP\r\n"), b"* 2 EXPUNGE\r\n* 2 EXISTS\r\nn OK Completed\r\n")

    def test_small_message_read_once(self):
        """BODYSTRUCTURE with BODY.PEEK[] of a small message: its file is read once, with its index (not again for BODY[])."""
        harness = self.harness([MULTI])
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        harness.jobs.clear()
        answer = client.send(b"f FETCH 1 (BODYSTRUCTURE BODY.PEEK[])\r\n")
        self.assertIn(b" BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(MULTI), MULTI), answer)
        self.assertEqual(harness.jobs, ["read_indexed", "encode_structures"])  # one read; the structure made off the reactor

    def test_large_message_waits_for_no_batch(self):
        """
        A large message between small ones read ahead is opened at once, not
        after the batch of the small ones behind it (started when its turn came).
        """
        harness = self.harness([ONE, LARGE, ONE, ONE, ONE, ONE, ONE])
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        client.proto.mbox.read_ahead_budget = 4 * len(ONE)  # a first batch of message 1 only
        harness.pool.synchronous = False
        client.proto.dataReceived(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        harness.pool.release_one()
        self.assertEqual(client.take(), b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(ONE), ONE))
        self.assertEqual([job[0].__name__ for job in harness.pool.pending], ["read_batch", "open_range"])
        harness.pool.synchronous = True
        harness.pool.release()
        answer = client.take()
        self.assertEqual(answer.count(b"{%d}\r\n%s)\r\n" % (len(ONE), ONE)), 5)
        self.assertIn(b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(LARGE), LARGE), answer)
        self.assertTrue(answer.endswith(b"* 7 FETCH (BODY[] {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (len(ONE), ONE)))

    def test_message_renamed_by_another_session(self):
        """Messages whose flags another session changed (their files renamed) are found and sent whole."""
        harness = self.harness([ONE, MULTI])
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        cur = os.path.join(harness.maildir(), "cur")
        for name in harness.files("cur"):
            os.rename(os.path.join(cur, name), os.path.join(cur, name + "F"))
        answer = client.send(b"f FETCH 1:2 (BODY.PEEK[])\r\n")
        self.assertEqual(answer, b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(ONE), ONE) +
                         b"* 2 FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(MULTI), MULTI) + b"f OK FETCH completed\r\n")


class MemoryTests(SynchronousTestCase):
    """Read-ahead is bounded: a client that does not read gets no more read for it than the budget."""

    def stalled_fetch(self, messages: list[bytes], budget: int) -> int:
        """
        FETCH 1:* (BODY.PEEK[]) to a client that reads only when nothing
        else can happen, every I/O-pool job let run as soon as it is asked
        for: the most message bytes ever read from disk and not yet sent
        (what was sent includes each response's few framing bytes).
        """
        harness = Harness(self.mktemp())
        for n, content in enumerate(messages):
            harness.deliver(unique(n), content, mtime=1_700_000_000 + n)
        proto, transport = harness.slow_client()
        proto.mbox.read_ahead_budget = budget
        harness.pool.synchronous = False
        transport.counting = True
        proto.dataReceived(b"f FETCH 1:* (BODY.PEEK[])\r\n")
        most = 0
        for _ in range(100_000):
            harness.clock.advance(0)
            if harness.pool.pending:
                harness.pool.release_one()
            elif transport.tail.endswith(b"f OK FETCH completed\r\n"):
                break
            else:
                transport.read()
            most = max(most, harness.read - transport.sent)
        expected = b"".join(b"* %d FETCH (BODY[] {%d}\r\n%s)\r\n" % (n, len(content), content)
                            for n, content in enumerate(messages, 1)) + b"f OK FETCH completed\r\n"
        self.assertEqual(transport.digest.hexdigest(), hashlib.sha256(expected).hexdigest())
        return most

    def test_large_messages_streamed(self):
        """10 x 5 MB: streamed block by block: never more than one block (64 KiB) read and not yet sent."""
        big = [b"Subject: big %d\r\n\r\n" % n + (b"%09d" % n + b"x" * 63 + b"\r\n") * (5 * 1024 * 1024 // 74)
               for n in range(10)]
        self.assertLessEqual(self.stalled_fetch(big, 1024 * 1024), BLOCK)

    def test_small_messages_within_budget(self):
        """300 x 20 KB with a 256 KiB budget: read ahead (well past one message), never past the budget."""
        small = [b"Subject: small %d\r\n\r\n" % n + b"y" * (20 * 1024) for n in range(300)]
        most = self.stalled_fetch(small, 256 * 1024)
        self.assertGreater(most, 100 * 1024)
        self.assertLessEqual(most, 256 * 1024)


class ReadBatchTests(SynchronousTestCase):
    """L{read_batch}, the blocking side."""

    def test_budget_and_large_messages(self):
        """Small messages read whole up to the budget (the first always); a larger one skipped unopened; gone: the error."""
        harness = IMAPHarness(self.mktemp())
        for n, content in enumerate([ONE, LARGE, MULTI, ONE, MULTI]):
            harness.deliver(unique(n), content, mtime=1_700_000_000 + n)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        folder = client.proto.mbox
        entries = folder.entries
        os.unlink(os.path.join(folder.path, "cur", entries[2].filename))
        items = read_batch(folder.path, entries, 2 * len(ONE) + len(MULTI) - 1, 1024)
        self.assertEqual(items[0], FirstBlock(None, 0, len(ONE), ONE))
        self.assertIsNone(items[1])
        self.assertIsInstance(items[2], FileNotFoundError)
        self.assertEqual(items[3], FirstBlock(None, 0, len(ONE), ONE))
        self.assertEqual(len(items), 4)  # the fifth would pass the budget
        # No budget: the first message still, and the larger one after it (it costs nothing).
        self.assertEqual(read_batch(folder.path, entries, 0, 1024)[1:], [None])

    def test_one_listing_a_batch(self):
        """
        Messages removed or renamed since the session listed the folder: cur/
        is listed once for the whole batch (it was once per message removed);
        the removed ones are gone, the renamed ones read.
        """
        harness = IMAPHarness(self.mktemp())
        for n in range(40):
            harness.deliver(unique(n), ONE, mtime=1_700_000_000 + n)
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        folder = client.proto.mbox
        cur = os.path.join(folder.path, "cur")
        for entry in folder.entries[:20]:
            os.unlink(os.path.join(cur, entry.filename))
        for entry in folder.entries[20:30]:
            os.rename(os.path.join(cur, entry.filename), os.path.join(cur, entry.filename + "F"))
        listings: list[str] = []
        real_listdir = os.listdir
        self.patch(os, "listdir", lambda path: listings.append(path) or real_listdir(path))
        items = read_batch(folder.path, folder.entries, 1024 * 1024, 1024)
        self.assertEqual(listings, [cur])
        self.assertEqual([type(item) for item in items[:20]], [FileNotFoundError] * 20)
        self.assertEqual(items[20:], [FirstBlock(None, 0, len(ONE), ONE)] * 20)
