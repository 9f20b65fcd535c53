# -*- test-case-name: tests.test_admin_logs -*-
"""
The operation log: every change made through the admin API or the command
line, with who made it (an admin's name, or C{cli:<unix user>}), what
(C{user.create}, C{admin.role}, C{blacklist.add}, C{config.set}...), on
what, the state before and after (secrets removed), the client IP and the
time. Functions take a DB-API cursor first.
"""

from __future__ import annotations

import getpass
import json
import sqlite3
from typing import Any

#: Keys whose values never reach the log, at any depth.
SECRET_KEYS = frozenset({"password", "password_hash", "new_password", "current_password", "totp_secret",
                         "secret", "digest", "token", "refresh_token", "csrf_token", "totp_code", "code", "uri",
                         "qr_svg"})


def redact(value: Any) -> Any:
    """C{value} with every secret key's value replaced by C{"[redacted]"}."""
    if isinstance(value, dict):
        return {k: "[redacted]" if k in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(redact(value), sort_keys=True, default=str)


def record(cursor: sqlite3.Cursor, now: float, actor: str, action: str, target: str, before: Any = None,
           after: Any = None, client_ip: str = "") -> None:
    """Write one entry (C{before}/C{after}: JSON-able, redacted here)."""
    cursor.execute("INSERT INTO op_log (time, actor, action, target, before, after, client_ip) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (now, actor, action, target, _text(before), _text(after),
                                                    client_ip))


def cli_actor() -> str:
    """Who a command-line change is recorded as: C{cli:<login name>}."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
