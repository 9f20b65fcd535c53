# -*- test-case-name: tests.test_cli_user -*-
"""
The C{gomail user} operator command.

It changes the user database directly, through the same functions
(L{gomail.auth.userdb}) the server uses, so it works whether or not a server
is running; a running server sees every change at the next login. Passwords
are read from a prompt or from stdin, never from the command line, and never
printed. Only C{user add} creates a database that does not exist yet (see
L{gomail.cli.common}). Every change is recorded in the operation log
(L{gomail.cli.changes}) in the same transaction.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
from collections.abc import Callable
from getpass import getpass
from typing import Any, TextIO

import pyotp
from twisted.internet.interfaces import IReactorTime

from gomail.auth import passwords, userdb
from gomail.auth.names import canonical_sender, canonical_username
from gomail.cli.changes import log_unlock, logged, user_state
from gomail.cli.common import (
    UsageError,
    common_options,
    iso_time,
    load,
    run_with_database,
    table,
    verbose,
)
from gomail.configload import Config, ConfigError
from gomail.qrimage import qr_code

#: The top-level commands this module adds to C{gomail}.
COMMANDS = ("user",)
TOTP_ISSUER = "gomail"

_USER_HELP = """\
User names are case-insensitive and normalised (NFKC): Alice, alice and
ＡＬＩＣＥ are one user. Passwords are prompted for twice on a terminal, or read
as one line from stdin with --password-stdin; never give them as arguments.
Users with TOTP log in with their password followed by the current 6-digit
code; app passwords work without a code. Run these commands as the user the
server runs as (the database is created readable by its owner only). Only
"user add" creates the database; the others refuse a database that does not
exist (-v says which one is used). unlock works on the locks in the
configured [redis]; without it they live in the server's memory, out of this
command's reach.

exit status: 0 ok, 1 error (unknown user, bad name or password, no database), 2 usage
"""


# -- the command line -----------------------------------------------------------------


def add_commands(commands: Any) -> None:
    """Add C{user} to the subcommands of the C{gomail} parser."""
    common = common_options("user database")
    password = argparse.ArgumentParser(add_help=False)
    password.add_argument("--password-stdin", action="store_true",
                          help="read the password as one line from stdin instead of prompting")

    def parser(parent: Any, command: str, help: str, parents: list[Any]) -> Any:
        return parent.add_parser(command.rsplit(" ", 1)[-1], parents=parents, help=help,
                                 description=help[0].upper() + help[1:] + ".", epilog=_USER_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    def group(parent: Any, command: str, help: str) -> Any:
        group_parser = parser(parent, command, help, [])
        group_parser.set_defaults(help_parser=group_parser)  # printed when no action is given
        return group_parser.add_subparsers(metavar="ACTION")

    def action(parent: Any, command: str, help: str, *arguments: str, parents: tuple = ()) -> Any:
        action_parser = parser(parent, command, help, [common, *parents])
        action_parser.set_defaults(handler=command)  # a key of _HANDLERS
        for argument in arguments:
            action_parser.add_argument(argument)
        return action_parser

    users = group(commands, "user", "manage users, their TOTP and app passwords")
    add = action(users, "user add", "add a user (prompts for the password)", "name", parents=(password,))
    add.add_argument("--sender", action="append", default=[], metavar="ADDR",
                     help="an address (alice@example.com) or domain (@example.com) the user may send "
                          "as; repeat for more")
    action(users, "user passwd", "change a user's password", "name", parents=(password,))
    action(users, "user disable", "refuse a user's logins (keeps the user)", "name")
    action(users, "user enable", "accept a disabled user's logins again", "name")
    action(users, "user delete", "delete a user and its app passwords", "name")
    action(users, "user list", "list users (never passwords or secrets)").add_argument(
        "--json", action="store_true", help="print a JSON array")
    action(users, "user unlock", "lift a user's login lockout and slowdown (in the configured Redis)",
           "name").add_argument("--ip", metavar="IP", help="only the lock on this client IP")

    senders = group(users, "user sender", "set the addresses a user may send as")
    action(senders, "user sender set", "replace a user's allowed sender addresses", "name").add_argument(
        "senders", nargs="+", metavar="ADDR", help="alice@example.com, or @example.com for the whole domain")
    action(senders, "user sender clear", "remove all of a user's allowed sender addresses", "name")

    backend = group(users, "user backend", "pin a user's nginx logins to one backend server")
    action(backend, "user backend set", "send the user's IMAP/POP3/SMTP logins to IP:PORT", "name").add_argument(
        "backend", metavar="IP:PORT", help="an IP literal and port, such as 10.0.0.5:143 or [2001:db8::5]:143")
    action(backend, "user backend clear", "use the configured backend pools again", "name")

    totp = group(users, "user totp", "turn two-factor codes (TOTP) on or off")
    action(totp, "user totp enable", "give a user a new TOTP secret and require codes (prints a QR code)",
           "name")
    action(totp, "user totp disable", "stop requiring TOTP codes and forget the secret", "name")

    apps = group(users, "user app-password", "manage a user's app passwords (accepted without TOTP)")
    action(apps, "user app-password add", "generate an app password (printed once)", "name").add_argument(
        "label", help="what it is for, such as 'phone'")
    action(apps, "user app-password list", "list a user's app passwords", "name")
    action(apps, "user app-password revoke", "revoke an app password", "name", "label")


def run(args: argparse.Namespace, clock: IReactorTime, bcrypt_rounds: int | None = None) -> int:
    """Run one C{user} command; errors become one line on stderr and status 1 (usage: 2)."""
    handler = getattr(args, "handler", None)
    if handler is None:
        args.help_parser.print_help()
        return 2
    if handler == "user unlock":  # the state store, not the user database
        return _user_unlock(args, clock)

    def work(config: Config, conn: sqlite3.Connection) -> int:
        rounds = config.auth.bcryptRounds if bcrypt_rounds is None else bcrypt_rounds
        return _HANDLERS[handler](Command(clock, rounds, config), args, conn)

    return run_with_database(args, handler == "user add", work)


# -- the commands -----------------------------------------------------------------------


class Command:
    """What every command needs: the time, how to hash passwords, the configuration."""

    def __init__(self, clock: IReactorTime, rounds: int, config: Config | None = None) -> None:
        self.clock = clock
        self.rounds = rounds
        self.config = config

    def now(self) -> float:
        return self.clock.seconds()

    def new_password_hash(self, from_stdin: bool, min_length: int = 0) -> bytes:
        """Read a new password (prompt twice, or one line of stdin; at least C{min_length} characters) and hash it."""
        if from_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        elif sys.stdin.isatty():
            password = getpass("New password: ")
            passwords.check_password(password)  # complain before asking again
            if getpass("Repeat password: ") != password:
                raise ValueError("the passwords do not match")
        else:
            raise UsageError("stdin is not a terminal: use --password-stdin to read the password from it")
        if len(password) < min_length:
            raise ValueError(f"the password is shorter than {min_length} characters")
        return passwords.hash_password(password, self.rounds)


def _user_add(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)  # complain about the name before asking for a password
    if userdb.transact(conn, userdb.get_user, name) is not None:
        raise userdb.UserExists(f"user {name} already exists")
    for sender in args.sender:
        canonical_sender(sender)
    hashed = command.new_password_hash(args.password_stdin)
    name = logged(conn, command.now(), "user.create", name, userdb.add_user, name, hashed, command.now(), args.sender,
                  state=user_state(name))
    print(f"added user {name}")
    return 0


def _user_passwd(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = _existing(conn, args.name).name
    hashed = command.new_password_hash(args.password_stdin)
    logged(conn, command.now(), "user.password", name, userdb.set_password, name, hashed, command.now(),
           state=user_state(name))
    print(f"changed the password of {name}")
    return 0


def _set_enabled(enabled: bool) -> Callable[[Command, argparse.Namespace, sqlite3.Connection], int]:
    def handler(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
        name = canonical_username(args.name)
        logged(conn, command.now(), "user.update", name, userdb.set_enabled, name, enabled, command.now(),
               state=user_state(name))
        print(f"{'enabled' if enabled else 'disabled'} user {name}")
        return 0
    return handler


def _user_delete(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.delete", name, userdb.delete_user, name, state=user_state(name))
    print(f"deleted user {name}")
    return 0


def _user_list(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    users = userdb.transact(conn, userdb.list_users)
    if args.json:
        json.dump([{"name": u.name, "enabled": u.enabled, "totp": u.totp_enabled,
                    "app_passwords": [a.label for a in u.app_passwords], "senders": list(u.allowed_senders),
                    "backend": u.backend, "created": iso_time(u.created),
                    "updated": iso_time(u.updated)} for u in users], sys.stdout, indent=2)
        print()
        return 0
    rows = [(u.name, "yes" if u.enabled else "no", "yes" if u.totp_enabled else "no", str(len(u.app_passwords)),
             ",".join(u.allowed_senders) or "-", u.backend or "-") for u in users]
    table(("NAME", "ENABLED", "TOTP", "APP-PASSWORDS", "SENDERS", "BACKEND"), rows, sys.stdout)
    print(f"{len(users)} user{'' if len(users) == 1 else 's'}")
    return 0


def _user_unlock(args: argparse.Namespace, clock: IReactorTime) -> int:
    from gomail.auth.unlock import UnlockError, unlock

    try:
        config = load(args)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    if config.redis.enabled:
        verbose(args, f"state store: {_redis_place(config)}")
    try:
        status = unlock(config, args.name, args.ip, sys.stdout)
    except (UnlockError, ValueError) as e:
        print(f"gomail: {e}", file=sys.stderr)
        return 1
    log_unlock(args, config, clock.seconds())
    return status


def _redis_place(config: Config) -> str:
    """Where the configured Redis is, without its password."""
    settings = config.redis
    if settings.url:
        from gomail.state.redis import parse_url

        host, port, _, db = parse_url(settings.url)
    else:
        host, port, db = settings.host, settings.port, settings.db
    return f"Redis at {host}:{port}/{db}"


def _sender_set(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.update", name, userdb.set_allowed_senders, name, args.senders, command.now(),
           state=user_state(name))
    user = _existing(conn, name)
    print(f"{name} may send as: {', '.join(user.allowed_senders)}")
    return 0


def _sender_clear(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.update", name, userdb.set_allowed_senders, name, (), command.now(),
           state=user_state(name))
    print(f"cleared the allowed senders of {name}")
    return 0


def _backend_set(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    from gomail.auth.backends import parse_assignment

    name = canonical_username(args.name)
    try:
        address, port = parse_assignment(args.backend)
    except ValueError as e:
        raise userdb.UserDBError(str(e)) from None
    backend = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    logged(conn, command.now(), "user.update", name, userdb.set_backend, name, backend, command.now(),
           state=user_state(name))
    print(f"{name}'s logins go to {backend}")
    return 0


def _backend_clear(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.update", name, userdb.set_backend, name, None, command.now(),
           state=user_state(name))
    print(f"{name}'s logins use the configured backends")
    return 0


def _totp_enable(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    user = _existing(conn, args.name)
    if user.totp_enabled:
        raise userdb.UserDBError(f"TOTP is already enabled for {user.name}; to enrol a new device, "
                                 f"run 'gomail user totp disable {user.name}' first")
    secret = passwords.new_totp_secret()
    logged(conn, command.now(), "user.totp.enable", user.name, userdb.set_totp, user.name, secret, True,
           command.now(), state=user_state(user.name))
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.name, issuer_name=TOTP_ISSUER)
    print(f"TOTP enabled for {user.name}. Scan this QR code with an authenticator app:")
    print()
    sys.stdout.write(render_qr(uri, sys.stdout))
    print()
    print(uri)
    print(f"secret (for manual entry): {secret}")
    print(f"{user.name} now logs in with the password followed by the current 6-digit code; "
          f"app passwords need no code.")
    return 0


def _totp_disable(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.totp.remove", name, userdb.set_totp, name, None, False, command.now(),
           state=user_state(name))
    print(f"TOTP disabled for {name}")
    return 0


def _app_add(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    secret = passwords.new_app_password()
    label = args.label.strip()
    logged(conn, command.now(), "user.app-password.add", name, userdb.add_app_password, name, label,
           passwords.app_password_digest(secret), command.now(), state=user_state(name))
    print(f"app password {label!r} for {name} (shown only this once):")
    print(secret)
    return 0


def _app_list(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    user = _existing(conn, args.name)
    rows = [(a.label, iso_time(a.created) or "-", iso_time(a.last_used) or "never")
            for a in user.app_passwords]
    table(("LABEL", "CREATED", "LAST-USED"), rows, sys.stdout)
    print(f"{len(rows)} app password{'' if len(rows) == 1 else 's'} for {user.name}")
    return 0


def _app_revoke(command: Command, args: argparse.Namespace, conn: sqlite3.Connection) -> int:
    name = canonical_username(args.name)
    logged(conn, command.now(), "user.app-password.revoke", name, userdb.revoke_app_password, name, args.label,
           command.now(), state=user_state(name))
    print(f"revoked app password {args.label.strip()!r} of {name}")
    return 0


_HANDLERS: dict[str, Callable[[Command, argparse.Namespace, sqlite3.Connection], int]] = {
    "user add": _user_add, "user passwd": _user_passwd, "user disable": _set_enabled(False),
    "user enable": _set_enabled(True), "user delete": _user_delete, "user list": _user_list,
    "user sender set": _sender_set, "user sender clear": _sender_clear,
    "user backend set": _backend_set, "user backend clear": _backend_clear,
    "user totp enable": _totp_enable, "user totp disable": _totp_disable,
    "user app-password add": _app_add, "user app-password list": _app_list,
    "user app-password revoke": _app_revoke,
}


# -- helpers --------------------------------------------------------------------------------


def _existing(conn: sqlite3.Connection, name: str) -> Any:
    user = userdb.transact(conn, userdb.get_user, name)
    if user is None:
        raise userdb.NoSuchUser(f"no user {canonical_username(name)}")
    return user


def render_qr(data: str, out: TextIO) -> str:
    """
    C{data} as a QR code drawn with text for C{out}: half blocks (two modules
    per character) when C{out} can encode them, C{##} otherwise. Light modules
    are drawn, as for the usual light-on-dark terminal.
    """
    code = qr_code(data)
    drawn = io.StringIO()
    code.print_ascii(out=drawn, invert=True)
    text = drawn.getvalue()
    try:
        text.encode(getattr(out, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = "".join("".join("  " if dark else "##" for dark in row) + "\n" for row in code.get_matrix())
    return text
