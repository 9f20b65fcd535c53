# -*- test-case-name: tests.test_userdb -*-
"""
The user database's file: its schema (migrations) and connections.

The server opens it through a C{ConnectionPool} with L{connection_setup} as
C{cp_openfun}; the C{gomail} command with L{open_connection} and runs each
change in one transaction with L{transact}. The functions that read and change
the rows are in L{gomail.auth.userdb}.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from gomail.auth import authrollup

T = TypeVar("T")


class UserDBError(Exception):
    """A change (or a database) the user database refuses; the text is for the operator."""


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
    (
        # The admin side's accounts (gomail.admin.store): not mail users, their own passwords and TOTP.
        """CREATE TABLE admins (
            name TEXT PRIMARY KEY NOT NULL,
            password_hash BLOB NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('superadmin', 'admin', 'auditor')),
            enabled INTEGER NOT NULL DEFAULT 1,
            totp_secret TEXT,
            totp_enabled INTEGER NOT NULL DEFAULT 0,
            credential_version INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )""",
    ),
    (
        # Admin sessions (gomail.admin.sessions): only SHA-256 digests of the tokens are stored.
        """CREATE TABLE admin_sessions (
            token_hash TEXT PRIMARY KEY NOT NULL,
            refresh_hash TEXT NOT NULL UNIQUE,
            csrf_token TEXT NOT NULL,
            admin TEXT NOT NULL REFERENCES admins(name) ON DELETE CASCADE,
            credential_version INTEGER NOT NULL,
            kind TEXT NOT NULL,
            client_ip TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            refresh_expires REAL NOT NULL
        )""",
        "CREATE INDEX admin_sessions_admin ON admin_sessions (admin)",
        "CREATE INDEX admin_sessions_refresh_expires ON admin_sessions (refresh_expires)",
        # Every change made through the admin API or the command line (gomail.admin.oplog).
        """CREATE TABLE op_log (
            id INTEGER PRIMARY KEY,
            time REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            before TEXT,
            after TEXT,
            client_ip TEXT NOT NULL
        )""",
        "CREATE INDEX op_log_time ON op_log (time)",
        # Settings changed live through the admin API (gomail.admin.sysconfig), as JSON values.
        """CREATE TABLE system_config (
            key TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL,
            updated REAL NOT NULL,
            actor TEXT NOT NULL
        )""",
        # The login audit log by IP (the admin API's log search).
        "CREATE INDEX auth_log_ip_time ON auth_log (client_ip, time)",
        # The admin API's log filters (gomail.admin.api_logs): each answers from its own index.
        "CREATE INDEX auth_log_result_time ON auth_log (result, time)",
        "CREATE INDEX auth_log_protocol_time ON auth_log (protocol, time)",
        "CREATE INDEX op_log_actor_time ON op_log (actor, time)",
        "CREATE INDEX op_log_action_time ON op_log (action, time)",
        "CREATE INDEX op_log_target_time ON op_log (target, time)",
        # Rollups of auth_log for the admin dashboard (gomail.auth.authrollup), filled from the
        # entries of the last two days.
        """CREATE TABLE auth_rollup (
            resolution INTEGER NOT NULL,
            start INTEGER NOT NULL,
            bucket INTEGER NOT NULL,
            attempts INTEGER NOT NULL,
            successes INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            PRIMARY KEY (resolution, start, bucket)
        ) WITHOUT ROWID""",
        """CREATE TABLE auth_failures (
            kind TEXT NOT NULL,
            minute INTEGER NOT NULL,
            key TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (kind, minute, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE auth_failure_totals (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (kind, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX auth_failure_totals_count ON auth_failure_totals (kind, count DESC, key)",
        """CREATE TABLE auth_last_success (
            user TEXT PRIMARY KEY NOT NULL,
            time REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX auth_last_success_time ON auth_last_success (time)",
        *authrollup.BACKFILL,
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)


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


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "UserDBError", "connection_setup", "ensure_database_file",
           "migrate", "open_connection", "transact"]
