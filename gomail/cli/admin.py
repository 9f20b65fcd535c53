# -*- test-case-name: tests.test_admin_store -*-
"""
C{gomail admin add|list|passwd|role|disable|enable|delete|totp}: the admin
accounts of the admin side (L{gomail.admin.store}). There is no default
admin: the first one is made here. The operator at the command line acts
above every role (it holds the database), within the store's rules (the
last enabled superadmin stays). Every change is recorded in the operation
log (L{gomail.cli.changes}) in the same transaction.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from typing import Any

import pyotp
from twisted.internet.interfaces import IReactorTime

from gomail.admin import oplog, store
from gomail.auth import passwords, userdb
from gomail.auth.names import canonical_username
from gomail.cli.changes import admin_state, logged
from gomail.cli.common import common_options, iso_time, run_with_database, table
from gomail.cli.user import TOTP_ISSUER, Command, render_qr
from gomail.configload import Config

COMMANDS = ("admin",)


def add_commands(commands: Any) -> None:
    """Add C{admin} to the subcommands of the C{gomail} parser."""
    common = common_options("user database")
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument("--password-stdin", action="store_true",
                          help="read the password as one line from stdin instead of prompting")
    group = commands.add_parser("admin", help="manage the admin side's accounts and their roles")
    group.set_defaults(help_parser=group)
    actions = group.add_subparsers(metavar="ACTION")

    def action(name: str, help: str, *arguments: str, parents: tuple = ()) -> Any:
        parser = actions.add_parser(name, parents=[common, *parents], help=help)
        parser.set_defaults(handler=name)
        for argument in arguments:
            parser.add_argument(argument)
        return parser

    action("add", "add an admin (prompts for the password)", "name", parents=(password,)).add_argument(
        "--role", choices=store.ROLES, required=True, help="superadmin, admin or auditor")
    action("list", "list admins (never passwords or secrets)")
    action("passwd", "change an admin's password (ends their sessions)", "name", parents=(password,))
    action("role", "change an admin's role (ends their sessions)", "name").add_argument("role", choices=store.ROLES)
    action("disable", "refuse an admin's logins", "name")
    action("enable", "accept a disabled admin's logins again", "name")
    action("delete", "delete an admin", "name")
    action("unlock", "lift the login lock of an admin name (in the configured Redis)", "name")
    action("totp", "require TOTP codes of an admin (enable: prints a QR code) or stop (disable)",
           "name").add_argument("state", choices=("enable", "disable"))


def run(args: argparse.Namespace, clock: IReactorTime, bcrypt_rounds: int | None = None) -> int:
    """Run one C{admin} command; errors are one line on stderr and status 1 (usage: 2)."""
    handler = getattr(args, "handler", None)
    if handler is None:
        args.help_parser.print_help()
        return 2

    def work(config: Config, conn: sqlite3.Connection) -> int:
        rounds = config.auth.bcryptRounds if bcrypt_rounds is None else bcrypt_rounds
        return _HANDLERS[handler](Command(clock, rounds, config), args, conn)

    return run_with_database(args, handler == "add", work)


def _add(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    if userdb.transact(conn, store.get_admin, args.name) is not None:
        raise store.AdminExists(f"admin {args.name} already exists")  # before asking for a password
    hashed = command.new_password_hash(args.password_stdin, store.MIN_ADMIN_PASSWORD)
    name = canonical_username(args.name)
    admin = logged(conn, command.now(), "admin.create", name, store.add_admin, name, hashed, args.role, command.now(),
                   state=admin_state(name))
    print(f"added {admin.role} {admin.name}")
    return 0


def _list(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    admins = userdb.transact(conn, store.list_admins)
    table(("NAME", "ROLE", "ENABLED", "TOTP", "UPDATED"),
          [(a.name, a.role, "yes" if a.enabled else "no", "yes" if a.totp_enabled else "no",
            iso_time(a.updated) or "-") for a in admins], sys.stdout)
    print(f"{len(admins)} admin{'' if len(admins) == 1 else 's'}")
    return 0


def _passwd(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    admin = userdb.transact(conn, store.get_admin, args.name)
    if admin is None:
        raise store.NoSuchAdmin(f"no admin {args.name}")
    hashed = command.new_password_hash(args.password_stdin, store.MIN_ADMIN_PASSWORD)
    logged(conn, command.now(), "admin.password", admin.name, store.set_password, admin.name, hashed, command.now(),
           state=admin_state(admin.name))
    print(f"changed the password of {args.name}")
    return 0


def _role(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    admin = logged(conn, command.now(), "admin.role", name, store.set_role, name, args.role, command.now(),
                   state=admin_state(name))
    print(f"{admin.name} is now {admin.role}")
    return 0


def _enabled(enabled: bool) -> Any:
    def handler(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
        name = canonical_username(args.name)
        logged(conn, command.now(), "admin.enable" if enabled else "admin.disable", name, store.set_enabled, name,
               enabled, command.now(), state=admin_state(name))
        print(f"{'enabled' if enabled else 'disabled'} admin {args.name}")
        return 0
    return handler


def _delete(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "admin.delete", name, store.delete_admin, name, state=admin_state(name))
    print(f"deleted admin {args.name}")
    return 0


def _unlock(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    """
    Lift the lock (and failure count) of an admin name: the way back in when
    someone keeps the only superadmin locked out with wrong passwords.
    """
    from gomail.admin.login import name_lock_keys
    from gomail.state.interface import StateStoreError

    config = command.config
    assert config is not None
    name = canonical_username(args.name)
    if not config.redis.enabled:
        raise store.AdminError("no [redis] is configured: the server keeps admin locks in its own memory, which "
                               "this command cannot reach; they end after LOCK_TIME or when the server restarts")
    from gomail.state.syncredis import SyncRedis

    try:
        with SyncRedis.from_settings(config.redis) as redis:
            removed = redis.delete(list(name_lock_keys(name)))
    except (StateStoreError, ValueError) as e:
        raise store.AdminError(f"cannot use Redis: {e}") from None
    userdb.transact(conn, oplog.record, command.now(), oplog.cli_actor(), "admin.unlock", name, None, None, "")
    print(f"unlocked admin {name}" if removed else f"admin {name} was not locked")
    return 0


def _totp(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    admin = userdb.transact(conn, store.get_admin, args.name)
    if admin is None:
        raise store.NoSuchAdmin(f"no admin {args.name}")
    if args.state == "disable":
        logged(conn, command.now(), "admin.totp.remove", admin.name, store.set_totp, admin.name, None, command.now(),
               state=admin_state(admin.name))
        print(f"TOTP disabled for admin {admin.name}")
        return 0
    if admin.totp_enabled:
        raise store.AdminError(f"TOTP is already enabled for {admin.name}; to enrol a new device, run "
                               f"'gomail admin totp {admin.name} disable' first")
    secret = passwords.new_totp_secret()
    logged(conn, command.now(), "admin.totp.enable", admin.name, store.set_totp, admin.name, secret, command.now(),
           state=admin_state(admin.name))
    uri = pyotp.TOTP(secret).provisioning_uri(name=admin.name, issuer_name=f"{TOTP_ISSUER} admin")
    print(f"TOTP enabled for admin {admin.name}. Scan this QR code with an authenticator app:")
    print()
    sys.stdout.write(render_qr(uri, sys.stdout))
    print()
    print(uri)
    print(f"secret (for manual entry): {secret}")
    return 0


_HANDLERS = {"add": _add, "list": _list, "passwd": _passwd, "role": _role, "disable": _enabled(False),
             "enable": _enabled(True), "delete": _delete, "totp": _totp, "unlock": _unlock}
