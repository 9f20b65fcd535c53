# -*- test-case-name: tests.test_cli_alias -*-
"""
The C{gomail alias} operator command: aliases and catch-alls of the local
domains, kept in the user database (L{gomail.auth.aliases}).

Like C{gomail user}, it changes the database directly, so it works whether
or not a server runs; a running server uses a change within
C{auth.userRefresh} seconds (see L{gomail.auth.aliases.AliasStore}). Only
C{alias add} creates a database that does not exist yet. Every change is
recorded in the operation log (L{gomail.cli.changes}) in the same
transaction.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gomail.auth import aliases, userdb
from gomail.cli.changes import alias_state, logged
from gomail.cli.common import action_group, iso_time, plural, run_with_database
from gomail.configload import Config
from gomail.smtp.policy import local_domains
from gomail.smtp.recipients import ROLE_ACCOUNTS

#: The top-level commands this module adds to C{gomail}.
COMMANDS = ("alias",)

_HELP = """\
An alias is an address of a local domain (smtp.localDomains, or the server's
own hostname) that delivers to other addresses: users of a local domain,
other aliases, or addresses elsewhere (forwarded). "@example.com" is the
domain's catch-all: it takes every address of example.com that is neither a
user nor an alias. postmaster@ and abuse@ of every local domain exist
without an alias (smtp.postmaster says where they go); an alias of them
takes precedence. Aliases are expanded when a message is received (at most
8 deep, and within smtp.maxRecipients). A running server uses changes within
auth.userRefresh seconds.

examples:
  gomail alias add info@example.com bob@example.com,carol@example.com
  gomail alias add @example.com bob@example.com      # catch-all of example.com
  gomail alias remove info@example.com carol@example.com
  gomail alias remove info@example.com

exit status: 0 ok, 1 error (bad address, no such alias, no database), 2 usage
"""


def add_commands(commands: Any) -> None:
    """Add C{alias add|list|remove} to the subcommands of the C{gomail} parser."""
    action = action_group(commands, "alias", "manage aliases and catch-alls of the local domains", _HELP)
    add = action("add", "create an alias or catch-all, or add targets to it")
    add.add_argument("alias", help="info@example.com, or @example.com for the domain's catch-all")
    add.add_argument("targets", nargs="+", metavar="TARGET[,TARGET...]", help="addresses to deliver to")
    action("list", "list aliases and catch-alls").add_argument("--json", action="store_true",
                                                               help="print a JSON array")
    remove = action("remove", "remove an alias or catch-all, or only some of its targets")
    remove.add_argument("alias", help="info@example.com or @example.com")
    remove.add_argument("targets", nargs="*", metavar="TARGET[,TARGET...]",
                        help="remove only these targets (the alias goes when none is left)")


def run(args: argparse.Namespace, clock: IReactorTime) -> int:
    """Run one C{alias} command; errors become one line on stderr and status 1 (usage: 2)."""
    handler = getattr(args, "handler", None)
    if handler is None:
        args.help_parser.print_help()
        return 2

    def work(config: Config, conn: sqlite3.Connection) -> int:
        return _HANDLERS[handler](args, conn, config, clock.seconds())

    return run_with_database(args, handler == "add", work)


def _show(alias: aliases.Alias) -> str:
    return f"{alias.address} -> {', '.join(alias.targets)}"


def _add(args: argparse.Namespace, conn: sqlite3.Connection, config: Config, now: float) -> int:
    name = aliases.alias_name(args.alias)
    domain = name.rpartition("@")[2]
    if domain not in local_domains(config.smtp.localDomains, config.smtp.hostname):
        print(f"gomail: warning: {domain} is not a local domain (smtp.localDomains or smtp.hostname): "
              f"the alias has no effect until it is", file=sys.stderr)
    alias = logged(conn, now, "alias.add", name, aliases.add_alias, name, args.targets, now, state=alias_state(name))
    print(("catch-all " if alias.catch_all else "alias ") + _show(alias))
    for target in aliases.alias_targets(args.targets):
        if not _exists(conn, config, target):
            print(f"gomail: warning: {target} is neither a user nor an alias: mail for {name} skips it "
                  f"(refused when no target is left)", file=sys.stderr)
    return 0


def _exists(conn: sqlite3.Connection, config: Config, target: str) -> bool:
    """Whether a target receives mail: any address elsewhere; a user, alias or role account of ours."""
    local, _, domain = target.rpartition("@")
    if domain not in local_domains(config.smtp.localDomains, config.smtp.hostname) \
            or not config.smtp.verifyRecipients or local.lower() in ROLE_ACCOUNTS:
        return True
    key = aliases.mailbox_key(target)
    try:
        if userdb.transact(conn, userdb.get_user, key) is not None:
            return True
    except ValueError:  # no user can have that name
        pass
    return any(userdb.transact(conn, aliases.get_alias, name) is not None for name in (key, "@" + domain))


def _list(args: argparse.Namespace, conn: sqlite3.Connection, config: Config, now: float) -> int:
    entries = userdb.transact(conn, aliases.list_aliases)
    if args.json:
        json.dump([{"alias": a.address, "catch_all": a.catch_all, "targets": list(a.targets),
                    "created": iso_time(a.created), "updated": iso_time(a.updated)}
                   for a in entries], sys.stdout, indent=2)
        print()
        return 0
    for alias in entries:
        print(_show(alias))
    print(plural(len(entries), "alias", "aliases"))
    return 0


def _remove(args: argparse.Namespace, conn: sqlite3.Connection, config: Config, now: float) -> int:
    name = aliases.alias_name(args.alias)
    left = logged(conn, now, "alias.remove", name, aliases.remove_alias, name, args.targets, now,
                  state=alias_state(name))
    print(f"removed {name}" if left is None else f"now {_show(left)}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace, sqlite3.Connection, Config, float], int]] = {
    "add": _add, "list": _list, "remove": _remove,
}


__all__ = ["COMMANDS", "add_commands", "run"]
