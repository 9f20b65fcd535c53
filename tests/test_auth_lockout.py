"""
The lockout model (issue 14, item 13): hard locks per (user, client IP) and
per client IP, a slowdown per user across IPs; through the checker on a Clock,
and what an SMTP client sees of it (StringTransport).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gomail.auth.checker import AuthFailure, LoginAttempt
from gomail.auth.lockout import unlock_keys
from gomail.state.memory import MemoryStateStore
from tests.authtesting import MemoryUsers, SyncVerifier, authenticator
from tests.test_smtp_auth import AuthHarnessMixin, plain

T0 = 1_700_000_000.0
APP = "abcd-efgh-ijkl-mnop"
HOME, ELSEWHERE = "192.0.2.1", "198.51.100.66"


class ModelTests(TestCase):
    """The checker's answers under the model, with the default settings (5 / 20 / 10 per 300 s, 5 s)."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(T0)
        self.state = MemoryStateStore(self.clock)
        self.users = MemoryUsers()
        self.users.add("alice", "s3cret", app_passwords={"phone": APP})
        self.auth = authenticator(self.clock, self.state, self.users, SyncVerifier())

    def attempt(self, user, password, ip):
        """The Account, or the AuthFailure (with its reason and delay)."""
        d = self.auth.authenticate(LoginAttempt(user, password, ip, "smtp"))
        results = []
        d.addBoth(results.append)
        result = results[0]
        if hasattr(result, "check"):
            return result.value if result.check(AuthFailure) else result.raiseException()
        return result

    def reason(self, user, password, ip):
        result = self.attempt(user, password, ip)
        return result.reason if isinstance(result, AuthFailure) else result.via

    def test_the_testers_lockout(self):
        """
        What the tester did: five wrong passwords for alice from one IP. Her
        right password and her app password from her own IP still log in;
        on the guessing IP both are refused as locked, for lockTTL seconds.
        """
        for _ in range(5):
            self.assertEqual(self.reason("alice", "wrong", ELSEWHERE), "bad-password")
        self.assertEqual(self.reason("alice", "s3cret", HOME), "password")
        self.assertEqual(self.reason("alice", APP, HOME), "app-password")
        self.assertEqual(self.reason("alice", "s3cret", ELSEWHERE), "locked")
        self.assertEqual(self.reason("alice", APP, ELSEWHERE), "locked")
        self.clock.advance(300)
        self.assertEqual(self.reason("alice", "s3cret", ELSEWHERE), "password")

    def test_ipv4_mapped_is_the_same_client(self):
        """A client seen as ::ffff:198.51.100.66 is the same client as 198.51.100.66."""
        for _ in range(5):
            self.attempt("alice", "wrong", "::ffff:" + ELSEWHERE)
        self.assertEqual(self.reason("alice", "s3cret", ELSEWHERE), "locked")

    def test_slowdown_across_ips(self):
        """
        Ten failures of alice from ten IPs: no lock anywhere, but from the
        tenth on each failure carries a 5 s delay (auth.userSlowdownDelay);
        her right password and app password succeed with none, other users'
        failures have none, and the slowdown ends with its window.
        """
        delays = [self.attempt("alice", "wrong", f"203.0.113.{n}").delay for n in range(1, 11)]
        self.assertEqual(delays, [0.0] * 9 + [5.0])
        self.assertEqual(self.attempt("alice", "wrong", "203.0.113.99").delay, 5.0)
        self.assertEqual(self.reason("alice", "s3cret", HOME), "password")
        self.assertEqual(self.reason("alice", APP, "203.0.113.1"), "app-password")
        self.assertEqual(self.attempt("nobody", "wrong", "203.0.113.1").delay, 0.0)
        self.assertEqual(self.auth.stats.lockouts["user-slowdown"], 1)
        self.clock.advance(300)
        self.assertEqual(self.attempt("alice", "wrong", "203.0.113.1").delay, 0.0)

    def test_success_does_not_end_the_slowdown(self):
        """A success clears its own pair's count only: the guesses from elsewhere still count."""
        for n in range(10):
            self.attempt("alice", "wrong", f"203.0.113.{n}")
        self.reason("alice", "s3cret", HOME)
        self.assertEqual(self.attempt("alice", "wrong", HOME).delay, 5.0)

    def test_slowdown_off(self):
        """auth.userSlowdownDelay = 0 turns the slowdown off."""
        self.auth = authenticator(self.clock, self.state, self.users, SyncVerifier(), userSlowdownDelay=0)
        delays = {self.attempt("alice", "wrong", f"203.0.113.{n}").delay for n in range(15)}
        self.assertEqual(delays, {0.0})

    def test_unlock_keys_are_the_checkers(self):
        """The keys `gomail user unlock` removes are the ones the checker writes (pair and per-user)."""
        for _ in range(5):
            self.attempt("alice", "wrong", ELSEWHERE)
        keys, patterns = unlock_keys("alice", ELSEWHERE)
        self.assertEqual(patterns, [])
        present = [key for key in keys if self.successResultOf(self.state.get(key)) is not None]
        self.assertEqual(len(present), 3)  # the user's count, the pair's lock and the pair's count
        self.successResultOf(self.state.delete(*keys))
        self.assertEqual(self.reason("alice", "s3cret", ELSEWHERE), "password")


class SMTPSlowdownTests(AuthHarnessMixin, TestCase):
    """What an SMTP client sees of a slowdown: the 535 comes late, a success at once."""

    def slow_down(self):
        """Ten failed logins of alice@example.org from ten other IPs (what a spread-out guesser does)."""
        for n in range(10):
            d = self.auth.authenticate(LoginAttempt("alice@example.org", "wrong", f"203.0.113.{n}", "imap"))
            self.assertEqual(self.failureResultOf(d, AuthFailure).value.reason, "bad-password")

    def test_failure_answered_late(self):
        """During alice's slowdown a wrong password is answered 535 5.7.8 only after 5 s."""
        harness = self.auth_harness()
        self.slow_down()
        client = self.secure_client(harness, host="192.0.2.5")
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("alice@example.org", "guess") + b"\r\n"), b"")
        harness.clock.advance(4.9)
        self.assertEqual(client.take(), b"")
        harness.clock.advance(0.1)
        self.assertEqual(client.take(), b"535 5.7.8 Authentication credentials invalid\r\n")

    def test_success_answered_at_once(self):
        """During alice's slowdown her right password answers 235 at once; bob's failures are not slowed."""
        harness = self.auth_harness()
        self.slow_down()
        client = self.secure_client(harness, host="192.0.2.5")
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("alice@example.org", "correct horse") + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        other = self.secure_client(harness, host="192.0.2.6")
        self.assertEqual(other.send(b"AUTH PLAIN " + plain("bob", "guess") + b"\r\n"),
                         b"535 5.7.8 Authentication credentials invalid\r\n")
