"""IMAP input bounds: what a client pipelines behind a command that is still being answered."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess.imap import MAX_QUEUED_BYTES
from tests.imaptesting import BOB, BOB_PASSWORD, IMAPHarness
from tests.test_pop3 import HeldVerifier


class PipelinedInputTests(SynchronousTestCase):
    """Lines held behind a pending LOGIN are bounded by octets, by not reading the connection."""

    def pending_login(self):
        verifier = HeldVerifier()
        client = IMAPHarness(self.mktemp(), verifier=verifier).connect()
        client.starttls()
        self.assertEqual(client.send(b'l1 LOGIN "%s" "%s"\r\n' % (BOB.encode(), BOB_PASSWORD.encode())), b"")
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
