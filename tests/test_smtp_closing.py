"""
How an SMTP session ends, and that nothing happens after it (issue 14, review of items 1-3).

A review of the hardening found sessions that outlived their last reply:
a close that waited forever on a client not reading it, pipelined input run
after the client was gone, a session deadline dodged while a reply was
pending, replies sent after the final 421. Each test drives the real protocol
on an in-memory transport and a Clock, and checks what the client sees and
what the spool holds.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.smtphelpers import HarnessMixin, ManualRun, queued_id, replies

MESSAGE = b"Subject: test\r\n\r\nHello\r\n"
TRANSACTION = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" + MESSAGE + b".\r\n"


class PendingBlacklist:
    """A blacklist whose answer comes when the test gives it."""

    def __init__(self) -> None:
        self.answer: Deferred = Deferred()

    def check(self, ip: str) -> Deferred:
        return self.answer


class CloseTests(HarnessMixin, SynchronousTestCase):
    """A session's last reply ends it, whether or not the client reads it."""

    def test_client_not_reading_its_last_reply_is_aborted(self):
        """After QUIT a client that does not take the 221 (the close cannot finish) is aborted 30 s later."""
        h = self.harness(idleTimeout=300)
        client = h.connect()
        self.assertEqual(client.send(b"QUIT\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(client.transport.disconnecting)
        h.clock.advance(29)
        self.assertFalse(client.transport.disconnected)
        h.clock.advance(1)
        self.assertTrue(client.transport.disconnected)  # StringTransport: aborted
        self.assertEqual(h.server.rejections["output_unread"], 1)

    def test_close_wait_is_at_most_the_idle_timeout(self):
        """With an idle timeout under 30 s, a closing connection gets no longer than that."""
        h = self.harness(idleTimeout=5)
        client = h.connect()
        client.send(b"QUIT\r\n")
        h.clock.advance(5)
        self.assertTrue(client.transport.disconnected)

    def test_closed_session_leaves_no_timer(self):
        """Once the connection is gone, no deadline of the session is left on the clock."""
        h = self.harness()
        client = h.connect()
        client.send(b"QUIT\r\n")
        client.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_nothing_answered_after_the_last_reply(self):
        """A reply that was pending when the session hung up (a commit) is never sent after the 421."""
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        client.send(MESSAGE + b".\r\n")
        client.proto.hang_up(421, "4.3.2", "mx.test Service shutting down")
        manual.release()
        self.assertEqual(client.take(), b"421 4.3.2 mx.test Service shutting down\r\n")


class LostConnectionTests(HarnessMixin, SynchronousTestCase):
    """Input a client pipelined is dropped with the client."""

    def test_pipelined_message_behind_a_pending_commit_is_not_queued(self):
        """
        A client pipelines two messages and disconnects while the first is
        being committed: the first is queued (its commit was under way), the
        second never runs, so nothing is queued that its client was not told
        250 for and would send again; no temporary file is left.
        """
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual)
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        manual.synchronous = False
        client.send(TRANSACTION + TRANSACTION)
        client.lose()
        manual.release()
        manual.synchronous = True
        self.assertEqual(len(h.files("queue")), 2)  # one message: content and envelope
        self.assertEqual(h.files("tmp"), [])
        self.assertEqual(h.server.sessions, set())

    def test_message_in_data_is_discarded(self):
        """A connection lost in the middle of DATA leaves no file behind."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: half\r\n\r\nhalf a mes")
        client.lose()
        self.assertTrue(h.spool_is_empty())


class SessionDeadlineTests(HarnessMixin, SynchronousTestCase):
    """smtp.maxSessionTime cannot be dodged by keeping a reply pending."""

    def test_deadline_during_a_commit_sends_the_250_then_closes(self):
        """At maxSessionTime during a commit the client gets its 250, then 421; what it pipelined is not run."""
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual, maxSessionTime=60)
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        manual.synchronous = False
        self.assertEqual(len(replies(client.send(TRANSACTION + TRANSACTION))), 3)  # MAIL, RCPT, 354
        h.clock.advance(60)
        manual.release()
        got = replies(client.take())
        self.assertEqual(len(got), 2, got)
        queued_id(got[0] + b"\r\n")
        self.assertEqual(got[1], b"421 4.4.2 mx.test Error: session time limit exceeded")
        self.assertEqual(len(h.files("queue")), 2)  # one message: content and envelope
        self.assertTrue(client.closed)

    def test_idle_timeout_waits_for_our_pending_reply(self):
        """While gomail owes the reply (a slow commit) the idle timeout does not fire; after the 250 it does."""
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual, idleTimeout=10)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        client.send(MESSAGE + b".\r\n")
        h.clock.advance(25)
        self.assertEqual(client.take(), b"")
        self.assertFalse(client.closed)
        manual.release()
        queued_id(client.take())
        h.clock.advance(10)
        self.assertEqual(client.take(), b"421 4.4.2 mx.test Error: timeout exceeded\r\n")

    def test_repeated_recipient_is_junk(self):
        """The same RCPT over and over counts as a junk command: past junkCommandLimit, 421 4.7.0."""
        h = self.harness(junkCommandLimit=3)
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\n")
        for _ in range(4):
            self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"), b"250 2.1.5 Recipient ok\r\n")
        self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"),
                         b"421 4.7.0 Error: too many junk commands, closing connection\r\n")
        self.assertTrue(client.closed)

    def test_recipient_over_the_limit_is_junk(self):
        """RCPTs past maxRecipients (452 4.5.3) count as junk too: they cannot hold a session forever."""
        h = self.harness(junkCommandLimit=2, maxRecipients=1)
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        for _ in range(2):
            self.assertEqual(client.send(b"RCPT TO:<carol@example.com>\r\n"), b"452 4.5.3 Error: too many recipients\r\n")
        self.assertTrue(client.send(b"RCPT TO:<carol@example.com>\r\n").startswith(b"421 4.7.0 "))


class EarlyInputTests(HarnessMixin, SynchronousTestCase):
    """A trusted client's input before the banner is bounded, then read in full."""

    def test_reading_resumes_after_a_large_early_input(self):
        """
        Over 64 KiB sent before the banner (allowed from a trusted client) pauses
        reading; once greeted and served, the connection is read again.
        """
        h = self.harness(junkCommandLimit=100000)
        blacklist = PendingBlacklist()
        h.server.blacklist = blacklist
        client = h.connect("127.0.0.1", greet=False)
        client.send(b"NOOP\r\n" * 12000)
        client.send(b"NOOP\r\n")
        self.assertEqual(client.transport.producerState, "paused")
        blacklist.answer.callback(False)
        got = replies(client.take())
        self.assertEqual(got[0], b"220 mx.test ESMTP gomail")
        self.assertEqual(len(got), 12002)
        self.assertEqual(client.transport.producerState, "producing")
