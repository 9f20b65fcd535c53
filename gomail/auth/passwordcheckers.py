# -*- test-case-name: tests.test_auth_passwordcheckers -*-
"""
The checkers of a known user's secret (L{IUserSecret}), each an
C{ICredentialsChecker} firing with the user's name or failing with
L{AuthFailure}:

  - L{AppPasswordChecker}: one of the user's app passwords (random
    high-entropy tokens: a SHA-256 digest compared in constant time);
  - L{CachedPasswordChecker}: the password found in the auth cache (an HMAC
    of user and password under the install secret, remembering the user's
    credential version), filled by L{CachedPasswordChecker.remember} only
    after a whole login succeeded;
  - L{BcryptChecker}: bcrypt in the CPU thread pool (L{PasswordVerifier}),
    rehashing at the configured cost a hash made at another.
"""

from __future__ import annotations

import hmac
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gomail.auth.credentials import AuthFailure, IUserSecret
from gomail.auth.gates import from_store
from gomail.auth.passwords import (
    app_password_digest,
    bcrypt_cost,
    check_password,
    hash_password,
    verify_password,
)
from gomail.auth.stats import AuthStats
from gomail.deferreds import defer_to_pool_cancellable
from gomail.state.interface import IStateStore


class PasswordVerifier(Interface):
    """Runs bcrypt somewhere that is not the reactor thread."""

    def verify(password, hashed):
        """@return: Deferred[bool]"""

    def hash(password, rounds):
        """@return: Deferred[bytes], a new bcrypt hash of C{password} at cost C{rounds}."""


@implementer(PasswordVerifier)
class ThreadPoolVerifier:
    """
    bcrypt in a dedicated thread pool (bcrypt releases the GIL while it
    works). A verification cancelled before its turn (its client went away:
    nginx or the SMTP client disconnected) does not run.
    """

    def __init__(self, reactor: Any, pool: Any) -> None:
        self.reactor = reactor
        self.pool = pool

    def verify(self, password: str, hashed: bytes) -> Deferred:
        return defer_to_pool_cancellable(self.reactor, self.pool, verify_password, password, hashed)

    def hash(self, password: str, rounds: int) -> Deferred:
        return defer_to_pool_cancellable(self.reactor, self.pool, hash_password, password, rounds)


@implementer(ICredentialsChecker)
class AppPasswordChecker:
    """The secret is one of the user's app passwords (C{no-app-password} otherwise); its use is recorded."""

    credentialInterfaces = (IUserSecret,)
    log = Logger()

    def __init__(self, users: Any, clock: Any) -> None:
        self.users = users
        self.clock = clock

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, credentials: Any) -> str:
        digest = app_password_digest(credentials.secret)
        found = None
        for app in credentials.user.app_passwords:  # no early exit: same work whichever matches
            if hmac.compare_digest(app.digest, digest):
                found = app
        if found is None:
            raise AuthFailure("no-app-password")
        self.users.touch_app_password(found.id, self.clock.seconds()).addErrback(
            lambda f: self.log.warn("could not record app password use: {error}", error=f.getErrorMessage()))
        return credentials.user.name


@implementer(ICredentialsChecker)
class CachedPasswordChecker:
    """The secret (the password without its TOTP code) is in the auth cache for the user's current credentials."""

    credentialInterfaces = (IUserSecret,)

    def __init__(self, state: IStateStore, secret: bytes, stats: AuthStats) -> None:
        self.state = state
        self.secret = secret
        self.stats = stats

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, credentials: Any) -> str:
        cached = await from_store(self.state.get(self.key(credentials)))
        if cached is None or not hmac.compare_digest(cached, _version(credentials)):
            self.stats.cache(hit=False)
            raise AuthFailure("not-cached")
        self.stats.cache(hit=True)
        return credentials.user.name

    async def remember(self, credentials: Any, ttl: float) -> None:
        """Cache the secret for C{ttl} seconds: call only once the whole login has succeeded."""
        await from_store(self.state.set(self.key(credentials), _version(credentials), ttl))

    def key(self, credentials: Any) -> str:
        """The cache key: an HMAC of user and secret under the install secret (it holds neither)."""
        # hmac.digest: the one-shot C path, a third of hmac.new()'s cost on the per-login path
        message = credentials.user.name.encode() + b"\0" + credentials.secret.encode("utf-8", "surrogatepass")
        return f"auth:cache:{hmac.digest(self.secret, message, 'sha256').hex()}"


def _version(credentials: Any) -> bytes:
    return str(credentials.user.credential_version).encode()


@implementer(ICredentialsChecker)
class BcryptChecker:
    """
    The secret verifies against the user's bcrypt hash (C{bad-password}
    otherwise). A secret bcrypt would refuse without working (empty, NUL,
    over 72 bytes) is refused without running it: C{bcrypt_ran} stays False
    and the chain spends the refusal's verification itself.
    """

    credentialInterfaces = (IUserSecret,)
    log = Logger()

    def __init__(self, verifier: PasswordVerifier, users: Any, rounds: int) -> None:
        self.verifier = verifier
        self.users = users
        self.rounds = rounds

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, credentials: Any) -> str:
        user = credentials.user
        try:
            check_password(credentials.secret)
        except ValueError:
            raise AuthFailure("bad-password") from None
        credentials.bcrypt_ran = True
        if not await self.verifier.verify(credentials.secret, user.password_hash):
            raise AuthFailure("bad-password")
        if bcrypt_cost(user.password_hash) != self.rounds:
            self._upgrade_hash(user, credentials.secret)
        return user.name

    def _upgrade_hash(self, user: Any, password: str) -> None:
        """
        Rehash the password at the configured cost, in the background: every
        refusal costs one verification against the dummy hash at that cost, so
        a user whose hash has another cost (made with C{--bcrypt-rounds}, or
        before C{auth.bcryptRounds} changed) would be told apart by timing.
        """
        rounds = self.rounds

        async def upgrade() -> None:
            new_hash = await self.verifier.hash(password, rounds)
            if await self.users.upgrade_password_hash(user.name, user.password_hash, new_hash):
                self.log.info("password hash of {user} upgraded to bcrypt cost {rounds}", user=user.name,
                              rounds=rounds)

        Deferred.fromCoroutine(upgrade()).addErrback(
            lambda f: self.log.warn("could not upgrade the password hash of {user}: {error}", user=user.name,
                                    error=f.getErrorMessage()))


__all__ = ["AppPasswordChecker", "BcryptChecker", "CachedPasswordChecker", "PasswordVerifier",
           "ThreadPoolVerifier"]
