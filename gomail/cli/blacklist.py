# -*- test-case-name: tests.test_cli_user -*-
"""
The C{gomail blacklist} operator command: client networks whose logins are
refused before any credential is checked, kept in the user database.

Like C{gomail user}, it changes the database directly, so it works whether
or not a server runs; a running server applies a change within
C{auth.blacklistRefresh} seconds. Only C{blacklist add} creates a database
that does not exist yet. Every change is recorded in the operation log
(L{gomail.cli.changes}) in the same transaction.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gomail.auth import userdb
from gomail.cli.changes import blacklist_state, logged
from gomail.cli.common import action_group, iso_time, plural, run_with_database, table
from gomail.configload import Config

#: The top-level commands this module adds to C{gomail}.
COMMANDS = ("blacklist",)

_HELP = """\
Logins from a blacklisted client network are refused before any credential is
checked. A running server applies changes within auth.blacklistRefresh seconds.

exit status: 0 ok, 1 error (bad network, no such entry, no database), 2 usage
"""

_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(text: str) -> int:
    """C{3600}, C{90m}, C{12h}, C{7d} or C{2w} as seconds (argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 3600, 90m, 12h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def add_commands(commands: Any) -> None:
    """Add C{blacklist add|remove|list} to the subcommands of the C{gomail} parser."""
    action = action_group(commands, "blacklist", "refuse logins from client networks", _HELP)
    add = action("add", "blacklist an address or network (replaces its entry)")
    add.add_argument("network", help="192.0.2.7, 192.0.2.0/24 or 2001:db8::/32")
    add.add_argument("--expires", type=duration, metavar="SECONDS",
                     help="remove the entry after this long (3600, 90m, 12h, 7d; default: never)")
    add.add_argument("--reason", default="", help="a note for the list")
    action("remove", "remove an entry").add_argument("network")
    action("list", "list the entries in force")


def run(args: argparse.Namespace, clock: IReactorTime) -> int:
    """Run one C{blacklist} command; errors become one line on stderr and status 1 (usage: 2)."""
    handler = getattr(args, "handler", None)
    if handler is None:
        args.help_parser.print_help()
        return 2

    def work(config: Config, conn: sqlite3.Connection) -> int:
        return _HANDLERS[handler](args, conn, clock.seconds())

    return run_with_database(args, handler == "add", work)


def _add(args: argparse.Namespace, conn: sqlite3.Connection, now: float) -> int:
    expires = None if args.expires is None else now + args.expires
    userdb.transact(conn, userdb.purge_blacklist, now)
    network = userdb.canonical_network(args.network)
    logged(conn, now, "blacklist.add", network, userdb.add_blacklist, network, expires, args.reason, now,
           state=blacklist_state(network))
    until = "for good" if expires is None else f"until {iso_time(expires)}"
    print(f"blacklisted {network} {until}")
    return 0


def _remove(args: argparse.Namespace, conn: sqlite3.Connection, now: float) -> int:
    network = userdb.canonical_network(args.network)
    logged(conn, now, "blacklist.remove", network, _removed, network, state=blacklist_state(network))
    print(f"removed {network} from the blacklist")
    return 0


def _removed(cursor: Any, network: str) -> None:
    if not userdb.remove_blacklist(cursor, network):
        raise userdb.UserDBError(f"{network} is not blacklisted")  # and nothing is logged


def _list(args: argparse.Namespace, conn: sqlite3.Connection, now: float) -> int:
    entries = userdb.transact(conn, userdb.list_blacklist, now)
    rows = [(e.network, iso_time(e.expires) or "never", e.reason or "-") for e in entries]
    table(("NETWORK", "EXPIRES", "REASON"), rows, sys.stdout)
    print(plural(len(entries), "entry", "entries"))
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace, sqlite3.Connection, float], int]] = {
    "add": _add, "remove": _remove, "list": _list,
}


__all__ = ["COMMANDS", "add_commands", "duration", "run"]
