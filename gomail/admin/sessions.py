# -*- test-case-name: tests.test_admin_login -*-
"""
Admin sessions: random opaque tokens, stored only as SHA-256 digests, with
an expiry (C{admin.sessionTTL}, 24 h) and a refresh token (C{admin.refreshTTL},
7 days) that is rotated on use: refreshing ends the old pair and makes a new
one, so a stolen refresh token works once at most.

A session ends at logout, at its expiry, and whenever its admin's
credential version moves (a password, role, TOTP or enabled change:
L{gomail.admin.store}); a disabled or deleted admin has no session. The
CSRF token is the cookie session's second half: a page must send it back in
C{X-CSRF-Token} with every state-changing request (L{gomail.admin.routing}).

Functions take a DB-API cursor first, as L{gomail.auth.userdb}'s.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass

from gomail.admin.store import Admin, get_admin

#: How a session was opened: by the web UI (a cookie, CSRF token required) or a script (a bearer token).
KINDS = ("cookie", "bearer")
TOKEN_BYTES = 32


def digest(token: str) -> str:
    """What is stored of a token: its SHA-256, hex (a token is random: no salt or slow hash needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class NewSession:
    """A session just made: the only time its tokens are known in clear."""

    token: str
    refresh_token: str
    csrf_token: str
    expires: float
    refresh_expires: float
    admin: Admin
    kind: str


@dataclass(frozen=True)
class Session:
    """A live session, as a request finds it (the token itself is never kept)."""

    token_hash: str
    admin: Admin
    kind: str
    csrf_token: str
    expires: float
    client_ip: str


def create_session(cursor: sqlite3.Cursor, admin: Admin, kind: str, client_ip: str, now: float,
                   ttl: float, refresh_ttl: float) -> NewSession:
    """Open a session for C{admin} (enabled, as just checked by the login)."""
    if kind not in KINDS:
        raise ValueError(f"no session kind {kind!r}")
    token, refresh, csrf = (secrets.token_urlsafe(TOKEN_BYTES) for _ in range(3))
    expires, refresh_expires = now + ttl, now + max(ttl, refresh_ttl)
    cursor.execute("INSERT INTO admin_sessions (token_hash, refresh_hash, csrf_token, admin, credential_version, "
                   "kind, client_ip, created, expires, refresh_expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (digest(token), digest(refresh), csrf, admin.name, admin.credential_version, kind, client_ip,
                    now, expires, refresh_expires))
    return NewSession(token, refresh, csrf, expires, refresh_expires, admin, kind)


_LIVE = ("SELECT s.token_hash, s.admin, s.kind, s.csrf_token, s.expires, s.client_ip, s.refresh_expires "
         "FROM admin_sessions s JOIN admins a ON a.name = s.admin "
         "WHERE a.enabled = 1 AND a.credential_version = s.credential_version AND ")


def find_session(cursor: sqlite3.Cursor, token: str, now: float) -> Session | None:
    """The live session whose token is C{token}, or None (unknown, expired, or its admin changed)."""
    row = cursor.execute(_LIVE + "s.token_hash = ? AND s.expires > ?", (digest(token), now)).fetchone()
    if row is None:
        return None
    admin = get_admin(cursor, row[1])
    return None if admin is None else Session(row[0], admin, row[2], row[3], row[4], row[5])


def refresh_session(cursor: sqlite3.Cursor, refresh_token: str, client_ip: str, now: float, ttl: float,
                    refresh_ttl: float) -> NewSession | None:
    """
    Trade a live refresh token for a new session of the same admin and kind
    (the old one ends; the refresh token's own expiry does not move: a
    session cannot be kept alive past C{refresh_ttl} from its login by refreshing). None: unknown or expired.
    """
    row = cursor.execute(_LIVE + "s.refresh_hash = ? AND s.refresh_expires > ?",
                         (digest(refresh_token), now)).fetchone()
    if row is None:
        return None
    cursor.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (row[0],))
    admin = get_admin(cursor, row[1])
    if admin is None:
        return None
    session = create_session(cursor, admin, row[2], client_ip, now, ttl, 0)
    # Keep the login's refresh horizon, which the session itself does not outlive either.
    cursor.execute("UPDATE admin_sessions SET refresh_expires = ?, expires = MIN(expires, ?) WHERE token_hash = ?",
                   (row[6], row[6], digest(session.token)))
    return NewSession(session.token, session.refresh_token, session.csrf_token, min(session.expires, row[6]),
                      row[6], admin, row[2])


def end_session(cursor: sqlite3.Cursor, token_hash: str) -> None:
    """End one session (logout)."""
    cursor.execute("DELETE FROM admin_sessions WHERE token_hash = ?", (token_hash,))


def end_sessions_of(cursor: sqlite3.Cursor, name: str) -> int:
    """End every session of admin C{name}; returns how many."""
    cursor.execute("DELETE FROM admin_sessions WHERE admin = ?", (name,))
    return cursor.rowcount


def purge_sessions(cursor: sqlite3.Cursor, now: float) -> int:
    """Delete the sessions whose refresh token has expired too; returns how many."""
    cursor.execute("DELETE FROM admin_sessions WHERE refresh_expires <= ?", (now,))
    return cursor.rowcount
