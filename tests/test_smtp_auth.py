"""SMTP AUTH (RFC 4954), sender ownership and rate limits, seen from the client's side."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import TestCase

from gomail.configschema import RateLimits
from gomail.limits.rate import RateLimiter
from gomail.state.interface import StateStoreError
from gomail.state.memory import MemoryStateStore
from tests.authtesting import MemoryUsers, auth_settings, authenticator, portal_for
from tests.smtphelpers import HarnessMixin, replies


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def plain(user: str, password: str) -> bytes:
    return b64(f"\0{user}\0{password}")


class BrokenStore:
    """A state store whose every call fails like an unreachable Redis."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: fail(StateStoreError("Redis unreachable"))


class AuthHarnessMixin(HarnessMixin):
    """An SMTP server with TLS and AUTH against an in-memory user store."""

    def auth_harness(self, *, store=None, limits=None, **kwargs):
        harness = self.harness(tls=True, **kwargs)
        self.users = MemoryUsers()
        self.users.add("alice@example.org", "correct horse")
        self.users.add("bob", "battery staple", allowed_senders=("@example.net", "bob@example.org"))
        self.state = store if store is not None else MemoryStateStore(harness.clock)
        self.auth = authenticator(harness.clock, self.state, self.users)
        harness.server.portal = portal_for(self.auth)
        harness.server.auth_settings = auth_settings()
        if limits is not None:
            harness.server.rate_limiter = RateLimiter(self.state, limits)
        return harness

    def secure_client(self, harness, host="127.0.0.1"):
        """A session after STARTTLS and a second EHLO."""
        client = harness.connect(host, tls_transport=True)
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        client.send(b"EHLO client.test\r\n")
        return client


class AuthOfferTests(AuthHarnessMixin, TestCase):
    """Where AUTH is offered."""

    def test_not_offered_before_tls(self):
        """Before STARTTLS, EHLO does not list AUTH and AUTH answers 530 5.7.0."""
        harness = self.auth_harness()
        client = harness.connect(tls_transport=True)
        self.assertNotIn(b"AUTH", client.send(b"EHLO client.test\r\n"))
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("alice@example.org", "correct horse") + b"\r\n"),
                         b"530 5.7.0 Must issue a STARTTLS command first\r\n")

    def test_offered_after_starttls(self):
        """After STARTTLS and EHLO, AUTH PLAIN LOGIN is listed."""
        harness = self.auth_harness()
        client = harness.connect(tls_transport=True)
        client.send(b"EHLO client.test\r\n")
        client.send(b"STARTTLS\r\n")
        self.assertIn(b"250 AUTH PLAIN LOGIN", replies(client.send(b"EHLO client.test\r\n")))

    def test_plaintext_loopback_when_configured(self):
        """With allowPlaintextAuthLoopback, a loopback client may AUTH without TLS; others may not."""
        harness = self.auth_harness(allowPlaintextAuthLoopback=True)
        local = harness.connect("127.0.0.1")
        self.assertIn(b"250 AUTH PLAIN LOGIN", replies(local.send(b"EHLO client.test\r\n")))
        self.assertEqual(local.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        remote = harness.connect("192.0.2.5")
        self.assertNotIn(b"AUTH", remote.send(b"EHLO client.test\r\n"))

    def test_offered_on_implicit_tls(self):
        """On an implicit-TLS listener AUTH is listed from the first EHLO."""
        harness = self.auth_harness()
        client = harness.connect(implicit_tls=True)
        self.assertIn(b"250 AUTH PLAIN LOGIN", replies(client.send(b"EHLO client.test\r\n")))

    def test_not_offered_without_portal(self):
        """A server without authentication configured lists no AUTH and answers 502 5.5.1."""
        harness = self.harness(tls=True)
        client = harness.connect(implicit_tls=True)
        self.assertNotIn(b"AUTH", client.send(b"EHLO client.test\r\n"))
        self.assertEqual(client.send(b"AUTH PLAIN AAAA\r\n"), b"502 5.5.1 Authentication not available\r\n")


class AuthExchangeTests(AuthHarnessMixin, TestCase):
    """The PLAIN and LOGIN exchanges and their answers."""

    def test_plain_initial_response(self):
        """AUTH PLAIN with the right password answers 235 2.7.0."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("alice@example.org", "correct horse") + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")

    def test_plain_continuation(self):
        """AUTH PLAIN without a response gets an empty 334 challenge, then checks the answer."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH PLAIN\r\n"), b"334 \r\n")
        self.assertEqual(client.send(plain("Alice@Example.org", "correct horse") + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")

    def test_login(self):
        """AUTH LOGIN asks for Username: and Password: (base64) and accepts the right pair."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH LOGIN\r\n"), b"334 " + b64("Username:") + b"\r\n")
        self.assertEqual(client.send(b64("bob") + b"\r\n"), b"334 " + b64("Password:") + b"\r\n")
        self.assertEqual(client.send(b64("battery staple") + b"\r\n"), b"235 2.7.0 Authentication successful\r\n")

    def test_wrong_password(self):
        """A wrong password answers 535 5.7.8 and leaves the session unauthenticated."""
        harness = self.auth_harness(require_auth=True)
        client = self.secure_client(harness)
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "wrong") + b"\r\n"),
                         b"535 5.7.8 Authentication credentials invalid\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")

    def test_unknown_user_same_answer(self):
        """An unknown user gets exactly the wrong-password answer."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("nobody", "x") + b"\r\n"),
                         b"535 5.7.8 Authentication credentials invalid\r\n")

    def test_repeated_failures_disconnect(self):
        """The third failed AUTH in a session answers 535, then 421 4.7.0, and closes."""
        client = self.secure_client(self.auth_harness())
        for _ in range(2):
            client.send(b"AUTH PLAIN " + plain("bob", "wrong") + b"\r\n")
        self.assertFalse(client.closed)
        self.assertEqual(replies(client.send(b"AUTH PLAIN " + plain("bob", "wrong") + b"\r\n")),
                         [b"535 5.7.8 Authentication credentials invalid",
                          b"421 4.7.0 mx.test Too many failed authentications, closing"])
        self.assertTrue(client.closed)

    def test_cancel(self):
        """A client answering a challenge with * cancels: 501 5.0.0."""
        client = self.secure_client(self.auth_harness())
        client.send(b"AUTH LOGIN\r\n")
        self.assertEqual(client.send(b"*\r\n"), b"501 5.0.0 Authentication cancelled\r\n")

    def test_client_gone_cancels_the_check(self):
        """A client that disconnects while its password waits for the CPU pool: the check is cancelled, nothing answered or audited."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        cancelled: list[bool] = []
        self.auth.verifier.verify = lambda password, hashed: Deferred(lambda _: cancelled.append(True))
        audited: list[Any] = []
        harness.server.audit_login = lambda *args: audited.append(args) or True
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"), b"")
        client.lose()
        # (An error logged on the way, say an "internal error" reply attempt, would fail the test too.)
        self.assertEqual((cancelled, client.take(), audited), ([True], b"", []))

    def test_bad_base64(self):
        """A response that is not base64 answers 501 5.5.2."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH PLAIN !!!\r\n"), b"501 5.5.2 Cannot decode AUTH PLAIN response\r\n")

    def test_unknown_mechanism(self):
        """CRAM-MD5 and other mechanisms answer 504 5.5.4."""
        client = self.secure_client(self.auth_harness())
        self.assertEqual(client.send(b"AUTH CRAM-MD5\r\n"), b"504 5.5.4 Unrecognized authentication type\r\n")

    def test_twice(self):
        """A second AUTH after success answers 503 5.5.1."""
        client = self.secure_client(self.auth_harness())
        client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n")
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"),
                         b"503 5.5.1 Error: already authenticated\r\n")

    def test_state_store_down(self):
        """With the state store unreachable, AUTH answers 454 4.7.0 (temporary), never 235."""
        client = self.secure_client(self.auth_harness(store=BrokenStore()))
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"),
                         b"454 4.7.0 Temporary authentication failure, try again later\r\n")

    def test_user_database_down(self):
        """With the user database failing, AUTH answers 454 4.7.0."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        self.users.broken = True
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"),
                         b"454 4.7.0 Temporary authentication failure, try again later\r\n")


class AuthenticatedMailTests(AuthHarnessMixin, TestCase):
    """What an authenticated session may send."""

    def login(self, client, user="bob", password="battery staple"):
        self.assertEqual(client.send(b"AUTH PLAIN " + plain(user, password) + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")

    def test_require_auth(self):
        """Under requireAuth, MAIL without AUTH answers 530 5.7.0 and with AUTH 250."""
        harness = self.auth_harness(require_auth=True)
        client = self.secure_client(harness)
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")
        self.login(client)
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_relay_anywhere_from_untrusted_ip(self):
        """An authenticated client outside the trusted networks may send to any domain."""
        harness = self.auth_harness()
        client = self.secure_client(harness, host="203.0.113.9")
        self.login(client)
        self.assertEqual(replies(client.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<carol@elsewhere.test>\r\n")),
                         [b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok"])

    def test_sender_mismatch(self):
        """A MAIL FROM outside the user's allowed addresses answers 553 5.7.1."""
        client = self.secure_client(self.auth_harness())
        self.login(client)
        self.assertEqual(client.send(b"MAIL FROM:<mallory@example.org>\r\n"),
                         b"553 5.7.1 <mallory@example.org>: Sender address rejected: not owned by user\r\n")

    def test_sender_domain_and_user_name(self):
        """An allowed domain entry admits any address in it; a user named by address may send as it."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        self.login(client)
        self.assertEqual(client.send(b"MAIL FROM:<anyone@EXAMPLE.net>\r\n"), b"250 2.1.0 Sender ok\r\n")
        other = self.secure_client(harness)
        self.login(other, "alice@example.org", "correct horse")
        self.assertEqual(other.send(b"MAIL FROM:<Alice@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_sender_check_can_be_turned_off(self):
        """With auth.enforceSenderAddress false, any sender is accepted after AUTH."""
        harness = self.auth_harness()
        harness.server.auth_settings = auth_settings(enforceSenderAddress=False)
        client = self.secure_client(harness)
        self.login(client)
        self.assertEqual(client.send(b"MAIL FROM:<mallory@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_go_relay_default_user_sends_as_anyone(self):
        """
        The tester's seed config (defaultUsername "alice", requireAuth): the
        default user, with no senders set, may send as any address, as the Go
        relay let it; it gets 250, not 553.
        """
        harness = self.auth_harness(require_auth=True)
        self.users.add("alice", "wonderland")
        harness.server.default_user = "alice"
        client = self.secure_client(harness)
        self.login(client, "alice", "wonderland")
        self.assertEqual(client.send(b"MAIL FROM:<alice@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")
        client.send(b"RSET\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<billing@example.net>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_default_user_with_senders_is_restricted(self):
        """Once senders are set for the default user, the ownership rule applies to it too."""
        harness = self.auth_harness()
        harness.server.default_user = "bob"  # bob has allowed senders
        client = self.secure_client(harness)
        self.login(client)
        self.assertTrue(client.send(b"MAIL FROM:<mallory@example.org>\r\n").startswith(b"553 5.7.1 "))

    def test_other_users_keep_the_rule(self):
        """Every other user keeps the ownership rule."""
        harness = self.auth_harness()
        harness.server.default_user = "alice"
        client = self.secure_client(harness)
        self.login(client, "alice@example.org", "correct horse")
        self.assertTrue(client.send(b"MAIL FROM:<mallory@example.org>\r\n").startswith(b"553 5.7.1 "))


class RateLimitTests(AuthHarnessMixin, TestCase):
    """rateLimits at MAIL FROM: 451 4.7.1 past the limit, sliding windows."""

    def send_message(self, client, sender=b"bob@example.org"):
        client.send(b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<carol@example.com>\r\nDATA\r\n")
        return client.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")

    def test_per_sender_limit(self):
        """With maxPerHour 3, the fourth MAIL FROM of one user answers 451 4.7.1; another sender still passes."""
        harness = self.auth_harness(limits=RateLimits(enabled=True, maxPerHour=3))
        client = self.secure_client(harness)
        for _ in range(3):
            self.assertIn(b"250 2.0.0 Ok: queued", self.send_message(client))
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")
        self.assertEqual(harness.server.rate_limiter.hits, 1)
        other = self.secure_client(harness)
        self.assertEqual(other.send(b"MAIL FROM:<dave@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_keyed_by_authenticated_user(self):
        """An authenticated user's messages count against the user, whatever sender address is used."""
        harness = self.auth_harness(limits=RateLimits(enabled=True, maxPerHour=2))
        client = self.secure_client(harness)
        client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n")
        self.send_message(client, b"a@example.net")
        self.send_message(client, b"b@example.net")
        self.assertEqual(client.send(b"MAIL FROM:<c@example.net>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")

    def test_sliding_window(self):
        """The hour slides: a message leaves the window exactly one hour after it was sent."""
        harness = self.auth_harness(limits=RateLimits(enabled=True, maxPerHour=2))
        self.send_message(self.secure_client(harness))
        harness.clock.advance(1800)
        self.send_message(self.secure_client(harness))
        harness.clock.advance(1799)
        self.assertEqual(self.secure_client(harness).send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")
        harness.clock.advance(1)
        self.assertEqual(self.secure_client(harness).send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"250 2.1.0 Sender ok\r\n")

    def test_global_limit(self):
        """globalMaxPerHour counts every sender together."""
        harness = self.auth_harness(limits=RateLimits(enabled=True, globalMaxPerHour=2))
        client = self.secure_client(harness)
        self.send_message(client, b"one@example.org")
        self.send_message(client, b"two@example.org")
        self.assertEqual(client.send(b"MAIL FROM:<three@example.org>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")

    def test_refused_messages_do_not_count(self):
        """A transaction that never reaches 250 after DATA is not counted."""
        harness = self.auth_harness(limits=RateLimits(enabled=True, maxPerHour=1))
        client = self.secure_client(harness)
        client.send(b"MAIL FROM:<bob@example.org>\r\nRSET\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued", self.send_message(client))

    def test_store_down_allows_by_default(self):
        """With the state store down and failurePolicy "allow", mail is still accepted."""
        harness = self.auth_harness(store=BrokenStore(), limits=RateLimits(enabled=True))
        client = self.secure_client(harness)
        self.assertIn(b"250 2.0.0 Ok: queued", self.send_message(client))

    def test_store_down_refuses_when_configured(self):
        """With failurePolicy "refuse", a down state store answers 451 4.3.0 at MAIL FROM."""
        harness = self.auth_harness(store=BrokenStore(), limits=RateLimits(enabled=True, failurePolicy="refuse"))
        client = self.secure_client(harness)
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"),
                         b"451 4.3.0 Rate limits cannot be checked now, try again later\r\n")

    def test_authenticated_session_survives_store_loss(self):
        """A session authenticated before the store went down goes on sending (rate limits fail open)."""
        harness = self.auth_harness(limits=RateLimits(enabled=True))
        client = self.secure_client(harness)
        client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n")
        harness.server.rate_limiter.state = BrokenStore()
        self.assertIn(b"250 2.0.0 Ok: queued", self.send_message(client))
