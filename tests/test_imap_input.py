"""IMAP input bounds: what a client pipelines behind a command that is still being answered."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess.imap import MAX_QUEUED_BYTES
from tests.imaptesting import BOB, BOB_PASSWORD, IMAPClient, IMAPHarness
from tests.smtphelpers import ManualRun
from tests.test_pop3 import HeldVerifier


def login_pending(test: SynchronousTestCase) -> tuple[IMAPHarness, IMAPClient, HeldVerifier]:
    """A session inside TLS whose LOGIN is being checked (bcrypt held until C{verifier.release()})."""
    verifier = HeldVerifier()
    harness = IMAPHarness(test.mktemp(), verifier=verifier)
    client = harness.connect()
    client.starttls()
    test.assertEqual(client.send(b'l1 LOGIN "%s" "%s"\r\n' % (BOB.encode(), BOB_PASSWORD.encode())), b"")
    return harness, client, verifier


class PipelinedInputTests(SynchronousTestCase):
    """Lines held behind a pending LOGIN are bounded by octets, by not reading the connection."""

    def pending_login(self):
        _, client, verifier = login_pending(self)
        return client, verifier

    def test_reading_stops_past_the_bound_and_resumes(self):
        """
        Past MAX_QUEUED_BYTES of held lines the connection is no longer read
        (TCP holds the rest, nothing more is buffered here); once the login is
        answered the held commands run in order and reading resumes.
        """
        client, verifier = self.pending_login()
        line = b'n%d STATUS "' + b"x" * 8000 + b'" (MESSAGES)\r\n'
        count = MAX_QUEUED_BYTES // 8000 + 1
        for i in range(count):
            client.send(line % i)
        self.assertEqual(client.transport.producerState, "paused")
        held = client.proto._queued_bytes
        self.assertLessEqual(held, MAX_QUEUED_BYTES + len(line))
        verifier.release()
        answer = client.take()
        self.assertIn(b"l1 OK", answer)
        tags = [line.split(b" ")[0] for line in answer.split(b"\r\n")[:-1]]
        self.assertEqual(tags, [b"l1"] + [b"n%d" % i for i in range(count)])
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.proto._queued_bytes, 0)
        self.assertFalse(client.closed)

    def test_small_pipelines_keep_reading(self):
        """A few short commands behind a pending login do not stop the reading."""
        client, verifier = self.pending_login()
        client.send(b"a NOOP\r\nb CAPABILITY\r\n")
        self.assertEqual(client.transport.producerState, "producing")
        verifier.release()
        answer = client.take()
        self.assertIn(b"a OK", answer)
        self.assertIn(b"b OK", answer)

    def test_starttls_resumes_reading(self):
        """Held lines dropped (as STARTTLS drops what was pipelined) no longer stop the reading."""
        client, _ = self.pending_login()
        client.send(b"n NOOP " + b"x" * 8000 + b"\r\n")
        for _ in range(MAX_QUEUED_BYTES // 8000):
            client.send(b"n NOOP " + b"x" * 8000 + b"\r\n")
        self.assertEqual(client.transport.producerState, "paused")
        client.proto._forget_queue()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.proto._queued_bytes, 0)


class QueuedContinuationTests(SynchronousTestCase):
    """Lines held behind a command that asks for a continuation (IDLE, a literal)."""

    def test_logout_while_paused_reads_again(self):
        """A session closing with its reading paused reads again (over TLS its close_notify must be read)."""
        _, client, verifier = login_pending(self)
        for i in range(10):
            client.send(b'n%d STATUS "' % i + b"x" * 8000 + b'" (MESSAGES)\r\n')
        client.send(b"q LOGOUT\r\n")
        self.assertEqual(client.transport.producerState, "paused")
        verifier.release()
        self.assertIn(b"q OK LOGOUT completed", client.take())
        self.assertEqual(client.transport.producerState, "producing")
        self.assertTrue(client.closed)

    def test_done_sent_with_idle(self):
        """IDLE and DONE pipelined behind a pending login: IDLE runs, then DONE ends it; nothing is left waiting."""
        _, client, verifier = login_pending(self)
        client.send(b"s SELECT INBOX\r\ni IDLE\r\nDONE\r\nn NOOP\r\n")
        verifier.release()
        answer = client.take()
        self.assertIn(b"i OK IDLE terminated", answer)
        self.assertTrue(answer.endswith(b"n OK Completed\r\n"), answer)
        self.assertEqual(client.proto._queue, [])

    def test_literal_data_held_behind_a_command_ends_the_session(self):
        """APPEND and its message pipelined behind a pending login, without waiting for "+": BYE, nothing stored."""
        harness, client, verifier = login_pending(self)
        client.send(b"a APPEND INBOX {5}\r\nhello\r\nn NOOP\r\n")
        verifier.release()
        answer = client.take()
        self.assertIn(b"l1 OK", answer)
        self.assertTrue(answer.endswith(b"* BYE Literal data sent before the server's continuation\r\n"), answer)
        self.assertNotIn(b"n OK", answer)
        self.assertTrue(client.closed)
        self.assertEqual(harness.files("cur") + harness.files("new"), [])


class AppendBeforeContinuationTests(SynchronousTestCase):
    """APPEND's checks run before "+ Ready", in the I/O pool: what the client sends meanwhile."""

    def setUp(self):
        self.harness = IMAPHarness(self.mktemp())
        self.client = self.harness.logged_in()
        self.assertEqual(self.client.send(b"c CREATE Work\r\n"), b"c OK CREATE completed\r\n")
        self.assertIn(b"s OK", self.client.send(b"s SELECT INBOX\r\n"))
        self.manual = ManualRun()
        self.client.proto.account.run = self.manual

    def test_message_sent_before_the_continuation(self):
        """
        A message sent without waiting for "+ Ready" (LITERAL+ is not offered)
        ends the session with BYE: its lines are never run as commands (here
        one would delete a folder) and nothing is stored.
        """
        body = b"x DELETE Work\r\n"
        answer = self.client.send(b"a APPEND INBOX {%d}\r\n" % len(body) + body + b"\r\n")
        self.assertEqual(answer, b"* BYE Literal data sent before the server's continuation\r\n")
        self.assertTrue(self.client.closed)
        self.manual.synchronous = True
        while self.manual.pending:
            self.manual.release_one()
        self.client.take()
        self.assertTrue(os.path.isdir(os.path.join(self.harness.maildir(), ".Work")))
        self.assertEqual(self.harness.files("cur") + self.harness.files("new"), [])

    def test_waiting_client_is_asked_after_the_checks(self):
        """A client that waits gets "+ Ready" once the checks are done, and its message is stored."""
        self.assertEqual(self.client.send(b"a APPEND INBOX {5}\r\n"), b"")
        self.manual.synchronous = True
        while self.manual.pending:
            self.manual.release_one()
        self.assertEqual(self.client.take(), b"+ Ready for 5 octets of data\r\n")
        self.assertTrue(self.client.send(b"hello\r\n").endswith(b"a OK APPEND completed\r\n"))

    def test_invalid_folder_name(self):
        """APPEND to a name no folder may have (a/b, INBOX.x) is NO, with nothing logged."""
        self.manual.synchronous = True
        for name in (b"a/b", b"INBOX.sub"):
            answer = self.client.send(b"a APPEND " + name + b" {3}\r\n")
            self.assertTrue(answer.startswith(b"a NO "), answer)
            self.assertNotIn(b"+ Ready", answer)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_disk_error_while_counting(self):
        """The quota count failing (a disk error) answers NO [UNAVAILABLE], not a server error."""
        self.manual.synchronous = True
        self.client.proto.account.quota = 1024 * 1024

        async def broken(root):
            raise PermissionError(13, "denied")

        self.client.proto.account.counter.used = broken
        self.assertEqual(self.client.send(b"a APPEND INBOX {3}\r\n"),
                         b"a NO [UNAVAILABLE] Local error, try again later\r\n")
        self.assertEqual(self.flushLoggedErrors(), [])


class PartialRangeTests(SynchronousTestCase):
    """FETCH partial ranges are digits only (twisted's int() took signs and underscores)."""

    def test_signed_ranges_refused(self):
        """<-60.100>, <+1.1_0> and <0.-1> are BAD (one sent octets from before the section); <0.5> works."""
        harness = IMAPHarness(self.mktemp())
        harness.deliver("1700000000.aaaa_0.mx.test", b"Subject: s\r\n\r\nhello world\r\n")
        client = harness.logged_in()
        client.send(b"s SELECT INBOX\r\n")
        for bad in (b"<-60.100>", b"<+1.1_0>", b"<0.-1>", b"<1_0.5>"):
            answer = client.send(b"f FETCH 1 BODY.PEEK[TEXT]" + bad + b"\r\n")
            self.assertEqual(answer, b"f BAD A partial range is <origin.octets>, digits only\r\n", bad)
            answer = client.send(b"u UID FETCH 1 BODY.PEEK[TEXT]" + bad + b"\r\n")
            self.assertTrue(answer.startswith(b"u BAD "), answer)
        self.assertEqual(client.send(b"g FETCH 1 BODY.PEEK[TEXT]<0.5>\r\n"),
                         b"* 1 FETCH (BODY[TEXT]<0> {5}\r\nhello)\r\ng OK FETCH completed\r\n")
