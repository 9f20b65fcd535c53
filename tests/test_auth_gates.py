"""
The checkers a login passes first (L{gomail.auth.gates}): the IP blacklist
and the lockouts, each on its own, on a Clock.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.auth.blacklist import Blacklist
from gomail.auth.credentials import AuthFailure, LoginAttempt, TemporaryAuthError
from gomail.auth.gates import BlacklistChecker, LockoutChecker
from gomail.auth.lockout import Lockout
from gomail.auth.records import BlacklistEntry
from gomail.auth.stats import AuthStats
from gomail.state.memory import MemoryStateStore
from tests.authtesting import MemoryUsers, auth_settings
from tests.test_smtp_auth import BrokenStore


def attempt(user: str = "Alice", ip: str | None = "192.0.2.1") -> LoginAttempt:
    return LoginAttempt(user, "irrelevant", ip, "imap")


class BlacklistCheckerTests(SynchronousTestCase):
    """L{BlacklistChecker}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.users = MemoryUsers()
        self.users.blacklist.append(BlacklistEntry("203.0.113.0/24", None))
        self.checker = BlacklistChecker(Blacklist(self.users, self.clock, 60))

    def test_interface(self) -> None:
        """It is an ICredentialsChecker of login attempts."""
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_listed_refused(self) -> None:
        """A client in a listed network is refused as blacklisted; the name is not even looked at."""
        failure = self.failureResultOf(self.checker.requestAvatarId(attempt("", "203.0.113.9")), AuthFailure)
        self.assertEqual(failure.value.reason, "blacklisted")

    def test_others_pass(self) -> None:
        """Another client, or one without an IP, passes with the name as given."""
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(attempt())), "Alice")
        self.assertEqual(self.successResultOf(self.checker.requestAvatarId(attempt(ip=None))), "Alice")

    def test_store_down(self) -> None:
        """A blacklist that cannot be read is a temporary failure, never a pass."""
        self.users.broken = True
        self.failureResultOf(self.checker.requestAvatarId(attempt()), TemporaryAuthError)
        self.flushLoggedErrors()


class LockoutCheckerTests(SynchronousTestCase):
    """L{LockoutChecker}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.state = MemoryStateStore(self.clock)
        self.checker = LockoutChecker(Lockout(self.state, auth_settings(), AuthStats()))

    def check(self, login: LoginAttempt) -> Deferred:
        return self.checker.requestAvatarId(login)

    def test_interface(self) -> None:
        """It is an ICredentialsChecker of login attempts."""
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_canonical_name(self) -> None:
        """It fires with the canonical user name."""
        self.assertEqual(self.successResultOf(self.check(attempt(" ALICE "))), "alice")

    def test_bad_name(self) -> None:
        """A name without a canonical form is refused as bad-username."""
        self.assertEqual(self.failureResultOf(self.check(attempt("al ice")), AuthFailure).value.reason,
                         "bad-username")

    def test_locked_after_failures(self) -> None:
        """Five reported failures of the pair lock it: the next attempt is refused as locked, others pass."""
        for _ in range(5):
            self.successResultOf(Deferred.fromCoroutine(self.checker.failed("alice", attempt())))
        self.assertEqual(self.failureResultOf(self.check(attempt()), AuthFailure).value.reason, "locked")
        self.assertEqual(self.successResultOf(self.check(attempt(ip="198.51.100.1"))), "alice")

    def test_store_down(self) -> None:
        """A state store that cannot answer is a temporary failure."""
        self.checker.lockout.state = BrokenStore()
        self.failureResultOf(self.check(attempt()), TemporaryAuthError)
        self.flushLoggedErrors()
