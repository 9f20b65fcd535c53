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
from gomail.auth.passwords import bcrypt_cost, dummy_hash, hash_password, verify_password
from gomail.auth.totp import accept_step, matching_step
from gomail.state.interface import StateStoreError

LOGIN_FAILED = "login failed"
#: The state store kind of admins' last accepted TOTP steps (mail users' are "totp:last").
ADMIN_TOTP_MARK = "admin:totp:last"


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


def name_lock_keys(name: str) -> tuple[str, str]:
    """The state store keys of an admin name's lock and failure count (C{gomail admin unlock} removes them)."""
    return state_key("admin:lock:name", _canon(name)), state_key("admin:fail:name", _canon(name))


def _canon(name: str) -> str:
    """The name a lock is kept under: canonical when it has a canonical form."""
    try:
        return canonical_username(name)
    except ValueError:
        return name[:300]


def _upgrade_hash(cursor: Any, name: str, old: bytes, new: bytes) -> None:
    # Only if unchanged meanwhile (a password change wins); the password is the same: no session ends.
    cursor.execute("UPDATE admins SET password_hash = ? WHERE name = ? AND password_hash = ?", (new, name, old))


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
        self.rounds = rounds
        self._dummy = dummy_hash(rounds)

    async def login(self, name: str, password: str, code: str | None, ip: str) -> Admin:
        """
        The admin, when C{password} (and C{code}, once the admin has TOTP) are right and nothing is locked.
        @raise LoginFailed: any refusal.
        @raise LoginUnavailable: the state store does not answer.
        """
        policy: LockPolicy = self.policy()
        # Every attempt is counted before its password is checked: attempts
        # sent in parallel all wait for bcrypt, and counting only failures
        # afterwards let every one of them in past LOCK_ERRORS.
        try:
            allowed = await self._count_attempt(policy, name, ip)
        except StateStoreError as e:
            raise LoginUnavailable(str(e)) from e
        admin, hashed, secret = await self.db(_credentials, name)
        usable = admin is not None and admin.enabled and hashed is not None
        right = await self.cpu(verify_password, password, hashed if usable else self._dummy)
        ok = usable and right and allowed
        if ok and admin is not None and admin.totp_enabled:
            ok = await self._code_ok(admin, secret, code)
        if not ok or admin is None:
            await self._failed(policy, name, ip)
            raise LoginFailed()
        try:
            await self.state.delete(*self._fail_keys(name, ip))
        except StateStoreError as e:
            self.log.warn("could not clear an admin's failed logins: {error}", error=str(e))
        if hashed is not None and bcrypt_cost(hashed) != self.rounds:
            # The unknown-name check costs auth.bcryptRounds (the dummy hash): a hash of another cost
            # would make known names take another time. Rehashed with the password just proven.
            new = await self.cpu(hash_password, password, self.rounds)
            await self.db(_upgrade_hash, admin.name, hashed, new)
        return admin

    @staticmethod
    def _lock_keys(name: str, ip: str) -> tuple[str, str]:
        return state_key("admin:lock:name", _canon(name)), state_key("admin:lock:ip", ip)

    @staticmethod
    def _fail_keys(name: str, ip: str) -> tuple[str, str]:
        return state_key("admin:fail:name", _canon(name)), state_key("admin:fail:ip", ip)

    async def _count_attempt(self, policy: LockPolicy, name: str, ip: str) -> bool:
        """Count this attempt for the name and the IP; whether it may succeed (nothing locked, within LOCK_ERRORS)."""
        if not policy.locked:
            return True
        for key in self._lock_keys(name, ip):
            if await self.state.get(key) is not None:
                return False
        ttl = policy.minutes * 60
        counts = [await self.state.incr(key, ttl) for key in self._fail_keys(name, ip)]
        return all(count <= policy.errors for count in counts)

    async def _code_ok(self, admin: Admin, secret: str | None, code: str | None) -> bool:
        if not secret or not code or len(code) != 6 or not (code.isascii() and code.isdigit()):
            return False
        step = matching_step(secret, code, self.clock.seconds())
        if step is None:
            return False
        try:
            # Each code once; marks of their own kind (an admin and a mail user may share a name).
            return bool(await accept_step(self.state, admin.name, step, kind=ADMIN_TOTP_MARK))
        except StateStoreError as e:
            raise LoginUnavailable(str(e)) from e

    async def _failed(self, policy: LockPolicy, name: str, ip: str) -> None:
        """A refused attempt (already counted): lock what reached LOCK_ERRORS."""
        if not policy.locked:
            return
        ttl = policy.minutes * 60
        try:
            for fail_key, lock_key, what in zip(self._fail_keys(name, ip), self._lock_keys(name, ip),
                                                ("name", "client IP"), strict=True):
                failures = int(await self.state.get(fail_key) or 0)
                if failures >= policy.errors and await self.state.add(lock_key, b"1", ttl):
                    self.log.warn("admin login locked for {minutes} min by {what} after {errors} failures "
                                  "(client {ip})", minutes=policy.minutes, what=what, errors=policy.errors, ip=ip)
        except (StateStoreError, ValueError) as e:
            self.log.warn("could not lock after a failed admin login: {error}", error=str(e))

    async def unlock(self, name: str | None = None, ip: str | None = None) -> None:
        """Clear the lock and count of an admin name or a client IP."""
        keys = []
        if name is not None:
            keys += [self._lock_keys(name, "")[0], self._fail_keys(name, "")[0]]
        if ip is not None:
            keys += [self._lock_keys("", ip)[1], self._fail_keys("", ip)[1]]
        if keys:
            await self.state.delete(*keys)
