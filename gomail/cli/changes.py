# -*- test-case-name: tests.test_admin_admins -*-
"""
The operation log of command-line changes (L{gomail.admin.oplog}): every
state-changing C{gomail user|admin|blacklist|alias} command runs its change
and its log entry in one transaction (L{logged}), recorded as made by
C{cli:<login name>} with no client IP, with the state before and after in
the shapes the admin API shows (never a password hash or a secret).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from gomail.admin import oplog, store
from gomail.auth import aliases, userdb
from gomail.auth.names import canonical_username
from gomail.cli.common import CommandError, open_database
from gomail.configload import Config
from gomail.netaddr import ip_text


def logged(conn: sqlite3.Connection, now: float, action: str, target: str, change: Callable[..., Any], *args: Any,
           state: Callable[[Any], Any] | None = None) -> Any:
    """
    Run C{change(cursor, *args)} and record it as C{action} on C{target}, in
    one transaction (neither happens without the other); C{state(cursor)}
    gives the before and after (None: nothing). Returns what C{change} returns.
    """
    def work(cursor: Any) -> Any:
        before = state(cursor) if state is not None else None
        result = change(cursor, *args)
        after = state(cursor) if state is not None else None
        oplog.record(cursor, now, oplog.cli_actor(), action, target, before, after, "")
        return result

    return userdb.transact(conn, work)


def user_state(name: str) -> Callable[[Any], dict[str, Any] | None]:
    """The state of user C{name} (canonical) as the admin API shows it, or None."""
    def state(cursor: Any) -> dict[str, Any] | None:
        user = userdb.get_user(cursor, name)
        if user is None:
            return None
        return {"name": user.name, "enabled": user.enabled, "totp_enabled": user.totp_enabled,
                "totp_pending": bool(user.totp_secret) and not user.totp_enabled,
                "allowed_senders": list(user.allowed_senders), "backend": user.backend,
                "app_passwords": [{"label": a.label, "created": a.created, "last_used": a.last_used}
                                  for a in user.app_passwords],
                "created": user.created, "updated": user.updated}
    return state


def admin_state(name: str) -> Callable[[Any], dict[str, Any] | None]:
    """The state of admin C{name} as the admin API shows it, or None."""
    def state(cursor: Any) -> dict[str, Any] | None:
        admin = store.get_admin(cursor, name)
        return None if admin is None else admin.as_json()
    return state


def blacklist_state(network: str) -> Callable[[Any], dict[str, Any] | None]:
    """The blacklist entry of C{network} (canonical; expired or not), or None."""
    def state(cursor: Any) -> dict[str, Any] | None:
        row = cursor.execute("SELECT network, reason, expires, created FROM blacklist WHERE network = ?",
                             (network,)).fetchone()
        return None if row is None else {"network": row[0], "reason": row[1], "expires_at": row[2],
                                         "created": row[3]}
    return state


def alias_state(name: str) -> Callable[[Any], dict[str, Any] | None]:
    """The alias or catch-all C{name} (canonical), or None."""
    def state(cursor: Any) -> dict[str, Any] | None:
        alias = aliases.get_alias(cursor, name)
        return None if alias is None else {"alias": alias.address, "catch_all": alias.catch_all,
                                           "targets": list(alias.targets)}
    return state


def log_unlock(args: argparse.Namespace, config: Config, now: float) -> None:
    """Record an unlock in the operation log, when there is a user database to hold it (never made here)."""
    # The locks are in Redis, not in the database: the change is done, this only records it.
    name = canonical_username(args.name)
    address = ip_text(args.ip.strip()) if args.ip is not None else None
    conn = None
    try:
        conn = open_database(args, config, create=False)
        userdb.transact(conn, oplog.record, now, oplog.cli_actor(), "user.unlock", name, None, {"ip": address}, "")
    except CommandError:
        pass  # no database: nothing to record in
    except (OSError, sqlite3.Error, userdb.UserDBError) as e:
        print(f"gomail: warning: the unlock is not in the operation log: {e}", file=sys.stderr)
    finally:
        if conn is not None:
            conn.close()


__all__ = ["admin_state", "alias_state", "blacklist_state", "log_unlock", "logged", "user_state"]
