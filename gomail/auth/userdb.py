"""
The user database: SQLite schema, migrations and the functions that read and
change it.

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
import os
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from gomail.auth.names import canonical_sender, canonical_username
from gomail.auth.records import AppPassword, BlacklistEntry, UserRecord

T = TypeVar("T")

#: The longest app password label accepted.
MAX_LABEL_LENGTH = 64

# Each step brings the schema from version N to N + 1 (PRAGMA user_version).
# Never edit a released step: append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY NOT NULL,
            password_hash BLOB NOT NULL,
            enabled INTEGER NOT NULL DEFAULT 1,
            totp_secret TEXT,
            totp_enabled INTEGER NOT NULL DEFAULT 0,
            allowed_senders TEXT NOT NULL DEFAULT '[]',
            backend TEXT,
            credential_version INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
        # AUTOINCREMENT: the id of a revoked app password is never reused, so a
        # late touch_app_password for it cannot stamp a newer one.
        """CREATE TABLE app_passwords (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            label TEXT NOT NULL,
            digest TEXT NOT NULL,
            created REAL NOT NULL,
            last_used REAL,
            UNIQUE (user, label)
        )""",
        """CREATE TABLE blacklist (
            network TEXT PRIMARY KEY NOT NULL,
            expires REAL,
            reason TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        )""",
        "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value)",
    ),
    (
        # Every login attempt through nginx auth_http (gomail.auth.authlog).
        """CREATE TABLE auth_log (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            user TEXT NOT NULL,
            protocol TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            result TEXT NOT NULL,
            reason TEXT NOT NULL,
            latency_ms REAL NOT NULL,
            backend TEXT
        )""",
        "CREATE INDEX auth_log_time ON auth_log (time)",
        "CREATE INDEX auth_log_user_time ON auth_log (user, time)",
    ),
    (
        # Aliases and per-domain catch-alls ("@example.com"): gomail.auth.aliases.
        """CREATE TABLE aliases (
            address TEXT PRIMARY KEY NOT NULL,
            targets TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)

_USER_COLUMNS = ("u.name, u.password_hash, u.enabled, u.totp_secret, u.totp_enabled, u.allowed_senders, "
                 "u.backend, u.credential_version, u.created, u.updated, "
                 "a.id, a.label, a.digest, a.created, a.last_used")
_USERS_WITH_APPS = (f"SELECT {_USER_COLUMNS} FROM users u LEFT JOIN app_passwords a ON a.user = u.name")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class UserDBError(Exception):
    """A change the user database refuses; the text is for the operator."""


class UserExists(UserDBError):
    """A user of that (canonical) name exists already."""


class NoSuchUser(UserDBError):
    """No user of that (canonical) name."""


class NoSuchAppPassword(UserDBError):
    """The user has no app password with that label."""


class AppPasswordExists(UserDBError):
    """The user has an app password with that label already."""


# -- connections --------------------------------------------------------------------


def ensure_database_file(path: str) -> None:
    """
    Create the database's directory (mode 0700) and an empty database file
    (mode 0600) unless they exist, so SQLite never creates the file with the
    process umask: it holds password hashes and TOTP secrets. SQLite gives its
    -wal and -shm files the database file's mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def connection_setup(conn: sqlite3.Connection) -> None:
    """
    Per-connection settings, for the CLI's connection and as the server pool's
    C{cp_openfun}: wait up to 5 s for another process's write lock, WAL (readers
    never block the writer), and enforce foreign keys (off by default in SQLite).
    """
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA foreign_keys = ON")


def open_connection(path: str) -> sqlite3.Connection:
    """A connection for the C{gomail} command (file created 0600 if new); see L{transact}."""
    ensure_database_file(path)
    conn = sqlite3.connect(path)
    try:
        connection_setup(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def transact(conn: sqlite3.Connection, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """
    Run C{fn(cursor, *args, **kwargs)} in one transaction, as
    C{ConnectionPool.runInteraction} does: commit if it returns, roll back if it raises.
    """
    cursor = conn.cursor()
    try:
        result = fn(cursor, *args, **kwargs)
        conn.commit()
        return result
    except BaseException:
        conn.rollback()
        raise
    finally:
        cursor.close()


def migrate(cursor: Any) -> int:
    """
    Bring the schema up to L{SCHEMA_VERSION} (creating it in an empty database)
    in one write transaction, so a server and a C{gomail} command starting at
    the same time do not both apply a step. Returns the schema version.

    @raise UserDBError: the database was made by a newer gomail.
    """
    if not cursor.connection.in_transaction:
        cursor.execute("BEGIN IMMEDIATE")  # take the write lock before reading the version
    cursor.execute("PRAGMA user_version")
    version = cursor.fetchone()[0]
    if version > SCHEMA_VERSION:
        raise UserDBError(f"the user database has schema version {version}, newer than this gomail "
                          f"understands ({SCHEMA_VERSION})")
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        for statement in statements:
            cursor.execute(statement)
        cursor.execute(f"PRAGMA user_version = {number:d}")
    return SCHEMA_VERSION


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
        raise ValueError("a network must be text such as 192.0.2.0/24")
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
    "SCHEMA_VERSION", "MIGRATIONS", "UserDBError", "UserExists", "NoSuchUser", "NoSuchAppPassword",
    "AppPasswordExists", "ensure_database_file", "connection_setup", "open_connection", "transact", "migrate",
    "get_user", "list_users", "add_user", "set_password", "set_enabled", "delete_user", "set_totp",
    "set_allowed_senders", "set_backend", "add_app_password", "revoke_app_password", "touch_app_password",
    "canonical_network", "add_blacklist", "remove_blacklist", "list_blacklist", "purge_blacklist",
    "get_meta", "set_meta",
]
