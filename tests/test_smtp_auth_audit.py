"""
SMTP logs and the login audit name the user (issue 15 item 11): AUTH successes
and failures, refused senders (553) and rate-limit hits say who, never the
password; SMTP AUTH attempts land in auth_http's audit table with protocol smtp.
"""

from __future__ import annotations

import dataclasses
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.auth.authlog import AuthLog
from gomail.auth.users import SQLiteUserStore
from gomail.configschema import RateLimits
from gomail.root import build_service
from tests.smtphelpers import replies
from tests.test_service import config_in
from tests.test_smtp_auth import AuthHarnessMixin, plain

PASSWORD = "battery staple"


class AuditTestCase(AuthHarnessMixin, TestCase):
    """An SMTP server with AUTH whose log lines are captured and whose audit log is in memory."""

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def harness_with_audit(self, **kwargs):
        harness = self.auth_harness(**kwargs)
        harness.server.audit = AuthLog(None, harness.clock, 30)
        return harness

    def lines(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    def assert_no_password(self, *passwords: str) -> None:
        for event in self.events:
            for password in passwords:
                self.assertNotIn(password, formatEvent(event))
                self.assertNotIn(password, repr(event))


class AuthLogLineTests(AuditTestCase):
    """Log lines and audit entries of SMTP AUTH."""

    def test_success_names_the_user_and_is_audited(self) -> None:
        """A successful AUTH logs the user's name and records an smtp success in the audit log."""
        harness = self.harness_with_audit()
        client = self.secure_client(harness, host="192.0.2.7")
        now = harness.clock.seconds()
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", PASSWORD) + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        [line] = self.lines("SMTP AUTH succeeded")
        self.assertIn('for user "bob" from 192.0.2.7', line)
        [entry] = harness.server.audit.buffer
        self.assertEqual((entry.time, entry.user, entry.protocol, entry.client_ip, entry.result, entry.reason,
                          entry.backend), (now, "bob", "smtp", "192.0.2.7", "success", "password", None))
        self.assert_no_password(PASSWORD)

    def test_failure_names_the_user_as_given(self) -> None:
        """
        A failed AUTH logs the name tried, control characters replaced (no
        forged log lines), and records an smtp failure with the reason; the
        password is in neither.
        """
        harness = self.harness_with_audit()
        client = self.secure_client(harness, host="192.0.2.8")
        tried = "Bob\r\nSMTP AUTH succeeded for user admin\x1b[0m"
        self.assertEqual(client.send(b"AUTH PLAIN " + plain(tried, "hunter2-wrong") + b"\r\n"),
                         b"535 5.7.8 Authentication credentials invalid\r\n")
        [line] = self.lines("SMTP AUTH failed")
        self.assertIn('for user "Bob??SMTP AUTH succeeded for user admin?[0m" from 192.0.2.8', line)
        self.assertNotIn("\n", line)
        self.assertEqual(self.lines("SMTP AUTH succeeded for user \"admin"), [])
        [entry] = harness.server.audit.buffer
        self.assertEqual((entry.user, entry.protocol, entry.client_ip, entry.result),
                         ("Bob??SMTP AUTH succeeded for user admin?[0m", "smtp", "192.0.2.8", "failure"))
        self.assertTrue(entry.reason)
        self.assert_no_password("hunter2-wrong")

    def test_login_mechanism_failure(self) -> None:
        """AUTH LOGIN with a wrong password: the user name from the first step is logged and audited."""
        harness = self.harness_with_audit()
        client = self.secure_client(harness)
        client.send(b"AUTH LOGIN\r\n")
        client.send(b"YWxpY2VAZXhhbXBsZS5vcmc=\r\n")  # alice@example.org
        self.assertEqual(client.send(b"d3Jvbmc=\r\n"), b"535 5.7.8 Authentication credentials invalid\r\n")
        [line] = self.lines("SMTP AUTH failed")
        self.assertIn('for user "alice@example.org"', line)
        self.assertEqual([(e.user, e.result) for e in harness.server.audit.buffer],
                         [("alice@example.org", "failure")])

    def test_success_that_cannot_be_audited_is_refused(self) -> None:
        """As auth_http: when the audit log cannot record a success, the client gets 454, not 235."""
        harness = self.harness_with_audit(require_auth=True)

        class Broken:
            def record(self, entry):
                raise RuntimeError("audit bug")

        harness.server.audit = Broken()
        client = self.secure_client(harness)
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", PASSWORD) + b"\r\n"),
                         b"454 4.7.0 Temporary authentication failure, try again later\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")
        self.flushLoggedErrors(RuntimeError)


class RefusalLogTests(AuditTestCase):
    """Refusals at MAIL FROM name the authenticated user."""

    def test_refused_sender_names_the_user(self) -> None:
        """A 553 (sender not owned) logs the user and the refused address."""
        harness = self.harness_with_audit()
        client = self.secure_client(harness)
        client.send(b"AUTH PLAIN " + plain("bob", PASSWORD) + b"\r\n")
        self.assertTrue(client.send(b"MAIL FROM:<mallory@example.org>\r\n").startswith(b"553 5.7.1 "))
        [line] = self.lines("refused sender")
        self.assertIn("<mallory@example.org> of authenticated user bob from 127.0.0.1", line)

    def test_rate_limit_hit_names_the_user(self) -> None:
        """A rate-limit hit (451 4.7.1) of an authenticated user logs the user's name."""
        harness = self.harness_with_audit(limits=RateLimits(enabled=True, maxPerHour=1))
        client = self.secure_client(harness)
        client.send(b"AUTH PLAIN " + plain("bob", PASSWORD) + b"\r\n")
        client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued", client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n"))
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")
        [line] = self.lines("rate limit hit")
        self.assertIn("rate limit hit by user bob from 127.0.0.1: 451 4.7.1", line)

    def test_rate_limit_lines_are_bounded(self) -> None:
        """A client hammering past its limit gets at most 10 lines a second; the next line says how many were left out."""
        harness = self.harness_with_audit(limits=RateLimits(enabled=True, maxPerHour=1))
        client = self.secure_client(harness)
        client.send(b"MAIL FROM:<eve@example.org>\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")
        for _ in range(3):  # (a session is closed after smtp.maxErrors refusals)
            client = self.secure_client(harness)
            for _ in range(5):
                self.assertEqual(replies(client.send(b"MAIL FROM:<eve@example.org>\r\n")),
                                 [b"451 4.7.1 Rate limit exceeded, try again later"])
        self.assertEqual(len(self.lines("rate limit hit")), 10)
        self.assertIn("rate limit hit by sender <eve@example.org>", self.lines("rate limit hit")[0])
        harness.clock.advance(1)
        client.send(b"MAIL FROM:<eve@example.org>\r\n")
        self.assertIn("(5 more hits meanwhile)", self.lines("rate limit hit")[-1])


class AuditTableTests(AuditTestCase):
    """The audit table itself: SMTP AUTH attempts next to auth_http's, protocol smtp."""

    async def test_attempts_reach_the_audit_table(self) -> None:
        """An SMTP AUTH failure and success, flushed to the real user database, are rows with protocol smtp."""
        store = SQLiteUserStore(os.path.join(os.path.abspath(self.mktemp()), "gomail.db"))
        self.addCleanup(store.close)
        await store.start()
        harness = self.auth_harness()
        audit = harness.server.audit = AuthLog(store.pool, harness.clock, 30)
        client = self.secure_client(harness, host="198.51.100.4")
        client.send(b"AUTH PLAIN " + plain("bob", "wrong") + b"\r\n")
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", PASSWORD) + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        await audit.flush()
        rows = await audit.query(user="bob")
        self.assertEqual([(r.protocol, r.client_ip, r.result) for r in rows],
                         [("smtp", "198.51.100.4", "success"), ("smtp", "198.51.100.4", "failure")])


class WiringTests(SynchronousTestCase):
    """build_service gives the SMTP server the audit log."""

    def test_smtp_shares_auth_https_audit_log(self) -> None:
        """With auth_http on, the SMTP server records into the very AuthLog auth_http uses."""
        root = build_service(config_in(os.path.abspath(self.mktemp())), MemoryReactorClock())
        self.assertIsInstance(root.auth_log, AuthLog)
        self.assertIs(root.smtp.audit, root.auth_log)

    def test_audited_without_auth_http(self) -> None:
        """With nginxAuth disabled (auditLog on), SMTP AUTH is still audited, by an AuthLog of its own."""
        config = config_in(os.path.abspath(self.mktemp()))
        config = dataclasses.replace(config, nginxAuth=dataclasses.replace(config.nginxAuth, enabled=False))
        root = build_service(config, MemoryReactorClock())
        self.assertIsInstance(root.smtp.audit, AuthLog)
        self.assertIn(root.smtp.audit, list(root))

    def test_not_audited_when_turned_off(self) -> None:
        """nginxAuth.auditLog = false: no audit log, for SMTP either."""
        config = config_in(os.path.abspath(self.mktemp()))
        config = dataclasses.replace(config, nginxAuth=dataclasses.replace(config.nginxAuth, auditLog=False))
        self.assertIsNone(build_service(config, MemoryReactorClock()).smtp.audit)
