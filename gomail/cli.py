"""The ``gomail`` operator command."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime

import gomail
from gomail import aliascli, queuetool, usercli
from gomail.config import ConfigError, describe, load_config
from gomail.config import warnings as config_warnings
from gomail.delivery.failed import FailedStore
from gomail.spool.store import Spool

DEFAULT_CONFIG = os.path.join("conf", "gomail.toml")

_QUEUE_HELP = """\
list and show are always safe, also on the spool of a running server.
Changes go through the same atomic writer jobs as the server's, so they never
leave partial files. After retry, flush or delete, a running server (found
through <spool>/gomail.pid) is sent SIGUSR1 and rescans its queue: requeued
mail is picked up, flushed mail is due at once, deleted mail is forgotten
(a message being delivered at that very moment still finishes its attempt).
Run these commands as the user the server runs as.

exit status: 0 ok, 1 error (unknown id, unreadable spool), 2 usage
"""


class WallClock:
    """The system clock, for a command that runs outside any reactor."""

    def seconds(self) -> float:
        return time.time()


def main(argv: list[str] | None = None, clock: IReactorTime | None = None,
         bcrypt_rounds: int | None = None) -> int:
    """
    Entry point of the C{gomail} console script; returns the exit status.

    @param clock: the time for C{queue}, C{user} and C{blacklist} commands
        (default: the system clock).
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
    if args.command in ("queue", *usercli.COMMANDS, *aliascli.COMMANDS):
        if args.command == "queue" and args.action is None:
            args.queue_parser.print_help()
            return 2
        try:
            if args.command == "queue":
                return queue_command(args, clock or WallClock())
            if args.command in aliascli.COMMANDS:
                return aliascli.run(args, clock or WallClock())
            return usercli.run(args, clock or WallClock(), bcrypt_rounds)
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
    """The command line: C{check-config} and C{queue list|show|retry|flush|delete}."""
    parser = QuietArgumentParser(prog="gomail", description="gomail mail server operator tool")
    parser.add_argument("--version", action="version", version=f"gomail {gomail.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check-config", help="validate a configuration file (and the environment)")
    check.add_argument("file", help="TOML file, or the Go relay's config.json")

    raw = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE",
                        help=f"configuration whose spool.directory to use (default: {DEFAULT_CONFIG} "
                             f"if it exists, else the built-in defaults)")
    queue = commands.add_parser("queue", help="inspect and manage the spool (list, show, retry, flush, delete)",
                                description="Inspect and manage the spool, like postqueue/postsuper.",
                                epilog=_QUEUE_HELP, formatter_class=raw)
    queue.set_defaults(queue_parser=queue)
    actions = queue.add_subparsers(dest="action", metavar="ACTION")

    listing = actions.add_parser("list", parents=[common], help="list queued messages (like postqueue -p)",
                                 description="One entry per message: id, size, arrival time (UTC), sender, "
                                             "then its recipients with status and last reply.",
                                 epilog=_QUEUE_HELP, formatter_class=raw)
    listing.add_argument("--failed", action="store_true", help="list failed/ instead of queue/")
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    show = actions.add_parser("show", parents=[common], help="print a message's envelope and headers",
                              description="Print the envelope (JSON), then the message headers, of a message "
                                          "in queue/ or failed/.", epilog=_QUEUE_HELP, formatter_class=raw)
    show.add_argument("id", help="queue id")
    show.add_argument("--content", action="store_true", help="print the whole message, not only its headers")

    retry = actions.add_parser("retry", parents=[common], help="move failed/ messages back to the queue",
                               description="Move failed/ messages back to queue/ with fresh attempt counters. "
                                           "A running server picks them up at its next start.",
                               epilog=_QUEUE_HELP, formatter_class=raw)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="failed message ids")
    which.add_argument("--all", action="store_true", help="every message in failed/")

    actions.add_parser("flush", parents=[common], help="make every queued message due now",
                               description="Set every queued message's next attempt to now. A running server "
                                           "acts on it at its next start.", epilog=_QUEUE_HELP, formatter_class=raw)

    delete = actions.add_parser("delete", parents=[common], help="delete messages for good",
                                description="Delete messages from queue/ or failed/. Nothing is deleted "
                                            "without explicit ids or --all-failed.",
                                epilog=_QUEUE_HELP, formatter_class=raw)
    what = delete.add_mutually_exclusive_group(required=True)
    what.add_argument("ids", nargs="*", default=[], metavar="ID", help="message ids (queue/ or failed/)")
    what.add_argument("--all-failed", action="store_true", help="every message in failed/")
    usercli.add_commands(commands)
    aliascli.add_commands(commands)
    return parser


def check_config(path: str) -> int:
    """Print the configuration error, or a summary of a valid configuration."""
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: configuration ok")
    print(describe(config))
    for warning in config_warnings(config):
        print(f"gomail: warning: {warning}", file=sys.stderr)
    return 0


def queue_command(args: argparse.Namespace, clock: IReactorTime) -> int:
    """Run one C{gomail queue} action; errors become one line on stderr and status 1."""
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    directory = config.spool.directory
    try:
        spool, failed = queuetool.open_spool(directory, clock, errors=sys.stderr)
        return _ACTIONS[args.action](args, spool, failed)
    except queuetool.QueueToolError as e:
        print(f"gomail: {e}", file=sys.stderr)
    except BrokenPipeError:
        raise  # stdout, not the spool: main handles it
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"gomail: cannot use the spool in {directory}: {e.strerror or e}{where}", file=sys.stderr)
    return 1


def _plural(count: int, word: str = "message") -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _list(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    entries = queuetool.failed_entries(failed) if args.failed else queuetool.queued(spool)
    if args.json:
        queuetool.print_json(entries, sys.stdout)
    else:
        queued = len(entries) if not args.failed else queuetool.count(spool, queuetool.QUEUE)
        in_failed = len(entries) if args.failed else queuetool.count(spool, queuetool.FAILED)
        queuetool.print_listing(entries, queued, in_failed, sys.stdout)
    return 0


def _show(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    queuetool.show(spool, failed, args.id, sys.stdout, content=args.content)
    return 0


def _tell_server(spool: Spool, changed: int) -> None:
    pid = queuetool.notify_server(spool) if changed else None
    if pid is not None:
        print(f"asked the running server (pid {pid}) to rescan the queue")


def _retry(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    requeued, problems = queuetool.retry(failed, None if args.all else args.ids)
    print(f"requeued {_plural(requeued)}")
    _tell_server(spool, requeued)
    return 1 if problems else 0


def _flush(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    flushed, problems = queuetool.flush(spool)
    for problem in problems:
        print(f"gomail: {problem}", file=sys.stderr)
    print(f"flushed {_plural(flushed)}")
    _tell_server(spool, flushed)
    return 1 if problems else 0


def _delete(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    if args.all_failed:
        deleted = queuetool.delete_all_failed(failed)
    else:
        deleted = queuetool.delete(spool, failed, args.ids)
    print(f"deleted {_plural(deleted)}")
    _tell_server(spool, deleted)
    return 0


_ACTIONS: dict[str, Callable[[argparse.Namespace, Spool, FailedStore], int]] = {
    "list": _list, "show": _show, "retry": _retry, "flush": _flush, "delete": _delete,
}


if __name__ == "__main__":
    sys.exit(main())
