"""
Health probes (issue 15 item 10): nginx's backend check connecting to gomail's
own SMTP listener every few seconds neither inflates the session counter nor
writes log lines.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.auth.backends import BackendRouter
from gomail.configschema import Backend
from tests.smtphelpers import HarnessMixin


class ProbeCountTests(HarnessMixin, SynchronousTestCase):
    """What counts as a session and what as a probe."""

    def test_silent_connection_is_a_probe(self):
        """A connection closed without a byte from the client counts as a probe, not a session."""
        h = self.harness()
        h.connect().lose()
        self.assertEqual((h.server.sessions_total, h.server.probes_total), (0, 1))

    def test_client_that_speaks_is_a_session(self):
        """A client that sends anything counts as a session (once), not as a probe."""
        h = self.harness()
        client = h.connect()
        client.send(b"EHLO a\r\n")
        client.send(b"NOOP\r\n")
        client.lose()
        self.assertEqual((h.server.sessions_total, h.server.probes_total), (1, 0))

    def test_refused_connection_is_a_session(self):
        """A refused connection still counts as a session (it was a client, refused)."""
        h = self.harness(allow_local_only=True)
        h.connect("203.0.113.5", greet=False)
        self.assertEqual((h.server.sessions_total, h.server.probes_total), (1, 0))


class BackendProbeTests(HarnessMixin, TestCase):
    """nginxAuth's backend health check against a real SMTP listener of ours."""

    async def test_backend_check_is_quiet_and_not_a_session(self):
        """Three checks of gomail's SMTP port: three probes, no session, no factory log lines."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        harness = self.harness()
        port = reactor.listenTCP(0, harness.server.factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        router = BackendRouter([Backend(protocol="smtp", address="127.0.0.1", port=port.getHost().port)],
                               "hash", reactor, interval=3600, timeout=5)
        for _ in range(3):
            await router.check()
            while harness.server.sessions:  # the server sees each probe's close
                await _turn()
        self.assertEqual((harness.server.sessions_total, harness.server.probes_total), (0, 3))
        self.assertEqual(router.status()[0]["up"], True)
        texts = [str(e.get("log_format") or e.get("message")) for e in events]
        self.assertFalse([t for t in texts if "factory" in t.lower()], texts)


def _turn():
    from twisted.internet.defer import Deferred

    d: Deferred = Deferred()
    reactor.callLater(0, d.callback, None)
    return d
