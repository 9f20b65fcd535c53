"""
The credential checker every protocol shares, and its twisted.cred glue.

One login attempt goes through, in this order:

1. the IP blacklist (before anything else is looked at);
2. the user name's canonical form (``Alice``, `` alice`` and NFKC variants are one user);
3. lockout marks for the client IP and for the (user, client IP) pair
   (L{gomail.auth.lockout});
4. the user record;
5. app passwords (fast digest comparison: they are random, high-entropy tokens);
6. the password: a cached success (an HMAC of user and password under the
   install secret, remembering the user's credential version) or bcrypt in the
   CPU thread pool;
7. for TOTP users, the 6 digits appended to the password: a code is accepted
   only for a time step after the last one accepted (L{gomail.auth.totp});
8. only then is the success remembered in the auth cache.

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

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gomail.auth.blacklist import Blacklist
from gomail.auth.lockout import Lockout, client_ip
from gomail.auth.names import canonical_username
from gomail.auth.passwords import app_password_digest, bcrypt_cost, check_password, dummy_hash
from gomail.auth.records import UserRecord
from gomail.auth.stats import AuthStats
from gomail.auth.totp import TOTP_DIGITS, TOTP_STEP, accept_step, matching_step, split_code
from gomail.settings import AuthSettings
from gomail.state.interface import IStateStore, StateStoreError

#: What the dummy verification checks: any valid password does, the dummy hash matches none.
_STAND_IN = "-"


class AuthFailure(UnauthorizedLogin):
    """
    Bad credentials. C{reason} is for logs and metrics, never for the client.

    @ivar delay: seconds the protocol should wait before answering (the
        user's slowdown, see L{gomail.auth.lockout}); 0 for none. The portal
        (L{make_portal}) waits them itself; auth_http tells nginx (C{Auth-Wait}).
    """

    def __init__(self, reason: str, delay: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class TemporaryAuthError(Exception):
    """The check could not be made (user database or state store unavailable)."""


@dataclass(frozen=True)
class AuthSuccess:
    """
    A successful check.

    @ivar via: C{"password"}, C{"cache"} (password found in the auth cache) or
        C{"app-password"}.
    @ivar password: the password without any TOTP code, for a backend that
        should see a stable password (nginx auth_http's C{Auth-Pass}).
    """

    user: UserRecord
    via: str
    password: str

    @property
    def name(self) -> str:
        return self.user.name


@implementer(IUsernamePassword)
class LoginAttempt:
    """Credentials with where they came from: the client IP and the protocol."""

    def __init__(self, username: str, password: str, client_ip: str | None, protocol: str) -> None:
        self.username = username
        self.password = password
        self.client_ip = client_ip
        self.protocol = protocol

    def checkPassword(self, password: Any) -> bool:
        raise NotImplementedError("LoginAttempt is checked by gomail's Authenticator, not compared directly")

    def __repr__(self) -> str:  # never show the password, not even in a traceback
        return f"<LoginAttempt {self.protocol} from {self.client_ip}>"


class PasswordVerifier(Interface):
    """Runs bcrypt somewhere that is not the reactor thread."""

    def verify(password, hashed):
        """@return: Deferred[bool]"""

    def hash(password, rounds):
        """@return: Deferred[bytes], a new bcrypt hash of C{password} at cost C{rounds}."""


@implementer(PasswordVerifier)
class ThreadPoolVerifier:
    """bcrypt in a dedicated thread pool (bcrypt releases the GIL while it works)."""

    def __init__(self, reactor: Any, pool: Any) -> None:
        self.reactor = reactor
        self.pool = pool

    def verify(self, password: str, hashed: bytes) -> Deferred:
        from twisted.internet.threads import deferToThreadPool

        from gomail.auth.passwords import verify_password

        return deferToThreadPool(self.reactor, self.pool, verify_password, password, hashed)

    def hash(self, password: str, rounds: int) -> Deferred:
        from twisted.internet.threads import deferToThreadPool

        from gomail.auth.passwords import hash_password

        return deferToThreadPool(self.reactor, self.pool, hash_password, password, rounds)


class _Spent:
    """Whether this attempt has run a bcrypt verification yet (every refusal costs exactly one)."""

    __slots__ = ("verified",)

    def __init__(self) -> None:
        self.verified = False


class Authenticator:
    """
    The composed checker (see the module docstring).

    @param users: an L{gomail.auth.users.IUserStore}.
    @param state: the L{IStateStore} holding fail counters, locks, the cache and
        the last TOTP steps used.
    @param secret: the per-install key of the auth cache's HMAC.
    """

    log = Logger()

    def __init__(self, users: Any, state: IStateStore, blacklist: Blacklist, verifier: PasswordVerifier,
                 clock: IReactorTime, secret: bytes, settings: AuthSettings,
                 stats: AuthStats | None = None, timer: Callable[[], float] = time.perf_counter) -> None:
        self.users = users
        self.blacklist = blacklist
        self.verifier = verifier
        self.clock = clock
        self.secret = secret
        self.settings = settings
        self.stats = stats or AuthStats()
        self._timer = timer
        self._dummy = dummy_hash(settings.bcryptRounds)
        self.lockout = Lockout(state, settings, self.stats)
        self.state = state

    @property
    def state(self) -> IStateStore:
        return self._state

    @state.setter
    def state(self, state: IStateStore) -> None:
        # The lockout reads the same store (a test or a reload may swap it).
        self._state = self.lockout.state = state

    def authenticate(self, attempt: LoginAttempt) -> Deferred:
        """Check one attempt: fires with L{AuthSuccess}, fails with L{AuthFailure} or L{TemporaryAuthError}."""
        return Deferred.fromCoroutine(self.check(attempt))

    async def check(self, attempt: LoginAttempt) -> AuthSuccess:
        """
        L{authenticate} as a coroutine, for a caller that is one already:
        awaiting it directly saves a Deferred and a trampoline per login on
        auth_http's hot path.
        """
        started = self._timer()
        spent = _Spent()
        try:
            success = await self._check(attempt, spent)
        except AuthFailure as failure:
            if not spent.verified:
                await self._spend_time()
            self.stats.attempt(attempt.protocol, "failure", failure.reason, self._timer() - started)
            raise
        except TemporaryAuthError:
            self.stats.attempt(attempt.protocol, "tempfail", "unavailable", self._timer() - started)
            raise
        self.stats.attempt(attempt.protocol, "success", success.via, self._timer() - started)
        return success

    async def _check(self, attempt: LoginAttempt, spent: _Spent) -> AuthSuccess:
        ip = client_ip(attempt.client_ip)
        if ip and await self._blacklisted(ip):
            raise AuthFailure("blacklisted")
        try:
            name = canonical_username(attempt.username)
        except ValueError:
            raise AuthFailure("bad-username", await self.lockout.failed(None, ip)) from None
        if await self._store(self.lockout.locked(name, ip)):
            raise AuthFailure("locked")
        try:
            success = await self._verify(name, attempt.password, spent)
        except AuthFailure as failure:
            failure.delay = await self.lockout.failed(name, ip)
            raise
        await self._store(self.lockout.succeeded(name, ip))
        return success

    async def _verify(self, name: str, password: str, spent: _Spent) -> AuthSuccess:
        try:
            user = await self.users.get_user(name)
        except Exception as e:
            self.log.error("user database unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("user database unavailable") from e
        if user is None or not user.enabled:
            raise AuthFailure("unknown-user" if user is None else "disabled")
        app = self._app_password(user, password)
        if app is not None:
            self.users.touch_app_password(app.id, self.clock.seconds()).addErrback(
                lambda f: self.log.warn("could not record app password use: {error}", error=f.getErrorMessage()))
            return AuthSuccess(user, "app-password", password)
        secret, code = password, None
        if user.totp_enabled:
            parts = split_code(password)
            if parts is None:
                raise AuthFailure("bad-totp")
            secret, code = parts
        cache_key = self._cache_key(user.name, secret)
        version = str(user.credential_version).encode()
        via = await self._check_password(user, secret, cache_key, version, spent)
        if code is not None:
            await self._check_totp(user, code)
        if via == "password" and self.settings.cacheTTL:
            # Only now, the whole login (password and code) being right: a cache
            # filled before the code was checked made a right password answer
            # faster than a wrong one, whatever the code.
            await self._store(self.state.set(cache_key, version, self.settings.cacheTTL))
        return AuthSuccess(user, via, secret)

    def _app_password(self, user: UserRecord, password: str) -> Any:
        digest = app_password_digest(password)
        found = None
        for app in user.app_passwords:  # no early exit: same work whichever matches
            if hmac.compare_digest(app.digest, digest):
                found = app
        return found

    async def _check_password(self, user: UserRecord, password: str, cache_key: str, version: bytes,
                              spent: _Spent) -> str:
        """C{"cache"} or C{"password"} (bcrypt said yes); fails with bad-password."""
        if self.settings.cacheTTL:
            cached = await self._store(self.state.get(cache_key))
            if cached is not None and hmac.compare_digest(cached, version):
                self.stats.cache(hit=True)
                return "cache"
            self.stats.cache(hit=False)
        try:
            check_password(password)
        except ValueError:
            # bcrypt would refuse it without working (empty, NUL, over 72 bytes):
            # the refusal's dummy verification gives it the usual cost.
            raise AuthFailure("bad-password") from None
        spent.verified = True
        if not await self.verifier.verify(password, user.password_hash):
            raise AuthFailure("bad-password")
        if bcrypt_cost(user.password_hash) != self.settings.bcryptRounds:
            self._upgrade_hash(user, password)
        return "password"

    def _upgrade_hash(self, user: UserRecord, password: str) -> None:
        """
        Rehash the password at the configured cost, in the background: every
        refusal costs one verification against the dummy hash at that cost, so
        a user whose hash has another cost (made with C{--bcrypt-rounds}, or
        before C{auth.bcryptRounds} changed) would be told apart by timing.
        """
        rounds = self.settings.bcryptRounds

        async def upgrade() -> None:
            new_hash = await self.verifier.hash(password, rounds)
            if await self.users.upgrade_password_hash(user.name, user.password_hash, new_hash):
                self.log.info("password hash of {user} upgraded to bcrypt cost {rounds}", user=user.name,
                              rounds=rounds)

        Deferred.fromCoroutine(upgrade()).addErrback(
            lambda f: self.log.warn("could not upgrade the password hash of {user}: {error}", user=user.name,
                                    error=f.getErrorMessage()))

    async def _check_totp(self, user: UserRecord, code: str) -> None:
        step = matching_step(user.totp_secret or "", code, self.clock.seconds())
        if step is None:
            raise AuthFailure("bad-totp")
        if not await self._store(accept_step(self.state, user.name, step)):
            raise AuthFailure("totp-replay")

    # -- helpers ----------------------------------------------------------------

    async def _blacklisted(self, ip: str) -> bool:
        try:
            return await self.blacklist.check(ip)
        except Exception as e:
            self.log.error("IP blacklist unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("blacklist unavailable") from e

    async def _spend_time(self) -> None:
        """
        Cost a refusal what a wrong password costs: one bcrypt verification,
        in the same pool, of a stand-in password against the dummy hash.
        """
        await self.verifier.verify(_STAND_IN, self._dummy)

    async def _store(self, result: Any) -> Any:
        try:
            return await result
        except StateStoreError as e:
            self.log.error("state store unavailable: {error}", error=str(e))
            raise TemporaryAuthError("state store unavailable") from e

    def _cache_key(self, name: str, password: str) -> str:
        # hmac.digest: the one-shot C path, a third of hmac.new()'s cost on the per-login path
        mac = hmac.digest(self.secret, name.encode() + b"\0" + password.encode("utf-8", "surrogatepass"), "sha256")
        return f"auth:cache:{mac.hex()}"


# -- twisted.cred -----------------------------------------------------------------


class IAccount(Interface):
    """The avatar of an authenticated session: an L{AuthSuccess}."""


@implementer(ICredentialsChecker)
class AuthenticatorChecker:
    """
    twisted.cred's view of the L{Authenticator}: the avatar id is the
    L{AuthSuccess}. A failure carries the user's slowdown in C{delay}; each
    protocol applies it its own way (SMTP answers that much later, auth_http
    tells nginx with C{Auth-Wait}).
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def requestAvatarId(self, credentials: Any) -> Deferred:
        if not isinstance(credentials, LoginAttempt):
            credentials = LoginAttempt(credentials.username, credentials.password, None, "unknown")
        return Deferred.fromCoroutine(self._avatar_id(credentials))

    async def _avatar_id(self, attempt: LoginAttempt) -> AuthSuccess:
        return await self.authenticator.check(attempt)


@implementer(IRealm)
class AccountRealm:
    """Hands out the L{AuthSuccess} itself as the L{IAccount} avatar."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple:
        if IAccount not in interfaces:
            raise NotImplementedError("gomail's realm only provides IAccount")
        return IAccount, avatarId, lambda: None


def make_portal(authenticator: Authenticator) -> Portal:
    """The one portal every protocol logs in through."""
    return Portal(AccountRealm(), [AuthenticatorChecker(authenticator)])


def login(portal: Portal, attempt: LoginAttempt) -> Deferred:
    """Log in through C{portal}: fires with the L{AuthSuccess}."""
    return portal.login(attempt, None, IAccount).addCallback(lambda result: result[1])


__all__ = ["TOTP_DIGITS", "TOTP_STEP", "AuthFailure", "AuthSuccess", "Authenticator",
           "LoginAttempt", "TemporaryAuthError", "ThreadPoolVerifier", "login", "make_portal"]
