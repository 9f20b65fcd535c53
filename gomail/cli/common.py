# -*- test-case-name: tests.test_cli_paths -*-
"""
What every C{gomail} operator command shares: the C{--config} and C{-v}
options, finding the configuration, saying (with C{-v}) which configuration,
spool or database a command uses, and opening the user database without
ever creating an empty one by accident.

A command run from another directory than the server's used to find no
C{conf/gomail.toml}, fall back to the built-in defaults, open (and create)
an empty C{data/gomail.db} there and report "0 users". Now only commands
that create things (C{user add}, C{alias add}, C{blacklist add}) may create
the database; every other one refuses with one line naming the path it
would have used and where that path came from.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from gomail.auth import userdb
from gomail.configload import Config, ConfigError, load_config

DEFAULT_CONFIG = os.path.join("conf", "gomail.toml")


class CommandError(Exception):
    """A problem to report to the operator as one line (exit status 1)."""


class UsageError(Exception):
    """Bad use of the command (exit status 2)."""


class WallClock:
    """The system clock, for a command that runs outside any reactor."""

    def seconds(self) -> float:
        return time.time()


def common_options(what: str) -> argparse.ArgumentParser:
    """The options of every command that reads a configuration: C{--config FILE} and C{-v}."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE",
                        help=f"configuration whose {what} to use (default: {DEFAULT_CONFIG} "
                             f"if it exists, else the built-in defaults)")
    # SUPPRESS: an -v given before the command (gomail -v user list) is not reset here.
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="say on stderr which configuration, spool or database is used")
    return parent


def action_group(commands: Any, name: str, help: str, epilog: str) -> Callable[[str, str], argparse.ArgumentParser]:
    """
    Add C{gomail NAME ACTION ...} to the C{gomail} parser's subcommands (the
    group's help is printed when no action is given); returns
    C{action(action_name, help)}, which adds one action taking the common
    options and dispatching to C{handler=action_name}.
    """
    common = common_options("user database")
    raw = argparse.RawDescriptionHelpFormatter
    group = commands.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                                formatter_class=raw)
    group.set_defaults(help_parser=group)
    actions = group.add_subparsers(metavar="ACTION")

    def action(action_name: str, action_help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(action_name, parents=[common], help=action_help,
                                    description=action_help[0].upper() + action_help[1:] + ".", epilog=epilog,
                                    formatter_class=raw)
        parser.set_defaults(handler=action_name)  # a key of the command's handlers
        return parser

    return action


def verbose(args: argparse.Namespace, text: str) -> None:
    """Print C{gomail: text} on stderr when the command was given C{-v}."""
    if getattr(args, "verbose", False):
        print(f"gomail: {text}", file=sys.stderr)


def load(args: argparse.Namespace) -> Config:
    """
    The configuration the command names (C{--config}), else C{conf/gomail.toml}
    in the current directory, else the built-in defaults; C{args.config_source}
    says which, for messages.

    @raise ConfigError: for a bad file.
    """
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None:
        args.config_source = f"the built-in defaults: no --config, and no {DEFAULT_CONFIG} in {os.getcwd()}"
    else:
        args.config_source = os.path.abspath(path)
    verbose(args, f"configuration: {args.config_source}")
    return load_config(path)


def database_path(config: Config) -> str:
    """Where the user database of C{config} is (the server's: C{auth.database}, default C{<dataDir>/gomail.db})."""
    return config.auth.database or os.path.join(config.dataDir, "gomail.db")


def open_database(args: argparse.Namespace, config: Config, create: bool) -> sqlite3.Connection:
    """
    A connection to the configured user database (its schema brought up to
    date). Unless C{create}, a database that does not exist is not created.

    @raise CommandError: when it does not exist and may not be created.
    """
    path = os.path.abspath(database_path(config))
    exists = os.path.exists(path)
    verbose(args, f"user database: {path}{'' if exists else ' (new)'}")
    if not exists and not create:
        raise CommandError(f"no user database at {path} (configuration: "
                           f"{getattr(args, 'config_source', 'unknown')}); give --config, or run this "
                           f"where the server's {DEFAULT_CONFIG} is")
    conn = userdb.open_connection(path)
    try:
        userdb.transact(conn, userdb.migrate)
    except BaseException:
        conn.close()
        raise
    return conn


def run_with_database(args: argparse.Namespace, create: bool,
                      work: Callable[[Config, sqlite3.Connection], int]) -> int:
    """
    Load the configuration, open its user database (see L{open_database}) and
    run C{work} on it. Errors become one line on stderr and status 1 (usage: 2).
    """
    try:
        config = load(args)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    conn = None
    try:
        conn = open_database(args, config, create)
        return work(config, conn)
    except UsageError as e:
        print(f"gomail: {e}", file=sys.stderr)
        return 2
    except (CommandError, ValueError, userdb.UserDBError) as e:
        print(f"gomail: {e}", file=sys.stderr)
    except (EOFError, KeyboardInterrupt):  # ^D or ^C at a password prompt
        print("\ngomail: cancelled", file=sys.stderr)
    except (OSError, sqlite3.Error) as e:
        if isinstance(e, BrokenPipeError):
            raise  # stdout, not the database: main handles it
        print(f"gomail: cannot use the user database {os.path.abspath(database_path(config))}: "
              f"{getattr(e, 'strerror', None) or e}", file=sys.stderr)
    finally:
        if conn is not None:
            conn.close()
    return 1


def iso_time(seconds: float | None) -> str | None:
    """A timestamp as UTC ISO 8601 to the second (C{2024-05-01T12:00:00Z})."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    """Print C{rows} under C{header} in aligned columns (nothing when there are no rows)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    out.writelines("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() + "\n"
                   for row in (header, *rows))


def plural(count: int, word: str, plural_form: str | None = None) -> str:
    """C{1 message}, C{2 messages}."""
    return f"{count} {word if count == 1 else plural_form or word + 's'}"


__all__ = ["DEFAULT_CONFIG", "CommandError", "UsageError", "WallClock", "common_options", "database_path",
           "iso_time", "load", "open_database", "plural", "run_with_database", "table", "verbose"]
