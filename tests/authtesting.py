"""Test doubles for the authentication side: an in-memory user store and a synchronous bcrypt."""

from __future__ import annotations

import dataclasses
from typing import Any

import bcrypt
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from gomail.auth.blacklist import Blacklist
from gomail.auth.checker import LoginChecker, make_portal
from gomail.auth.names import canonical_username
from gomail.auth.passwordcheckers import PasswordVerifier
from gomail.auth.passwords import app_password_digest
from gomail.auth.records import AppPassword, BlacklistEntry, UserRecord
from gomail.auth.tickets import LoginTickets, TicketChecker
from gomail.configschema import AuthSettings

ROUNDS = 4  # bcrypt's minimum: the tests check behaviour, not cost
SECRET = b"k" * 32


def hashed(password: str) -> bytes:
    """A bcrypt hash at test cost."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(ROUNDS))


class MemoryUsers:
    """The parts of the user store the checker uses, in a dict; C{broken} makes every call fail."""

    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {}
        self.blacklist: list[BlacklistEntry] = []
        self.touched: list[int] = []
        self.broken = False
        self.lookups = 0

    def add(self, name: str, password: str, **fields: Any) -> UserRecord:
        apps = tuple(AppPassword(i + 1, label, app_password_digest(secret), 0.0)
                     for i, (label, secret) in enumerate(fields.pop("app_passwords", {}).items()))
        user = UserRecord(canonical_username(name), hashed(password), app_passwords=apps, **fields)
        self.users[user.name] = user
        return user

    def change(self, name: str, **fields: Any) -> None:
        """Change a user the way the database does: credential changes bump the version."""
        user = self.users[name]
        self.users[name] = dataclasses.replace(user, credential_version=user.credential_version + 1, **fields)

    def get_user(self, name: str) -> Deferred:
        self.lookups += 1
        if self.broken:
            return fail(OSError("database is locked"))
        return succeed(self.users.get(canonical_username(name)))

    def upgrade_password_hash(self, name: str, old_hash: bytes, new_hash: bytes) -> Deferred:
        user = self.users.get(name)
        if user is None or user.password_hash != old_hash:
            return succeed(False)
        self.users[name] = dataclasses.replace(user, password_hash=new_hash)  # same password: version kept
        return succeed(True)

    def touch_app_password(self, app_id: int, now: float) -> Deferred:
        self.touched.append(app_id)
        return succeed(None)

    def list_blacklist(self, now: float) -> Deferred:
        if self.broken:
            return fail(OSError("database is locked"))
        return succeed([e for e in self.blacklist if e.expires is None or e.expires > now])


@implementer(PasswordVerifier)
class SyncVerifier:
    """bcrypt on the calling thread (the tests' stand-in for the CPU pool); counts what it was asked."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []

    def verify(self, password: str, hashed_password: bytes) -> Deferred:
        self.hashes.append(hashed_password)
        return succeed(bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed_password))

    def hash(self, password: str, rounds: int) -> Deferred:
        return succeed(bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)))


def auth_settings(**overrides: Any) -> AuthSettings:
    return dataclasses.replace(AuthSettings(bcryptRounds=ROUNDS), **overrides)


def authenticator(clock: Any, state: Any, users: MemoryUsers | None = None,
                  verifier: SyncVerifier | None = None, **overrides: Any) -> LoginChecker:
    """A LoginChecker over test doubles and the given state store."""
    users = users if users is not None else MemoryUsers()
    settings = auth_settings(**overrides)
    return LoginChecker(users, state, Blacklist(users, clock, settings.blacklistRefresh),
                         verifier or SyncVerifier(), clock, SECRET, settings)


def portal_for(authenticator_: LoginChecker, tickets: LoginTickets | None = None) -> Any:
    """The portal over C{authenticator_}, and, given C{tickets}, the ticket checker over the same users."""
    if tickets is None:
        return make_portal(authenticator_)
    return make_portal(authenticator_, TicketChecker(tickets, authenticator_.users, authenticator_.sources,
                                                     authenticator_.stats))
