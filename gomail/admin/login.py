# -*- test-case-name: tests.test_admin_login -*-
"""
Admin logins: password (bcrypt, in the CPU pool), TOTP once the admin has
it (each code accepted once), and MailGateway's lockout policy from the
system configuration: with C{LOCKED} on, C{LOCK_ERRORS} failures of one
admin name, or from one client IP, lock that name or IP for C{LOCK_TIME}
minutes; a success clears both counts.

Every refusal is the same L{LoginFailed} ("login failed") and takes the
same work: an unknown or disabled admin's password is checked against a
dummy hash, a locked one's password is checked too, so neither the answer
nor its time tells which it was. Counters live in the state store (Redis
when configured, shared by every node), under hashed keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from gomail.admin.store import Admin, get_admin
from gomail.auth.lockout import state_key
from gomail.auth.names import canonical_username
from gomail.auth.passwords import dummy_hash, verify_password
from gomail.auth.totp import accept_step, matching_step
from gomail.state.interface import StateStoreError

LOGIN_FAILED = "login failed"


class LoginFailed(Exception):
    """Any refused login: wrong name, password or code, disabled, locked (the text never says which)."""

    def __init__(self) -> None:
        super().__init__(LOGIN_FAILED)


class LoginUnavailable(Exception):
    """The login cannot be decided now (the state store does not answer): try again later."""


@dataclass(frozen=True)
class LockPolicy:
    """MailGateway's lockout keys: C{LOCKED}, C{LOCK_ERRORS}, C{LOCK_TIME} (minutes)."""

    locked: bool = True
    errors: int = 5
    minutes: int = 30


def _canon(name: str) -> str:
    """The name a lock is kept under: canonical when it has a canonical form."""
    try:
        return canonical_username(name)
    except ValueError:
        return name[:300]


def _credentials(cursor: Any, name: str) -> tuple[Admin | None, bytes | None, str | None]:
    try:
        admin = get_admin(cursor, name)
    except ValueError:  # a name with no canonical form: nobody
        return None, None, None
    if admin is None:
        return None, None, None
    row = cursor.execute("SELECT password_hash, totp_secret FROM admins WHERE name = ?", (admin.name,)).fetchone()
    return admin, bytes(row[0]), row[1]


class AdminLogin:
    """
    Decides admin logins.

    @param db: runs C{fn(cursor, ...)} in the database thread (the user store's C{pool.runInteraction}).
    @param cpu: runs a function in the CPU pool (bcrypt), returning a Deferred.
    @param state: the L{gomail.state.interface.IStateStore}.
    @param policy: returns the current L{LockPolicy} (the system configuration can change it live).
    """

    log = Logger()

    def __init__(self, db: Any, cpu: Any, state: Any, clock: Any, policy: Any, rounds: int = 10) -> None:
        self.db, self.cpu, self.state, self.clock, self.policy = db, cpu, state, clock, policy
        self._dummy = dummy_hash(rounds)

    async def login(self, name: str, password: str, code: str | None, ip: str) -> Admin:
        """
        The admin, when C{password} (and C{code}, once the admin has TOTP) are right and nothing is locked.
        @raise LoginFailed: any refusal.
        @raise LoginUnavailable: the state store does not answer.
        """
        policy: LockPolicy = self.policy()
        name_key, ip_key = state_key("admin:lock:name", _canon(name)), state_key("admin:lock:ip", ip)
        try:
            locked = policy.locked and (await self.state.get(name_key) is not None or
                                        await self.state.get(ip_key) is not None)
        except StateStoreError as e:
            raise LoginUnavailable(str(e)) from e
        admin, hashed, secret = await self.db(_credentials, name)
        usable = admin is not None and admin.enabled and hashed is not None
        right = await self.cpu(verify_password, password, hashed if usable else self._dummy)
        ok = usable and right and not locked
        if ok and admin is not None and admin.totp_enabled:
            ok = await self._code_ok(admin, secret, code)
        if not ok or admin is None:
            await self._failed(policy, name, ip, name_key, ip_key)
            raise LoginFailed()
        try:
            await self.state.delete(state_key("admin:fail:name", admin.name), state_key("admin:fail:ip", ip))
        except StateStoreError as e:
            self.log.warn("could not clear an admin's failed logins: {error}", error=str(e))
        return admin

    async def _code_ok(self, admin: Admin, secret: str | None, code: str | None) -> bool:
        if not secret or not code or len(code) != 6 or not code.isdigit():
            return False
        step = matching_step(secret, code, self.clock.seconds())
        if step is None:
            return False
        try:
            return bool(await accept_step(self.state, f"admin:{admin.name}", step))  # each code once
        except StateStoreError as e:
            raise LoginUnavailable(str(e)) from e

    async def _failed(self, policy: LockPolicy, name: str, ip: str, name_key: str, ip_key: str) -> None:
        if not policy.locked:
            return
        ttl = policy.minutes * 60
        try:
            for fail_key, lock_key, what in ((state_key("admin:fail:name", _canon(name)), name_key, "name"),
                                             (state_key("admin:fail:ip", ip), ip_key, "client IP")):
                if await self.state.incr(fail_key, ttl) >= policy.errors and await self.state.add(lock_key, b"1", ttl):
                    self.log.warn("admin login locked for {minutes} min by {what} after {errors} failures "
                                  "(client {ip})", minutes=policy.minutes, what=what, errors=policy.errors, ip=ip)
        except StateStoreError as e:
            self.log.warn("could not count a failed admin login: {error}", error=str(e))

    async def unlock(self, name: str | None = None, ip: str | None = None) -> None:
        """Clear the lock and count of an admin name or a client IP."""
        keys = []
        if name is not None:
            keys += [state_key("admin:lock:name", _canon(name)), state_key("admin:fail:name", _canon(name))]
        if ip is not None:
            keys += [state_key("admin:lock:ip", ip), state_key("admin:fail:ip", ip)]
        if keys:
            await self.state.delete(*keys)
