# -*- test-case-name: tests.test_userdb -*-
"""
The user database: the functions that read and change its rows (its schema,
migrations and connections are in L{gomail.auth.dbfile}, re-exported here).

Every function takes a DB-API cursor first and runs synchronously, so the
server and the C{gomail user} command share one code path: the server runs
them in its database thread with C{ConnectionPool.runInteraction(fn, ...)}
(L{gomail.auth.users.SQLiteUserStore}), the command directly with
L{transact} on a connection from L{open_connection}.

User names are canonicalised here by every function (callers cannot get it
wrong), networks with C{ipaddress.ip_network(strict=False)}.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
import unicodedata
from collections.abc import Iterable
from typing import Any

from gomail.auth.dbfile import (
    MIGRATIONS,
    SCHEMA_VERSION,
    UserDBError,
    connection_setup,
    ensure_database_file,
    migrate,
    open_connection,
    transact,
)
from gomail.auth.names import canonical_sender, canonical_username
from gomail.auth.records import AppPassword, BlacklistEntry, UserRecord

#: The longest app password label accepted.
MAX_LABEL_LENGTH = 64


_USER_COLUMNS = ("u.name, u.password_hash, u.enabled, u.totp_secret, u.totp_enabled, u.allowed_senders, "
                 "u.backend, u.credential_version, u.created, u.updated, "
                 "a.id, a.label, a.digest, a.created, a.last_used")
_USERS_WITH_APPS = (f"SELECT {_USER_COLUMNS} FROM users u LEFT JOIN app_passwords a ON a.user = u.name")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class UserExists(UserDBError):
    """A user of that (canonical) name exists already."""


class NoSuchUser(UserDBError):
    """No user of that (canonical) name."""


class NoSuchAppPassword(UserDBError):
    """The user has no app password with that label."""


class AppPasswordExists(UserDBError):
    """The user has an app password with that label already."""


# -- users --------------------------------------------------------------------------


def _records(rows: Iterable[tuple]) -> list[UserRecord]:
    users: dict[str, tuple[tuple, list[AppPassword]]] = {}
    for row in rows:
        _, apps = users.setdefault(row[0], (row[:10], []))
        if row[10] is not None:
            apps.append(AppPassword(id=row[10], label=row[11], digest=row[12], created=row[13],
                                    last_used=row[14]))
    return [
        UserRecord(name=name, password_hash=bytes(password_hash), enabled=bool(enabled),
                   totp_secret=totp_secret, totp_enabled=bool(totp_enabled),
                   allowed_senders=tuple(json.loads(senders)), backend=backend,
                   credential_version=version, created=created, updated=updated,
                   app_passwords=tuple(apps))
        for (name, password_hash, enabled, totp_secret, totp_enabled, senders, backend, version, created,
             updated), apps in users.values()
    ]


def get_user(cursor: Any, name: str) -> UserRecord | None:
    """The user (with its app passwords), or None. One statement, so one consistent snapshot."""
    cursor.execute(f"{_USERS_WITH_APPS} WHERE u.name = ? ORDER BY a.label", (canonical_username(name),))
    records = _records(cursor.fetchall())
    return records[0] if records else None


def data_version(cursor: Any) -> int:
    """SQLite's C{PRAGMA data_version}: changes when another connection commits to the database."""
    cursor.execute("PRAGMA data_version")
    return int(cursor.fetchone()[0])


def list_users(cursor: Any) -> list[UserRecord]:
    """Every user, by name."""
    cursor.execute(f"{_USERS_WITH_APPS} ORDER BY u.name, a.label")
    return _records(cursor.fetchall())


def _senders(senders: Iterable[str]) -> str:
    if isinstance(senders, str):
        raise TypeError("allowed senders must be a sequence of addresses, not one string")
    canonical = dict.fromkeys(canonical_sender(sender) for sender in senders)  # ordered, no duplicates
    return json.dumps(list(canonical))


def add_user(cursor: Any, name: str, password_hash: bytes, now: float, allowed_senders: Iterable[str] = ()) -> str:
    """
    Add an enabled user without TOTP; returns its canonical name.

    @raise UserExists: the canonical name is taken.
    @raise ValueError: a bad name or sender entry.
    """
    name = canonical_username(name)
    senders = _senders(allowed_senders)
    try:
        cursor.execute("INSERT INTO users (name, password_hash, allowed_senders, created, updated) "
                       "VALUES (?, ?, ?, ?, ?)", (name, bytes(password_hash), senders, now, now))
    except sqlite3.IntegrityError:
        raise UserExists(f"user {name} already exists") from None
    return name


def _update(cursor: Any, name: str, assignments: list[str], values: tuple, now: float | None,
            bump: bool) -> str:
    name = canonical_username(name)
    if bump:
        assignments = [*assignments, "credential_version = credential_version + 1"]
    if now is not None:
        assignments, values = [*assignments, "updated = ?"], (*values, now)
    cursor.execute(f"UPDATE users SET {', '.join(assignments)} WHERE name = ?", (*values, name))
    if cursor.rowcount == 0:
        raise NoSuchUser(f"no user {name}")
    return name


def set_password(cursor: Any, name: str, password_hash: bytes, now: float) -> None:
    """Replace the user's password hash (ends cached logins). @raise NoSuchUser:"""
    _update(cursor, name, ["password_hash = ?"], (bytes(password_hash),), now, bump=True)


def upgrade_password_hash(cursor: Any, name: str, old_hash: bytes, new_hash: bytes) -> bool:
    """
    Replace the user's password hash C{old_hash} by C{new_hash}, a hash of the
    same password at another bcrypt cost, unless it has changed meanwhile
    (an operator's C{gomail user passwd} always wins). Cached logins stay
    valid: the password is the same. Returns whether the hash was replaced.
    """
    cursor.execute("UPDATE users SET password_hash = ? WHERE name = ? AND password_hash = ?",
                   (bytes(new_hash), canonical_username(name), bytes(old_hash)))
    return cursor.rowcount > 0


def set_enabled(cursor: Any, name: str, enabled: bool, now: float) -> None:
    """Enable or disable the user (ends cached logins). @raise NoSuchUser:"""
    _update(cursor, name, ["enabled = ?"], (int(bool(enabled)),), now, bump=True)


def delete_user(cursor: Any, name: str) -> None:
    """Delete the user and its app passwords. @raise NoSuchUser:"""
    name = canonical_username(name)
    cursor.execute("DELETE FROM users WHERE name = ?", (name,))
    if cursor.rowcount == 0:
        raise NoSuchUser(f"no user {name}")


def set_totp(cursor: Any, name: str, secret: str | None, enabled: bool, now: float) -> None:
    """Set the TOTP secret and whether it is required (ends cached logins). @raise NoSuchUser:"""
    if enabled and not secret:
        raise ValueError("TOTP cannot be enabled without a secret")
    _update(cursor, name, ["totp_secret = ?", "totp_enabled = ?"], (secret, int(bool(enabled))), now, bump=True)


def set_allowed_senders(cursor: Any, name: str, senders: Iterable[str], now: float) -> None:
    """Replace the user's allowed sender entries (not a credential: no version bump). @raise NoSuchUser:"""
    _update(cursor, name, ["allowed_senders = ?"], (_senders(senders),), now, bump=False)


def set_backend(cursor: Any, name: str, backend: str | None, now: float) -> None:
    """Assign the user a backend (C{host:port}) or none. @raise NoSuchUser:"""
    if backend is not None:
        backend = backend.strip()
        if not backend or any(c.isspace() or unicodedata.category(c)[0] == "C" for c in backend):
            raise ValueError(f"bad backend {backend!r}")
    _update(cursor, name, ["backend = ?"], (backend,), now, bump=False)


# -- app passwords ------------------------------------------------------------------


def _label(label: str) -> str:
    label = label.strip()
    if not label:
        raise ValueError("the app password label is empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(f"the app password label is longer than {MAX_LABEL_LENGTH} characters")
    if any(unicodedata.category(c)[0] == "C" for c in label):
        raise ValueError("the app password label contains a control character")
    return label


def add_app_password(cursor: Any, name: str, label: str, digest: str, now: float) -> int:
    """
    Store an app password (its L{gomail.auth.passwords.app_password_digest});
    returns its id.

    @raise NoSuchUser:
    @raise AppPasswordExists: the user has one with this label.
    """
    name, label = canonical_username(name), _label(label)
    if not _DIGEST.fullmatch(digest):
        raise ValueError("an app password digest is 64 lowercase hex digits")
    try:
        cursor.execute("INSERT INTO app_passwords (user, label, digest, created) VALUES (?, ?, ?, ?)",
                       (name, label, digest, now))
    except sqlite3.IntegrityError as e:
        if "FOREIGN KEY" in str(e):
            raise NoSuchUser(f"no user {name}") from None
        raise AppPasswordExists(f"user {name} already has an app password labelled {label!r}") from None
    return cursor.lastrowid


def revoke_app_password(cursor: Any, name: str, label: str, now: float | None = None) -> None:
    """
    Delete the user's app password C{label} and bump the credential version, so
    cached logins end; C{now}, when given, stamps the user as updated.

    @raise NoSuchUser:
    @raise NoSuchAppPassword:
    """
    name, label = canonical_username(name), label.strip()
    cursor.execute("DELETE FROM app_passwords WHERE user = ? AND label = ?", (name, label))
    if cursor.rowcount == 0:
        cursor.execute("SELECT 1 FROM users WHERE name = ?", (name,))
        if cursor.fetchone() is None:
            raise NoSuchUser(f"no user {name}")
        raise NoSuchAppPassword(f"user {name} has no app password labelled {label!r}")
    _update(cursor, name, [], (), now, bump=True)


def touch_app_password(cursor: Any, app_id: int, now: float) -> None:
    """Record that app password C{app_id} was just used (nothing happens if it was revoked meanwhile)."""
    cursor.execute("UPDATE app_passwords SET last_used = ? WHERE id = ?", (now, app_id))


# -- blacklist ----------------------------------------------------------------------


def canonical_network(network: str) -> str:
    """C{192.0.2.7/24} -> C{192.0.2.0/24}, C{2001:DB8::1} -> C{2001:db8::1/128}. @raise ValueError:"""
    if not isinstance(network, str):
        raise ValueError("a network must be text such as 192.0.2.0/24")  # noqa: TRY004 - callers catch ValueError
    try:
        return str(ipaddress.ip_network(network.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{network!r} is not an IP address or network (such as 192.0.2.0/24)") from None


def add_blacklist(cursor: Any, network: str, expires: float | None, reason: str, now: float) -> str:
    """
    Blacklist C{network} until C{expires} (epoch seconds; None: for good),
    replacing any entry for the same network; returns the canonical network.
    """
    network = canonical_network(network)
    cursor.execute("INSERT INTO blacklist (network, expires, reason, created) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (network) DO UPDATE SET expires = excluded.expires, reason = excluded.reason, "
                   "created = excluded.created", (network, expires, reason or "", now))
    return network


def remove_blacklist(cursor: Any, network: str) -> bool:
    """Remove the entry for C{network}; whether there was one (expired or not)."""
    cursor.execute("DELETE FROM blacklist WHERE network = ?", (canonical_network(network),))
    return cursor.rowcount > 0


def list_blacklist(cursor: Any, now: float) -> list[BlacklistEntry]:
    """The entries not expired at C{now}, by network."""
    cursor.execute("SELECT network, expires, reason, created FROM blacklist "
                   "WHERE expires IS NULL OR expires > ? ORDER BY network", (now,))
    return [BlacklistEntry(network, expires, reason, created) for network, expires, reason, created
            in cursor.fetchall()]


def purge_blacklist(cursor: Any, now: float) -> int:
    """Delete the entries expired at C{now}; returns how many."""
    cursor.execute("DELETE FROM blacklist WHERE expires IS NOT NULL AND expires <= ?", (now,))
    return cursor.rowcount


# -- meta ---------------------------------------------------------------------------


def get_meta(cursor: Any, key: str) -> Any:
    """The value stored under C{key} (text or bytes), or None."""
    cursor.execute("SELECT value FROM meta WHERE key = ?", (key,))
    row = cursor.fetchone()
    return None if row is None else row[0]


def set_meta(cursor: Any, key: str, value: str | bytes) -> None:
    """Store C{value} under C{key}, replacing any value."""
    cursor.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                   "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AppPasswordExists",
    "NoSuchAppPassword",
    "NoSuchUser",
    "UserDBError",
    "UserExists",
    "add_app_password",
    "add_blacklist",
    "add_user",
    "canonical_network",
    "connection_setup",
    "delete_user",
    "ensure_database_file",
    "get_meta",
    "get_user",
    "list_blacklist",
    "list_users",
    "migrate",
    "open_connection",
    "purge_blacklist",
    "remove_blacklist",
    "revoke_app_password",
    "set_allowed_senders",
    "set_backend",
    "set_enabled",
    "set_meta",
    "set_password",
    "set_totp",
    "touch_app_password",
    "transact",
    "upgrade_password_hash",
]
