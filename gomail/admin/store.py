# -*- test-case-name: tests.test_admin_store -*-
"""
Admin accounts (issue 20): stored in the user database's C{admins} table,
with bcrypt passwords and their own TOTP, and one of three roles:

- C{superadmin}: everything, admins included;
- C{admin}: users, app passwords, TOTP, blacklist, queue, configuration;
- C{auditor}: read only (dashboard, logs, queue list).

There is no default admin, ever: the first is made with C{gomail admin add}.
The rules every change keeps, wherever it comes from (the command line, the
API): no admin acts on an admin of a higher role or raises anyone above their
own role, and the last enabled superadmin cannot be demoted, disabled or
deleted. Functions take a DB-API cursor first, as L{gomail.auth.userdb}'s.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from gomail.auth.dbfile import UserDBError
from gomail.auth.names import canonical_username

#: The shortest admin password accepted (API and command line): an admin's password guards every user's.
MIN_ADMIN_PASSWORD = 10
#: Roles, highest first.
ROLES = ("superadmin", "admin", "auditor")


class AdminError(UserDBError):
    """An admin change that is not allowed or not possible (the text says why)."""


class NoSuchAdmin(AdminError):
    """No admin of that name."""


class AdminExists(AdminError):
    """An admin of that name exists already."""


class RankViolation(AdminError):
    """The acting admin would act above their role (on a higher admin, or raising a role)."""


class LastSuperadmin(AdminError):
    """The change would leave no enabled superadmin."""


@dataclass(frozen=True)
class Admin:
    """One admin as stored (the password hash and TOTP secret never leave gomail.admin)."""

    name: str
    role: str
    enabled: bool
    totp_enabled: bool
    credential_version: int
    created: float
    updated: float

    def as_json(self) -> dict[str, object]:
        """What the admin API and the operation log show of an admin (no secret, no version)."""
        return {"name": self.name, "role": self.role, "enabled": self.enabled, "totp_enabled": self.totp_enabled,
                "created": self.created, "updated": self.updated}


def rank(role: str) -> int:
    """Higher is more: superadmin 3, admin 2, auditor 1."""
    return len(ROLES) - ROLES.index(role)


def check_role(role: str) -> str:
    """C{role}, or AdminError naming the roles there are."""
    if role not in ROLES:
        raise AdminError(f"no role {role!r}: {', '.join(ROLES)}")
    return role


def get_admin(cursor: sqlite3.Cursor, name: str) -> Admin | None:
    """The admin called C{name} (canonical form), or None."""
    row = cursor.execute("SELECT name, role, enabled, totp_enabled, credential_version, created, updated "
                         "FROM admins WHERE name = ?", (canonical_username(name),)).fetchone()
    return None if row is None else Admin(row[0], row[1], bool(row[2]), bool(row[3]), row[4], row[5], row[6])


def list_admins(cursor: sqlite3.Cursor) -> list[Admin]:
    """Every admin, by name."""
    rows = cursor.execute("SELECT name, role, enabled, totp_enabled, credential_version, created, updated "
                          "FROM admins ORDER BY name").fetchall()
    return [Admin(r[0], r[1], bool(r[2]), bool(r[3]), r[4], r[5], r[6]) for r in rows]


def add_admin(cursor: sqlite3.Cursor, name: str, password_hash: bytes, role: str, now: float,
              actor: Admin | None = None) -> Admin:
    """A new admin; C{actor} (None: the operator at the command line) may not create above their own role."""
    name = canonical_username(name)
    check_role(role)
    if actor is not None and rank(role) > rank(actor.role):
        raise RankViolation(f"{actor.name} ({actor.role}) cannot create a {role}")
    if get_admin(cursor, name) is not None:
        raise AdminExists(f"admin {name} already exists")
    cursor.execute("INSERT INTO admins (name, password_hash, role, created, updated) VALUES (?, ?, ?, ?, ?)",
                   (name, password_hash, role, now, now))
    admin = get_admin(cursor, name)
    assert admin is not None
    return admin


def _target(cursor: sqlite3.Cursor, name: str, actor: Admin | None) -> Admin:
    admin = get_admin(cursor, name)
    if admin is None:
        raise NoSuchAdmin(f"no admin {canonical_username(name)}")
    if actor is not None and actor.name != admin.name and rank(admin.role) > rank(actor.role):
        raise RankViolation(f"{actor.name} ({actor.role}) cannot change {admin.name} ({admin.role})")
    return admin


def _write_lock(cursor: sqlite3.Cursor) -> None:
    """
    Take the database's write lock before reading what a change depends on:
    SQLite's implicit transaction starts only at the first write, so the
    command line and the server could each count "another superadmin" and
    both remove theirs.
    """
    if not cursor.connection.in_transaction:
        cursor.execute("BEGIN IMMEDIATE")


def _keeps_a_superadmin(cursor: sqlite3.Cursor, admin: Admin) -> None:
    if admin.role != "superadmin" or not admin.enabled:
        return
    others = cursor.execute("SELECT COUNT(*) FROM admins WHERE role = 'superadmin' AND enabled = 1 AND name != ?",
                            (admin.name,)).fetchone()[0]
    if not others:
        raise LastSuperadmin(f"{admin.name} is the last enabled superadmin: add another first")


def set_role(cursor: sqlite3.Cursor, name: str, role: str, now: float, actor: Admin | None = None) -> Admin:
    """Change an admin's role (revokes their sessions: the credential version moves)."""
    _write_lock(cursor)
    check_role(role)
    admin = _target(cursor, name, actor)
    if actor is not None and rank(role) > rank(actor.role):
        raise RankViolation(f"{actor.name} ({actor.role}) cannot make anyone a {role}")
    if actor is not None and actor.name == admin.name and rank(role) > rank(admin.role):
        raise RankViolation("no admin can raise their own role")
    if role != "superadmin":
        _keeps_a_superadmin(cursor, admin)
    cursor.execute("UPDATE admins SET role = ?, credential_version = credential_version + 1, updated = ? "
                   "WHERE name = ?", (role, now, admin.name))
    return get_admin(cursor, admin.name)  # type: ignore[return-value]


def set_password(cursor: sqlite3.Cursor, name: str, password_hash: bytes, now: float,
                 actor: Admin | None = None) -> None:
    """Change an admin's password (revokes their sessions)."""
    admin = _target(cursor, name, actor)
    cursor.execute("UPDATE admins SET password_hash = ?, credential_version = credential_version + 1, "
                   "updated = ? WHERE name = ?", (password_hash, now, admin.name))


def set_enabled(cursor: sqlite3.Cursor, name: str, enabled: bool, now: float, actor: Admin | None = None) -> None:
    """Disable or enable an admin (disabling revokes their sessions)."""
    _write_lock(cursor)
    admin = _target(cursor, name, actor)
    if not enabled:
        _keeps_a_superadmin(cursor, admin)
    cursor.execute("UPDATE admins SET enabled = ?, credential_version = credential_version + 1, updated = ? "
                   "WHERE name = ?", (int(enabled), now, admin.name))


def delete_admin(cursor: sqlite3.Cursor, name: str, actor: Admin | None = None) -> None:
    """Delete an admin."""
    _write_lock(cursor)
    admin = _target(cursor, name, actor)
    _keeps_a_superadmin(cursor, admin)
    cursor.execute("DELETE FROM admins WHERE name = ?", (admin.name,))


def password_hash(cursor: sqlite3.Cursor, name: str) -> bytes | None:
    """An enabled admin's password hash (for the login check), or None."""
    row = cursor.execute("SELECT password_hash FROM admins WHERE name = ? AND enabled = 1",
                         (canonical_username(name),)).fetchone()
    return None if row is None else bytes(row[0])


def set_totp(cursor: sqlite3.Cursor, name: str, secret: str | None, now: float, actor: Admin | None = None) -> None:
    """Give an admin a TOTP secret (required from then on) or take it away (None); ends their sessions."""
    admin = _target(cursor, name, actor)
    cursor.execute("UPDATE admins SET totp_secret = ?, totp_enabled = ?, credential_version = credential_version + 1, "
                   "updated = ? WHERE name = ?", (secret, int(secret is not None), now, admin.name))


def set_totp_secret(cursor: sqlite3.Cursor, name: str, secret: str | None, now: float,
                    actor: Admin | None = None) -> None:
    """
    Store a TOTP secret that is not required yet (an enrolment pending its
    first code; L{set_totp} then requires it), or forget the secret (None).
    Sessions stay: neither makes anyone's session less trustworthy.
    """
    admin = _target(cursor, name, actor)
    cursor.execute("UPDATE admins SET totp_secret = ?, totp_enabled = 0, updated = ? WHERE name = ?",
                   (secret, now, admin.name))


def totp_secret(cursor: sqlite3.Cursor, name: str) -> str | None:
    """An admin's TOTP secret, required or pending (None: none, or no such admin)."""
    row = cursor.execute("SELECT totp_secret FROM admins WHERE name = ?", (canonical_username(name),)).fetchone()
    return None if row is None or not row[0] else str(row[0])
