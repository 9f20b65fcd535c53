# -*- test-case-name: tests.test_auth_checker -*-
"""
The login every protocol shares: small C{twisted.cred} checkers composed in
one chain (L{LoginChecker}), the realm, the portal.

One login attempt (L{ILoginAttempt}) goes through, in this order:

1. the IP blacklist, before anything else is looked at
   (L{gomail.auth.gates.BlacklistChecker});
2. the user name's canonical form (``Alice``, `` alice`` and NFKC variants are
   one user) and the lockouts of the client IP and of the (user, client IP)
   pair (L{gomail.auth.gates.LockoutChecker});
3. the user record; for a name it does not hold, the plugins' credential
   sources (L{gomail.auth.sources}), whose yes ends the chain here;
4. app passwords (L{gomail.auth.passwordcheckers.AppPasswordChecker});
5. the password: a cached success
   (L{gomail.auth.passwordcheckers.CachedPasswordChecker}) or bcrypt in the
   CPU thread pool (L{gomail.auth.passwordcheckers.BcryptChecker});
6. for TOTP users, the 6 digits appended to the password, accepted only for a
   time step after the last one accepted (L{gomail.auth.totpchecker.TOTPChecker});
7. only then is the success remembered in the auth cache.

The chain fires with the avatar id, the user's canonical name, and records
the L{Account} on the attempt, which serves as the login's mind: the realm
hands that account out as the L{IAccount} avatar.

Bad credentials of every kind fail with L{AuthFailure}, a subclass of
C{UnauthorizedLogin} carrying the reason for logs and metrics only: the
protocols answer all of them the same way. Every refusal costs exactly one
bcrypt verification (against the dummy hash when the attempt did not run one
on its own: locked, blacklisted, unknown, a password found in the cache but a
wrong or reused code...), so the time to a refusal does not tell which kind it
was, nor that the password was right. A success may be fast. A store that
cannot answer fails with L{TemporaryAuthError}; nothing here turns an error
into a success.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gomail.auth.blacklist import Blacklist
from gomail.auth.credentials import (
    Account,
    AuthFailure,
    IAccount,
    ILoginAttempt,
    LoginAttempt,
    TemporaryAuthError,
    UserSecret,
)
from gomail.auth.gates import BlacklistChecker, LockoutChecker
from gomail.auth.lockout import Lockout
from gomail.auth.passwordcheckers import (
    AppPasswordChecker,
    BcryptChecker,
    CachedPasswordChecker,
    PasswordVerifier,
    ThreadPoolVerifier,
)
from gomail.auth.passwords import dummy_hash
from gomail.auth.sources import AuthSources
from gomail.auth.stats import AuthStats
from gomail.auth.totp import split_code
from gomail.auth.totpchecker import TOTPChecker
from gomail.configschema import AuthSettings
from gomail.state.interface import IStateStore

#: What the dummy verification checks: any valid password does, the dummy hash matches none.
_STAND_IN = "-"


class _Spent:
    """Whether this attempt has run a bcrypt verification yet (every refusal costs exactly one)."""

    __slots__ = ("verified",)

    def __init__(self) -> None:
        self.verified = False


@implementer(ICredentialsChecker)
class LoginChecker:
    """
    The chain (see the module docstring): the one checker of the portal.

    @param users: an L{gomail.auth.users.IUserStore}.
    @param state: the L{IStateStore} holding fail counters, locks, the cache and
        the last TOTP steps used.
    @param secret: the per-install key of the auth cache's HMAC.
    """

    credentialInterfaces = (ILoginAttempt,)
    log = Logger()

    def __init__(self, users: Any, state: IStateStore, blacklist: Blacklist, verifier: PasswordVerifier,
                 clock: IReactorTime, secret: bytes, settings: AuthSettings,
                 stats: AuthStats | None = None, timer: Callable[[], float] = time.perf_counter,
                 sources: AuthSources | None = None) -> None:
        self.users = users
        self.blacklist = blacklist
        self.verifier = verifier
        self.clock = clock
        self.settings = settings
        self.stats = stats or AuthStats()
        self._timer = timer
        self._dummy = dummy_hash(settings.bcryptRounds)
        self.lockout = Lockout(state, settings, self.stats)
        self.blacklist_checker = BlacklistChecker(blacklist)
        self.lockout_checker = LockoutChecker(self.lockout)
        self.app_passwords = AppPasswordChecker(users, clock)
        self.cached = CachedPasswordChecker(state, secret, self.stats)
        self.bcrypt = BcryptChecker(verifier, users, settings.bcryptRounds)
        self.totp = TOTPChecker(state, clock)
        #: Plugins' credential sources for names the database does not hold (None: none).
        self.sources = sources
        self.state = state

    @property
    def state(self) -> IStateStore:
        return self._state

    @state.setter
    def state(self, state: IStateStore) -> None:
        # The checkers that keep state read the same store (a test or a reload may swap it).
        self._state = self.lockout.state = self.cached.state = self.totp.state = state

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self._avatar_id(credentials))

    async def _avatar_id(self, attempt: LoginAttempt) -> str:
        return (await self.check(attempt)).name

    def authenticate(self, attempt: LoginAttempt) -> Deferred:
        """Check one attempt: fires with its L{Account}, fails with L{AuthFailure} or L{TemporaryAuthError}."""
        return Deferred.fromCoroutine(self.check(attempt))

    async def check(self, attempt: LoginAttempt) -> Account:
        """L{authenticate} as a coroutine; the account is also recorded on the attempt."""
        started = self._timer()
        spent = _Spent()
        try:
            account = await self._check(attempt, spent)
        except AuthFailure as failure:
            if not spent.verified:
                # Cost a refusal what a wrong password costs: one bcrypt verification, in the same pool.
                await self.verifier.verify(_STAND_IN, self._dummy)
            self.stats.attempt(attempt.protocol, "failure", failure.reason, self._timer() - started)
            raise
        except TemporaryAuthError:
            self.stats.attempt(attempt.protocol, "tempfail", "unavailable", self._timer() - started)
            raise
        self.stats.attempt(attempt.protocol, "success", account.via, self._timer() - started)
        attempt.account = account
        return account

    async def _check(self, attempt: LoginAttempt, spent: _Spent) -> Account:
        await self.blacklist_checker.check(attempt)
        name = await self.lockout_checker.check(attempt)
        try:
            account = await self._verify(name, attempt, spent)
        except AuthFailure as failure:
            failure.delay = await self.lockout_checker.failed(name, attempt)
            raise
        await self.lockout_checker.succeeded(name, attempt)
        return account

    async def _verify(self, name: str, attempt: LoginAttempt, spent: _Spent) -> Account:
        try:
            user = await self.users.get_user(name)
        except Exception as e:
            self.log.error("user database unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("user database unavailable") from e
        if user is None and self.sources is not None:
            account = await self.sources.check(name, attempt)
            if account is not None:
                return account
        if user is None or not user.enabled:
            raise AuthFailure("unknown-user" if user is None else "disabled")
        with contextlib.suppress(AuthFailure):  # not one of its app passwords: the password then
            await self.app_passwords.check(UserSecret(user, attempt.password))
            return Account(user, "app-password", attempt.password)
        credentials = UserSecret(user, attempt.password)
        if user.totp_enabled:
            parts = split_code(attempt.password)
            if parts is None:
                raise AuthFailure("bad-totp")
            credentials = UserSecret(user, *parts)
        via = await self._password(credentials, spent)
        if user.totp_enabled:
            await self.totp.check(credentials)
        if via == "password" and self.settings.cacheTTL:
            # Only now, the whole login (password and code) being right: a cache
            # filled before the code was checked made a right password answer
            # faster than a wrong one, whatever the code.
            await self.cached.remember(credentials, self.settings.cacheTTL)
        return Account(user, via, credentials.secret)

    async def _password(self, credentials: UserSecret, spent: _Spent) -> str:
        """C{"cache"} or C{"password"} (bcrypt said yes); fails with bad-password."""
        if self.settings.cacheTTL:
            with contextlib.suppress(AuthFailure):  # not cached: bcrypt decides
                await self.cached.check(credentials)
                return "cache"
        try:
            await self.bcrypt.check(credentials)
        finally:
            spent.verified = credentials.bcrypt_ran
        return "password"


@implementer(IRealm)
class AccountRealm:
    """Hands out the L{Account} the checker recorded on the login's mind (the attempt) as the L{IAccount} avatar."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IAccount not in interfaces:
            raise NotImplementedError("gomail's realm only provides IAccount")
        account = getattr(mind, "account", None)
        if account is None or account.name != avatarId:
            raise UnauthorizedLogin("the login's mind carries no account for that avatar id")
        return IAccount, account, lambda: None


def make_portal(checker: LoginChecker, tickets: ICredentialsChecker | None = None) -> Portal:
    """
    The one portal every protocol logs in through: the chain for
    L{ILoginAttempt}, and, given, the checker of nginx's login tickets
    (L{gomail.auth.tickets.TicketChecker}) for their own credentials
    interface, which only IMAP and POP3 hand it, and only from a trusted proxy.
    """
    return Portal(AccountRealm(), [checker] if tickets is None else [checker, tickets])


def login(portal: Portal, attempt: Any) -> Deferred:
    """
    Log in through C{portal} with a L{LoginAttempt} (or a
    L{gomail.auth.tickets.TicketLogin}), which is also the mind: fires with the L{Account}.
    """
    return portal.login(attempt, attempt, IAccount).addCallback(lambda result: result[1])


__all__ = ["Account", "AccountRealm", "AuthFailure", "LoginAttempt", "LoginChecker", "TemporaryAuthError",
           "ThreadPoolVerifier", "login", "make_portal"]
