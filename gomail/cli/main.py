# -*- test-case-name: tests.test_cli -*-
"""
The C{gomail} operator command: C{check-config}, and the commands of
L{gomail.cli.queue} (C{queue}), L{gomail.cli.user} (C{user}),
L{gomail.cli.blacklist} (C{blacklist}) and L{gomail.cli.alias} (C{alias}).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet.interfaces import IReactorTime

import gomail
from gomail.cli import admin as admincli
from gomail.cli import alias as aliascli
from gomail.cli import blacklist as blacklistcli
from gomail.cli import dkim as dkimcli
from gomail.cli import plugins as pluginscli
from gomail.cli import queue as queuecli
from gomail.cli import user as usercli
from gomail.cli.common import WallClock
from gomail.configload import ConfigError, describe, load_config
from gomail.configload import warnings as config_warnings


def main(argv: list[str] | None = None, clock: IReactorTime | None = None,
         bcrypt_rounds: int | None = None) -> int:
    """
    Entry point of the C{gomail} console script; returns the exit status.

    @param clock: the time for C{queue}, C{user}, C{alias} and C{blacklist}
        commands (default: the system clock).
    @param bcrypt_rounds: the work factor of passwords C{user} commands hash
        (default: the configuration's C{auth.bcryptRounds}).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (2), --help and --version (0)
        return e.code if isinstance(e.code, int) else 2
    if args.command == "check-config":
        return check_config(args.file)
    if args.command in pluginscli.COMMANDS:
        return pluginscli.run(args)
    if args.command in dkimcli.COMMANDS:
        return dkimcli.run(args)
    runners = {**dict.fromkeys(queuecli.COMMANDS, queuecli.run), **dict.fromkeys(aliascli.COMMANDS, aliascli.run),
               **dict.fromkeys(blacklistcli.COMMANDS, blacklistcli.run)}
    if args.command in (*runners, *usercli.COMMANDS, *admincli.COMMANDS):
        # The commands only ask the clock for seconds(): outside a reactor, the system's.
        now: Any = clock or WallClock()
        try:
            if args.command in usercli.COMMANDS:
                return usercli.run(args, now, bcrypt_rounds)
            if args.command in admincli.COMMANDS:
                return admincli.run(args, now, bcrypt_rounds)
            return runners[args.command](args, now)
        except BrokenPipeError:
            # The reader went away (`gomail queue list | head`): stop quietly.
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 1
    parser.print_help()
    return 2


class QuietArgumentParser(argparse.ArgumentParser):
    """
    An ArgumentParser that never repeats stray arguments in its error: one of
    them may be a password typed where it does not belong (`gomail user add
    alice hunter2`), and error output ends up in terminals and logs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --password must not mean --password-stdin
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            # Option names are safe to show; values (a password, perhaps) are not.
            words = message.partition(":")[2].split()
            options = [w.partition("=")[0] for w in words if w.startswith("-")]
            hidden = len(words) - len(options)
            message = "unrecognized arguments: " + " ".join(options + ([f"({hidden} not shown)"] if hidden else []))
            if hidden:
                message += "; passwords are read from a prompt or --password-stdin"
        elif "explicit argument" in message:
            message = message.partition(":")[0] + ": takes no value"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The command line: C{check-config}, C{queue}, C{user}, C{blacklist}, C{alias} and C{plugins}."""
    parser = QuietArgumentParser(prog="gomail", description="gomail mail server operator tool")
    parser.add_argument("--version", action="version", version=f"gomail {gomail.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="say on stderr which configuration, spool or database a command uses")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check-config", help="validate a configuration file (and the environment)")
    check.add_argument("file", help="TOML file, or the Go relay's config.json")
    queuecli.add_commands(commands)
    usercli.add_commands(commands)
    blacklistcli.add_commands(commands)
    aliascli.add_commands(commands)
    pluginscli.add_commands(commands)
    dkimcli.add_commands(commands)
    admincli.add_commands(commands)
    return parser


def check_config(path: str) -> int:
    """Print the configuration error, or a summary of a valid configuration."""
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    problem = pluginscli.check(config)
    if problem is not None:
        print(f"gomail: plugin error: {problem}", file=sys.stderr)
        return 1
    print(f"{path}: configuration ok")
    print(describe(config))
    for warning in config_warnings(config):
        print(f"gomail: warning: {warning}", file=sys.stderr)
    return 0

