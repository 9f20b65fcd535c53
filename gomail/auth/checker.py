"""
The credential checker every protocol shares, and its twisted.cred glue.

One login attempt goes through, in this order:

1. the IP blacklist (before anything else is looked at);
2. the user name's canonical form (``Alice``, `` alice`` and NFKC variants are one user);
3. lockout marks for the user and for the client IP;
4. the user record (an unknown or disabled user still costs one bcrypt
   verification against a dummy hash, so timing does not tell them apart);
5. app passwords (fast digest comparison: they are random, high-entropy tokens);
6. the password: a cached success (an HMAC of user and password under the
   install secret, remembering the user's credential version) or bcrypt in the
   CPU thread pool;
7. for TOTP users, the 6 digits appended to the password, each code accepted once.

Bad credentials of every kind fail with L{AuthFailure}, a subclass of
C{UnauthorizedLogin} carrying the reason for logs and metrics only: the
protocols answer all of them the same way. A store that cannot answer fails
with L{TemporaryAuthError}; nothing here turns an error into a success.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyotp
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gomail.auth.blacklist import Blacklist
from gomail.auth.names import canonical_username
from gomail.auth.passwords import app_password_digest, dummy_hash
from gomail.auth.records import UserRecord
from gomail.auth.stats import AuthStats
from gomail.settings import AuthSettings
from gomail.state.interface import IStateStore, StateStoreError

TOTP_DIGITS = 6
TOTP_STEP = 30
#: A replay mark outlives the ±1 step window the code is valid in.
TOTP_MARK_TTL = 4 * TOTP_STEP


class AuthFailure(UnauthorizedLogin):
    """Bad credentials. C{reason} is for logs and metrics, never for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


class Authenticator:
    """
    The composed checker (see the module docstring).

    @param users: an L{gomail.auth.users.IUserStore}.
    @param state: the L{IStateStore} holding fail counters, locks, the cache and
        TOTP replay marks.
    @param secret: the per-install key of the auth cache's HMAC.
    """

    log = Logger()

    def __init__(self, users: Any, state: IStateStore, blacklist: Blacklist, verifier: PasswordVerifier,
                 clock: IReactorTime, secret: bytes, settings: AuthSettings,
                 stats: AuthStats | None = None, timer: Callable[[], float] = time.perf_counter) -> None:
        self.users = users
        self.state = state
        self.blacklist = blacklist
        self.verifier = verifier
        self.clock = clock
        self.secret = secret
        self.settings = settings
        self.stats = stats or AuthStats()
        self._timer = timer
        self._dummy = dummy_hash(settings.bcryptRounds)

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
        try:
            success = await self._check(attempt)
        except AuthFailure as failure:
            self.stats.attempt(attempt.protocol, "failure", failure.reason, self._timer() - started)
            raise
        except TemporaryAuthError:
            self.stats.attempt(attempt.protocol, "tempfail", "unavailable", self._timer() - started)
            raise
        self.stats.attempt(attempt.protocol, "success", success.via, self._timer() - started)
        return success

    async def _check(self, attempt: LoginAttempt) -> AuthSuccess:
        ip = attempt.client_ip or ""
        if ip and await self._blacklisted(ip):
            raise AuthFailure("blacklisted")
        try:
            name = canonical_username(attempt.username)
        except ValueError:
            await self._spend_time(attempt.password)
            raise AuthFailure("bad-username")
        if await self._locked(name, ip):
            raise AuthFailure("locked")
        try:
            success = await self._verify(name, attempt.password)
        except AuthFailure:
            await self._count_failure(name, ip)
            raise
        await self._store(self.state.delete(self._key("fail:user", name)))
        return success

    async def _verify(self, name: str, password: str) -> AuthSuccess:
        try:
            user = await self.users.get_user(name)
        except Exception as e:
            self.log.error("user database unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("user database unavailable") from e
        if user is None or not user.enabled:
            await self._spend_time(password)
            raise AuthFailure("unknown-user" if user is None else "disabled")
        app = self._app_password(user, password)
        if app is not None:
            self.users.touch_app_password(app.id, self.clock.seconds()).addErrback(
                lambda f: self.log.warn("could not record app password use: {error}", error=f.getErrorMessage()))
            return AuthSuccess(user, "app-password", password)
        secret, code = password, None
        if user.totp_enabled:
            secret, code = password[:-TOTP_DIGITS], password[-TOTP_DIGITS:]
            if not (code.isascii() and code.isdigit() and len(code) == TOTP_DIGITS):
                await self._spend_time(password)
                raise AuthFailure("bad-totp")
        via = await self._check_password(user, secret)
        if code is not None:
            await self._check_totp(user, code)
        return AuthSuccess(user, via, secret)

    def _app_password(self, user: UserRecord, password: str) -> Any:
        digest = app_password_digest(password)
        found = None
        for app in user.app_passwords:  # no early exit: same work whichever matches
            if hmac.compare_digest(app.digest, digest):
                found = app
        return found

    async def _check_password(self, user: UserRecord, password: str) -> str:
        cache_key = self._cache_key(user.name, password)
        version = str(user.credential_version).encode()
        if self.settings.cacheTTL:
            cached = await self._store(self.state.get(cache_key))
            if cached is not None and hmac.compare_digest(cached, version):
                self.stats.cache(hit=True)
                return "cache"
            self.stats.cache(hit=False)
        if not await self.verifier.verify(password, user.password_hash):
            raise AuthFailure("bad-password")
        if self.settings.cacheTTL:
            await self._store(self.state.set(cache_key, version, self.settings.cacheTTL))
        return "password"

    async def _check_totp(self, user: UserRecord, code: str) -> None:
        totp = pyotp.TOTP(user.totp_secret or "", digits=TOTP_DIGITS, interval=TOTP_STEP)
        now = self.clock.seconds()
        step = None
        for offset in (-1, 0, 1):  # RFC 6238 5.2: one step of clock drift either way
            if hmac.compare_digest(totp.at(now + offset * TOTP_STEP), code):
                step = int(now // TOTP_STEP) + offset
        if step is None:
            raise AuthFailure("bad-totp")
        mark = self._key("totp", f"{user.name}:{step}")
        if not await self._store(self.state.add(mark, b"1", TOTP_MARK_TTL)):
            raise AuthFailure("totp-replay")

    # -- lockout ----------------------------------------------------------------

    async def _locked(self, name: str, ip: str) -> bool:
        if await self._store(self.state.get(self._key("lock:user", name))) is not None:
            return True
        return bool(ip) and await self._store(self.state.get(self._key("lock:ip", ip))) is not None

    async def _count_failure(self, name: str, ip: str) -> None:
        settings = self.settings
        try:
            failures = await self.state.incr(self._key("fail:user", name), settings.failTTL)
            if failures >= settings.maxFailAttempts:
                await self._lock("lock:user", name, "user")
            if ip:
                failures = await self.state.incr(self._key("fail:ip", ip), settings.failTTL)
                if failures >= settings.maxFailAttemptsPerIP:
                    await self._lock("lock:ip", ip, "client IP")
        except StateStoreError as e:
            # The attempt failed anyway; it stays a failure (not a temporary error).
            self.log.warn("could not count a failed login: {error}", error=str(e))

    async def _lock(self, kind: str, subject: str, what: str) -> None:
        if await self.state.add(self._key(kind, subject), b"1", self.settings.lockTTL):
            self.stats.lockout(what)
            self.log.warn("{what} locked out for {ttl} s after repeated failed logins",
                          what=what if what == "user" else f"{what} {subject}", ttl=self.settings.lockTTL)

    # -- helpers ----------------------------------------------------------------

    async def _blacklisted(self, ip: str) -> bool:
        try:
            return await self.blacklist.check(ip)
        except Exception as e:
            self.log.error("IP blacklist unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("blacklist unavailable") from e

    async def _spend_time(self, password: str) -> None:
        """Cost an unknown user what a known one costs: one bcrypt verification."""
        await self.verifier.verify(password, self._dummy)

    async def _store(self, result: Deferred) -> Any:
        try:
            return await result
        except StateStoreError as e:
            self.log.error("state store unavailable: {error}", error=str(e))
            raise TemporaryAuthError("state store unavailable") from e

    @staticmethod
    @functools.lru_cache(maxsize=8192)  # the same users and client IPs at every login
    def _key(kind: str, subject: str) -> str:
        # Subjects are hashed: keys never hold user names or addresses in clear.
        return f"auth:{kind}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"

    def _cache_key(self, name: str, password: str) -> str:
        # hmac.digest: the one-shot C path, a third of hmac.new()'s cost on the per-login path
        mac = hmac.digest(self.secret, name.encode() + b"\0" + password.encode("utf-8", "surrogatepass"), "sha256")
        return f"auth:cache:{mac.hex()}"


# -- twisted.cred -----------------------------------------------------------------


class IAccount(Interface):
    """The avatar of an authenticated session: an L{AuthSuccess}."""


@implementer(ICredentialsChecker)
class AuthenticatorChecker:
    """twisted.cred's view of the L{Authenticator}: the avatar id is the L{AuthSuccess}."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def requestAvatarId(self, credentials: Any) -> Deferred:
        if not isinstance(credentials, LoginAttempt):
            credentials = LoginAttempt(credentials.username, credentials.password, None, "unknown")
        return self.authenticator.authenticate(credentials)


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


__all__ = ["AuthFailure", "TemporaryAuthError", "AuthSuccess", "LoginAttempt", "Authenticator",
           "ThreadPoolVerifier", "make_portal", "login"]
