# -*- test-case-name: tests.test_auth_passwordcheckers -*-
"""
The second factor: the TOTP code split off the password (L{IUserSecret}'s
C{code}) is valid now (one step of drift either side) and for a time step
after the last one accepted for the user, shared through the state store
(RFC 6238 5.2: a code, or an older one, is never accepted twice).
"""

from __future__ import annotations

from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from zope.interface import implementer

from gomail.auth.credentials import AuthFailure, IUserSecret
from gomail.auth.gates import from_store
from gomail.auth.totp import accept_step, matching_step
from gomail.state.interface import IStateStore


@implementer(ICredentialsChecker)
class TOTPChecker:
    """Fires with the user's name for a fresh valid code; C{bad-totp} or C{totp-replay} otherwise."""

    credentialInterfaces = (IUserSecret,)

    def __init__(self, state: IStateStore, clock: Any) -> None:
        self.state = state
        self.clock = clock

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self.check(credentials))

    async def check(self, credentials: Any) -> str:
        user = credentials.user
        if credentials.code is None:
            raise AuthFailure("bad-totp")
        step = matching_step(user.totp_secret or "", credentials.code, self.clock.seconds())
        if step is None:
            raise AuthFailure("bad-totp")
        if not await from_store(accept_step(self.state, user.name, step)):
            raise AuthFailure("totp-replay")
        return user.name


__all__ = ["TOTPChecker"]
