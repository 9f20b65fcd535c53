"""
SIGHUP reloads the configuration (L{gomail.reload}): what can change live is
applied, the rest is named as needing a restart, a bad file changes nothing;
on a real twistd, a rate limit changes without dropping a session.
"""

from __future__ import annotations

import os
import smtplib
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.configload import load_config
from gomail.reload import ConfigReloader, changed_keys
from tests.gomailprocess import GomailNode
from tests.processes import poll


class ReloaderTests(SynchronousTestCase):
    """ConfigReloader over a real file."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp()) + ".toml"
        self.write('smtpPort = 2525\ndefaultPassword = "old secret"\n[rateLimits]\nenabled = true\nmaxPerHour = 10\n'
                   '[auth]\nlockTTL = 300\n')
        self.config = load_config(self.path, environ={})
        self.rate_limiter = SimpleNamespace(settings=self.config.rateLimits)
        self.lockout = SimpleNamespace(settings=self.config.auth)
        self.reloader = ConfigReloader(self.config, lambda: load_config(self.path, environ={}),
                                       rate_limiter=self.rate_limiter, lockout=self.lockout)

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def test_live_keys_applied_others_named(self) -> None:
        """Rate limits and lockout keys are applied at once; a listener or secret change is named, not applied nor shown."""
        self.write('smtpPort = 2626\ndefaultPassword = "new secret"\n[rateLimits]\nenabled = true\nmaxPerHour = 99\n'
                   '[auth]\nlockTTL = 60\nbcryptRounds = 12\n')
        with capturedLogs() as events:
            applied, restart = self.reloader.reload()
        self.assertEqual(applied, ["rateLimits.maxPerHour", "auth.lockTTL"])
        self.assertEqual(sorted(restart), ["auth.bcryptRounds", "defaultPassword", "smtp.listen", "smtpPort"])
        self.assertEqual((self.rate_limiter.settings.maxPerHour, self.lockout.settings.lockTTL), (99, 60))
        self.assertEqual(self.lockout.settings.bcryptRounds, self.config.auth.bcryptRounds)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("SIGHUP: applied rateLimits.maxPerHour", text)
        self.assertIn("SIGHUP: smtpPort changed but needs a restart: not applied", text)
        self.assertNotIn("secret", text)
        # Applied keys are the new current ones; the others stay pending.
        applied, restart_again = self.reloader.reload()
        self.assertEqual((applied, sorted(restart_again)), ([], sorted(restart)))

    def test_backends_replaced(self) -> None:
        """
        New nginx backends and strategy go to the router (with gomail's own SMTP
        backend added as at start, and its own POP3 listener for the protocol left
        without one).
        """
        replaced: list = []
        router = SimpleNamespace(replace=lambda backends, strategy: replaced.append((backends, strategy)) or succeed(None))
        reloader = ConfigReloader(self.config, lambda: load_config(self.path, environ={}), router=router)
        self.write('smtpPort = 2525\ndefaultPassword = "old secret"\n[rateLimits]\nenabled = true\nmaxPerHour = 10\n'
                   '[auth]\nlockTTL = 300\n[nginxAuth]\nstrategy = "round-robin"\n'
                   '[[nginxAuth.backends]]\nprotocol = "imap"\naddress = "192.0.2.10"\nport = 143\n')
        self.assertEqual(reloader.reload(), (["nginxAuth.strategy", "nginxAuth.backends"], []))
        [(backends, strategy)] = replaced
        self.assertEqual(strategy, "round-robin")
        self.assertEqual([(b.protocol, b.address, b.port) for b in backends],
                         [("imap", "192.0.2.10", 143), ("smtp", "127.0.0.1", 2525), ("pop3", "127.0.0.1", 1110)])

    def test_bad_file_changes_nothing(self) -> None:
        """A file that does not load leaves everything as it was and logs the error naming the key."""
        self.write("[rateLimits]\nmaxPerHour = 0\n")
        with capturedLogs() as events:
            self.assertEqual(self.reloader.reload(), ([], []))
        self.assertEqual(self.rate_limiter.settings.maxPerHour, 10)
        self.assertIn("rateLimits.maxPerHour", "\n".join(formatEvent(e) for e in events))

    def test_changed_keys(self) -> None:
        """Nested sections give dotted names; equal configurations give none."""
        self.assertEqual(changed_keys(self.config, self.config), [])


RATE_LIMITED = """
dataDir = "{data}"
smtpPort = {port}
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[rateLimits]
enabled = true
maxPerHour = {limit}
[nginxAuth]
listen = ["tcp:{auth_port}:interface=127.0.0.1"]
"""


class SIGHUPProcessTests(TestCase):
    """A real twistd."""

    timeout = 60

    def test_rate_limit_changed_without_dropping_a_session(self) -> None:
        """After SIGHUP with a higher rate limit, a session opened before it goes on and its next message passes."""
        from tests.processes import free_port
        port, auth_port = free_port(), free_port()
        node = GomailNode(self, RATE_LIMITED, port=port, auth_port=auth_port, limit=1)

        def mail_from(client: smtplib.SMTP) -> int:
            code, _ = client.mail("alice@example.org")
            client.rset()
            return code

        async def run() -> None:
            process = await node.start()
            waiting = await deferToThread(smtplib.SMTP, "127.0.0.1", port, "client.test", 20)
            self.addCleanup(waiting.close)
            await deferToThread(waiting.ehlo, "client.test")
            first = await deferToThread(smtplib.SMTP, "127.0.0.1", port, "client.test", 20)
            await deferToThread(first.sendmail, "alice@example.org", ["bob@example.com"], b"Subject: 1\r\n\r\nx\r\n")
            await deferToThread(first.quit)
            self.assertEqual(await deferToThread(mail_from, waiting), 451)  # over the limit of 1 an hour
            node.fields["limit"] = 100
            node.write_config(RATE_LIMITED)
            process.transport.signalProcess("HUP")
            await poll(reactor, lambda: b"SIGHUP: applied rateLimits.maxPerHour" in node.output)
            self.assertEqual(await deferToThread(mail_from, waiting), 250)
            await deferToThread(waiting.quit)
            await node.stop_cleanly()
        return ensureDeferred(run())
