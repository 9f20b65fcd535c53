# -*- test-case-name: tests.test_plugins_auth -*-
"""
Plugins' credential sources (L{gomail.interfaces.IAuthSource}): asked, in
order, about a name the user database does not hold, inside the login
chain (L{gomail.auth.checker.LoginChecker}), so the blacklist, the lockouts
and the equal-time rule apply around them exactly as around the database.

A source vouches for a user with a L{gomail.plugin.SourceUser} of that same
name; it keeps its own second factor, if any (gomail's TOTP and auth cache
are for database users). A source that fails or does not answer within
C{plugins.timeout} makes the login a temporary failure: never a success,
and not a refusal that would count towards a lockout.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from gomail.auth.credentials import Account, AuthFailure, LoginAttempt, TemporaryAuthError
from gomail.auth.names import canonical_username
from gomail.auth.records import UserRecord
from gomail.extension.runner import HookFailed, HookRunner
from gomail.plugin import SourceUser


class AuthSources:
    """The enabled sources, asked in order; the first that vouches for the user logs them in."""

    log = Logger()

    #: Seconds a source's yes is remembered for XCLIENT LOGIN (nginx's SMTP proxy logs the user in with
    #: auth_http, then names them to gomail's SMTP without the password).
    VOUCHED_FOR = 900.0
    #: Users remembered at most (the oldest are forgotten first).
    VOUCHED_MAX = 10000

    def __init__(self, sources: list[tuple[str, Any]], runner: HookRunner) -> None:
        self.sources, self.runner = sources, runner
        self._vouched: dict[str, tuple[Account, float]] = {}

    def vouched(self, name: str) -> Account | None:
        """The account a source logged C{name} (canonical) in as within L{VOUCHED_FOR} seconds, or None."""
        found = self._vouched.get(name)
        if found is None or found[1] <= self.runner.clock.seconds():
            return None
        return found[0]

    def _remember(self, account: Account) -> None:
        self._vouched.pop(account.name, None)
        self._vouched[account.name] = (account, self.runner.clock.seconds() + self.VOUCHED_FOR)
        while len(self._vouched) > self.VOUCHED_MAX:
            del self._vouched[next(iter(self._vouched))]

    async def check(self, name: str, attempt: LoginAttempt) -> Account | None:
        """
        The account of the source that vouches for C{name} (canonical) with
        the attempt's password, or None when none does.

        @raise TemporaryAuthError: a source failed or timed out.
        @raise AuthFailure: a source answered for another user.
        """
        for plugin, source in self.sources:
            try:
                answer = await self.runner.call(plugin, source.authenticate, name, attempt.password,
                                                attempt.protocol, attempt.client_ip)
            except HookFailed as e:
                raise TemporaryAuthError(f"auth source {plugin} unavailable") from e
            if answer is None:
                continue
            if not isinstance(answer, SourceUser) or not _same_user(answer.name, name):
                # A source may only say yes or no about the name asked: never log someone in as another.
                said = answer.name if isinstance(answer, SourceUser) else type(answer).__name__
                self.log.error("auth source {plugin} answered {said!r} for a login as {name}: refused",
                               plugin=plugin, said=said, name=name)
                raise AuthFailure("source-mismatch")
            try:
                user = _record(name, answer)
            except TypeError as e:  # a source's bug, like a source that raised: try again later
                self.log.error("auth source {plugin} answered a malformed user: {error}", plugin=plugin, error=e)
                raise TemporaryAuthError(f"auth source {plugin} answered a malformed user") from e
            account = Account(user, f"plugin:{plugin}", attempt.password)
            self._remember(account)
            return account
        return None


def _record(name: str, answer: SourceUser) -> UserRecord:
    """
    The user record the protocols see for a source's user: its canonical
    C{name}, the senders the source allows (C{may_send_as} reads them), no
    password hash (nothing of gomail's checks it), no TOTP, no backend
    assignment (nginx's backend is then the strategy's pick).
    """
    senders = answer.allowed_senders
    # One address given as a string would otherwise become one "sender" per character.
    allowed = (senders,) if isinstance(senders, str) else tuple(senders or ())
    if not all(isinstance(sender, str) for sender in allowed):
        raise TypeError("allowed_senders must be strings")
    return UserRecord(name=name, password_hash=b"", allowed_senders=allowed)


def _same_user(answered: Any, asked: str) -> bool:
    if not isinstance(answered, str):
        return False
    try:
        return canonical_username(answered) == asked
    except ValueError:
        return False
