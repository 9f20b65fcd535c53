# -*- test-case-name: tests.test_auth_gates -*-
"""
The checkers a login passes before any credential is looked at: the client
IP blacklist, and the lockouts of the client IP and of the (user, client IP)
pair (L{gomail.auth.lockout}). Each is an C{ICredentialsChecker} over
L{ILoginAttempt} that fires with the attempt's canonical user name when it
has no objection, and fails with L{AuthFailure} when it refuses, or with
L{TemporaryAuthError} when its store cannot answer.
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from gomail.auth.blacklist import Blacklist
from gomail.auth.credentials import AuthFailure, ILoginAttempt, TemporaryAuthError
from gomail.auth.lockout import Lockout, client_ip
from gomail.auth.names import canonical_username
from gomail.state.interface import StateStoreError


async def from_store(result: Any) -> Any:
    """Await a state store's answer; its failure is a L{TemporaryAuthError} (logged)."""
    try:
        return await result
    except StateStoreError as e:
        Logger(namespace="gomail.auth").error("state store unavailable: {error}", error=str(e))
        raise TemporaryAuthError("state store unavailable") from e


@implementer(ICredentialsChecker)
class BlacklistChecker:
    """Refuses (C{blacklisted}) a login from a blacklisted client IP, before anything else is looked at."""

    credentialInterfaces = (ILoginAttempt,)
    log = Logger()

    def __init__(self, blacklist: Blacklist) -> None:
        self.blacklist = blacklist

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, attempt: Any) -> str:
        """L{requestAvatarId} as a coroutine: fires with the user name as given."""
        ip = client_ip(attempt.client_ip)
        if ip:
            try:
                listed = await self.blacklist.check(ip)
            except Exception as e:
                self.log.error("IP blacklist unavailable: {error}", error=str(e) or type(e).__name__)
                raise TemporaryAuthError("blacklist unavailable") from e
            if listed:
                raise AuthFailure("blacklisted")
        return attempt.username


@implementer(ICredentialsChecker)
class LockoutChecker:
    """
    Refuses a user name that has no canonical form (C{bad-username}, counted
    against the client IP) and a locked client IP or (user, client IP) pair
    (C{locked}); fires with the canonical user name. The outcome of the rest
    of the login is reported back with L{failed} and L{succeeded}.
    """

    credentialInterfaces = (ILoginAttempt,)

    def __init__(self, lockout: Lockout) -> None:
        self.lockout = lockout

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, attempt: Any) -> str:
        """L{requestAvatarId} as a coroutine."""
        ip = client_ip(attempt.client_ip)
        try:
            name = canonical_username(attempt.username)
        except ValueError:
            raise AuthFailure("bad-username", await from_store(self.lockout.failed(None, ip))) from None
        if await from_store(self.lockout.locked(name, ip)):
            raise AuthFailure("locked")
        return name

    async def failed(self, name: str, attempt: Any) -> float:
        """Count a refusal of C{name} from the attempt's IP; the user's slowdown in seconds (0: none)."""
        delay: float = await from_store(self.lockout.failed(name, client_ip(attempt.client_ip)))
        return delay

    async def succeeded(self, name: str, attempt: Any) -> None:
        """Clear the (user, client IP) pair's count after a successful login."""
        await from_store(self.lockout.succeeded(name, client_ip(attempt.client_ip)))


__all__ = ["BlacklistChecker", "LockoutChecker", "from_store"]
