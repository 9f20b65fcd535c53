"""
The checkers of a known user's secret (L{gomail.auth.passwordcheckers},
L{gomail.auth.totpchecker}) and the realm, each on its own, on a Clock.
"""

from __future__ import annotations

import pyotp
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.auth.checker import AccountRealm
from gomail.auth.credentials import Account, AuthFailure, IAccount, LoginAttempt, UserSecret
from gomail.auth.passwordcheckers import (
    AppPasswordChecker,
    BcryptChecker,
    CachedPasswordChecker,
    PasswordVerifier,
    ThreadPoolVerifier,
)
from gomail.auth.stats import AuthStats
from gomail.auth.totpchecker import TOTPChecker
from gomail.state.memory import MemoryStateStore
from tests.authtesting import ROUNDS, MemoryUsers, SyncVerifier

SECRET = pyotp.random_base32()
T0 = 1_700_000_000.0


class SecretCheckersTests(SynchronousTestCase):
    """App passwords, the cache, bcrypt and TOTP, each alone."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.state = MemoryStateStore(self.clock)
        self.users = MemoryUsers()
        self.alice = self.users.add("alice", "s3cret", app_passwords={"phone": "abcd-efgh-ijkl-mnop"},
                                    totp_secret=SECRET, totp_enabled=True)
        self.verifier = SyncVerifier()

    def reason(self, d: Deferred) -> str:
        return self.failureResultOf(d, AuthFailure).value.reason

    def test_interfaces(self) -> None:
        """Every checker is an ICredentialsChecker; both verifiers are PasswordVerifiers."""
        for checker in (AppPasswordChecker(self.users, self.clock),
                        CachedPasswordChecker(self.state, b"k" * 32, AuthStats()),
                        BcryptChecker(self.verifier, self.users, ROUNDS), TOTPChecker(self.state, self.clock)):
            self.assertTrue(verifyObject(ICredentialsChecker, checker), checker)
        self.assertTrue(verifyObject(PasswordVerifier, self.verifier))
        self.assertTrue(verifyObject(PasswordVerifier, ThreadPoolVerifier(None, None)))

    def test_app_password(self) -> None:
        """One of the user's app passwords passes (its use recorded); anything else is no-app-password."""
        checker = AppPasswordChecker(self.users, self.clock)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UserSecret(self.alice, "abcd-efgh-ijkl-mnop"))),
                         "alice")
        self.assertEqual(self.users.touched, [1])
        self.assertEqual(self.reason(checker.requestAvatarId(UserSecret(self.alice, "s3cret"))), "no-app-password")

    def test_cache(self) -> None:
        """A remembered secret passes until the user's credentials change; the key holds neither name nor secret."""
        checker = CachedPasswordChecker(self.state, b"k" * 32, AuthStats())
        secret = UserSecret(self.alice, "s3cret")
        self.assertEqual(self.reason(checker.requestAvatarId(secret)), "not-cached")
        self.successResultOf(Deferred.fromCoroutine(checker.remember(secret, 60)))
        self.assertEqual(self.successResultOf(checker.requestAvatarId(secret)), "alice")
        self.assertNotIn("alice", checker.key(secret))
        self.assertNotIn("s3cret", checker.key(secret))
        self.users.change("alice")  # a credential change bumps the version
        changed = UserSecret(self.users.users["alice"], "s3cret")
        self.assertEqual(self.reason(checker.requestAvatarId(changed)), "not-cached")

    def test_bcrypt(self) -> None:
        """The right password passes after one verification; a wrong one, or one bcrypt cannot take, is refused."""
        checker = BcryptChecker(self.verifier, self.users, ROUNDS)
        right = UserSecret(self.alice, "s3cret")
        self.assertEqual(self.successResultOf(checker.requestAvatarId(right)), "alice")
        self.assertTrue(right.bcrypt_ran)
        self.assertEqual(self.reason(checker.requestAvatarId(UserSecret(self.alice, "wrong"))), "bad-password")
        unusable = UserSecret(self.alice, "x" * 100)
        self.assertEqual(self.reason(checker.requestAvatarId(unusable)), "bad-password")
        self.assertFalse(unusable.bcrypt_ran)  # the chain spends the refusal's verification itself
        self.assertEqual(len(self.verifier.hashes), 2)

    def test_totp(self) -> None:
        """A valid code passes once; again, or an older one, is totp-replay; a wrong or missing one bad-totp."""
        checker = TOTPChecker(self.state, self.clock)
        totp = pyotp.TOTP(SECRET)
        code = totp.at(T0)
        self.assertEqual(self.successResultOf(checker.requestAvatarId(UserSecret(self.alice, "s3cret", code))),
                         "alice")
        self.assertEqual(self.reason(checker.requestAvatarId(UserSecret(self.alice, "s3cret", code))), "totp-replay")
        self.assertEqual(self.reason(checker.requestAvatarId(UserSecret(self.alice, "s3cret", totp.at(T0 - 30)))),
                         "totp-replay")
        self.assertEqual(self.reason(checker.requestAvatarId(UserSecret(self.alice, "s3cret", None))), "bad-totp")


class RealmTests(SynchronousTestCase):
    """L{AccountRealm}: the avatar is the account the checker recorded on the attempt."""

    def test_account_from_the_mind(self) -> None:
        """The attempt's recorded account is the IAccount avatar when it is the avatar id's."""
        users = MemoryUsers()
        login = LoginAttempt("alice", "s3cret", None, "imap")
        login.account = Account(users.add("alice", "s3cret"), "password", "s3cret")
        interface, avatar, _ = AccountRealm().requestAvatar("alice", login, IAccount)
        self.assertEqual((interface, avatar), (IAccount, login.account))

    def test_no_account_no_avatar(self) -> None:
        """An attempt without a recorded account, or with another user's, gets no avatar."""
        users = MemoryUsers()
        login = LoginAttempt("alice", "s3cret", None, "imap")
        self.assertRaises(UnauthorizedLogin, AccountRealm().requestAvatar, "alice", login, IAccount)
        login.account = Account(users.add("bob", "pw"), "password", "pw")
        self.assertRaises(UnauthorizedLogin, AccountRealm().requestAvatar, "alice", login, IAccount)
