# -*- test-case-name: tests.test_cli_queue -*-
"""
The C{gomail queue} operator command: list, show, status, retry, flush, delete.

C{list} and C{show} read the spool's files (always safe). The changing
actions go through a running server's control channel (L{gomail.control}):
the server applies them in its own queue, so nothing else ever writes
``queue/`` while it runs. Only when no server answers on the spool's control
socket, and the command gets the spool's writer lock, does it change the
files itself (L{gomail.cli.queuefiles}). If the lock is held but nothing answers
(a server starting or stopping), it says so and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from gomail.cli import queuefiles, queueview
from gomail.cli.common import DEFAULT_CONFIG, common_options, load, plural, verbose
from gomail.configload import ConfigError
from gomail.control import SocketPath
from gomail.control.client import DEFAULT_TIMEOUT, ControlClient, ControlError, ServerRefused
from gomail.control.commands import MAX_IDS, Delete, Flush, Retry, Status
from gomail.control.lock import lock_path, try_lock
from gomail.delivery.failed import FailedStore
from gomail.spool.store import Spool

#: The top-level commands this module adds to C{gomail}.
COMMANDS = ("queue",)
#: The exit status of C{queue status} when no server runs (as LSB's "program is not running").
NOT_RUNNING = 3

_HELP = """\
list and show read the spool's files and are always safe. retry, flush and
delete ask the running server (through <spool>/control.sock) to make the
change in its own queue; only when no server runs do they change the files
themselves, holding <spool>/writer.lock so that no server starts meanwhile.
A message being delivered at that moment is not deleted (try again).
Run these commands as the user the server runs as; -v says which
configuration and spool are used, and how the change is made.

exit status: 0 ok, 1 error (unknown id, unreadable spool, server unreachable),
2 usage, 3 (status only) no server runs
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


def add_commands(commands: Any) -> None:
    """Add C{queue list|show|status|retry|flush|delete} to the subcommands of the C{gomail} parser."""
    raw = argparse.RawDescriptionHelpFormatter
    common = common_options("spool.directory")
    waits = argparse.ArgumentParser(add_help=False)
    waits.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"how long to wait for a running server (default: {DEFAULT_TIMEOUT:g})")
    queue = commands.add_parser("queue", help="inspect and manage the spool (list, show, status, retry, flush, "
                                              "delete)",
                                description="Inspect and manage the spool, like postqueue/postsuper.",
                                epilog=_HELP, formatter_class=raw)
    queue.set_defaults(queue_parser=queue)
    actions = queue.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help: str, description: str, changes: bool = False) -> Any:
        return actions.add_parser(name, parents=[common, waits] if changes else [common], help=help,
                                  description=description, epilog=_HELP, formatter_class=raw)

    listing = action("list", "list queued messages (like postqueue -p)",
                     "One entry per message: id, size, arrival time (UTC), sender, then its recipients "
                     "with status and last reply.")
    listing.add_argument("--failed", action="store_true", help="list failed/ instead of queue/")
    listing.add_argument("--json", action="store_true", help="print a JSON array")

    show = action("show", "print a message's envelope and headers",
                  "Print the envelope (JSON), then the message headers, of a message in queue/ or failed/.")
    show.add_argument("id", help="queue id")
    show.add_argument("--content", action="store_true", help="print the whole message, not only its headers")

    action("status", "say whether a server runs on the spool, and its queue",
           "Ask the running server for its pid and its queue by state.", changes=True)

    retry = action("retry", "move failed/ messages back to the queue",
                   "Move failed/ messages back to the queue with fresh attempt counters; a running "
                   "server tries them at once.", changes=True)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", default=[], metavar="ID", help="failed message ids")
    which.add_argument("--all", action="store_true", help="every message in failed/")

    action("flush", "make every queued message due now",
           "Make every queued message due now: a running server tries them at once (those being "
           "delivered finish their attempt); with no server running, the next start does.", changes=True)

    delete = action("delete", "delete messages for good",
                    "Delete messages from queue/ or failed/. Nothing is deleted without explicit ids, "
                    "--all-failed or --all.", changes=True)
    what = delete.add_mutually_exclusive_group(required=True)
    what.add_argument("ids", nargs="*", default=[], metavar="ID", help="message ids (queue/ or failed/)")
    what.add_argument("--all-failed", action="store_true", help="every message in failed/")
    what.add_argument("--all", action="store_true", help="every message in queue/ and failed/")


def run(args: argparse.Namespace, clock: IReactorTime) -> int:
    """Run one C{gomail queue} action; errors become one line on stderr and status 1."""
    if args.action is None:
        args.queue_parser.print_help()
        return 2
    try:
        config = load(args)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    directory = os.path.abspath(config.spool.directory)
    verbose(args, f"spool: {directory}")
    try:
        try:
            spool, failed = queueview.open_spool(directory, clock, errors=sys.stderr)
        except queueview.QueueToolError as e:
            raise queueview.QueueToolError(f"{e} (configuration: {args.config_source}); give --config, or run "
                                           f"this where the server's {DEFAULT_CONFIG} is") from None
        if args.action in _READERS:
            return _READERS[args.action](args, spool, failed)
        if args.action == "status":
            return _status(args, directory)
        return _change(args, spool, failed)
    except (queueview.QueueToolError, ControlError) as e:
        print(f"gomail: {queueview.clean(str(e))}", file=sys.stderr)
    except BrokenPipeError:
        raise  # stdout, not the spool: main handles it
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"gomail: cannot use the spool in {directory}: {e.strerror or e}{where}", file=sys.stderr)
    return 1


# -- reading ------------------------------------------------------------------------


def _list(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    entries = queueview.failed_entries(failed) if args.failed else queueview.queued(spool)
    if args.json:
        queueview.print_json(entries, sys.stdout)
    else:
        queued = len(entries) if not args.failed else queueview.count(spool, queueview.QUEUE)
        in_failed = len(entries) if args.failed else queueview.count(spool, queueview.FAILED)
        queueview.print_listing(entries, queued, in_failed, sys.stdout)
    return 0


def _show(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    queueview.show(spool, failed, args.id, sys.stdout, content=args.content)
    return 0


_READERS: dict[str, Callable[[argparse.Namespace, Spool, FailedStore], int]] = {"list": _list, "show": _show}


def _status(args: argparse.Namespace, directory: str) -> int:
    client = ControlClient.connect(directory, args.timeout)
    if client is None:
        with SocketPath(directory) as path:
            print(f"no server answers on {path.real}")
        return NOT_RUNNING
    with client:
        verbose(args, f"asking the running server on {client.path}")
        status = client.call(Status)
    print(f"gomail {status['version']} running (pid {status['pid']}) on {status['spool']}")
    print(f"{plural(status['queued'], 'message')} in the queue ({status['active']} being delivered, "
          f"{status['deferred']} deferred), {status['failed']} in failed/")
    return 0


# -- changing -----------------------------------------------------------------------


def _change(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    """Through the running server if one answers, else on the files under the writer lock."""
    if len(getattr(args, "ids", [])) > MAX_IDS:
        raise queueview.QueueToolError(f"name at most {MAX_IDS} ids at once (or use --all)")
    directory = spool.directory
    client = ControlClient.connect(directory, args.timeout)
    if client is None:
        lock = try_lock(directory)
        if lock is not None:
            try:
                verbose(args, f"no server runs on this spool: changing its files, holding {lock_path(directory)}")
                return _FILE_CHANGES[args.action](args, spool, failed)
            finally:
                os.close(lock)
        # Held: a server is starting (or just finished starting) or stopping.
        client = ControlClient.connect(directory, args.timeout)
        if client is None:
            with SocketPath(directory) as path:
                raise ControlError(f"a server holds {lock_path(directory)} but does not answer on {path.real} "
                                   f"(starting or stopping?): nothing was changed; try again")
    with client:
        verbose(args, f"asking the running server on {client.path}")
        try:
            return _SERVER_CHANGES[args.action](args, client)
        except ServerRefused as e:
            raise queueview.UnknownMessage(str(e)) from None


def _problems(lines: list[str]) -> int:
    for line in lines:
        print(f"gomail: {queueview.clean(line)}", file=sys.stderr)
    return 1 if lines else 0


_BY_SERVER = "(by the running server)"


def _retry_by_server(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call(Retry, ids=args.ids, all=args.all)
    status = _problems(result["problems"])
    print(f"requeued {plural(result['requeued'], 'message')} {_BY_SERVER}")
    return status


def _flush_by_server(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call(Flush)
    active = f"; {result['active']} being delivered finish their attempt first" if result["active"] else ""
    print(f"flushed {plural(result['flushed'], 'message')} (by the running server{active})")
    return 0


def _delete_by_server(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call(Delete, ids=args.ids, all_failed=args.all_failed, all=args.all)
    busy = result["busy"]
    status = _problems([f"being delivered or moved right now, not deleted (try again): {', '.join(busy)}"]
                       if busy else [])
    print(f"deleted {plural(result['deleted'], 'message')} {_BY_SERVER}")
    return status


_SERVER_CHANGES: dict[str, Callable[[argparse.Namespace, ControlClient], int]] = {
    "retry": _retry_by_server, "flush": _flush_by_server, "delete": _delete_by_server,
}


def _retry_files(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    requeued, problems = queuefiles.retry(failed, None if args.all else args.ids)
    print(f"requeued {plural(requeued, 'message')}")
    return 1 if problems else 0


def _flush_files(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    flushed, problems = queuefiles.flush(spool)
    status = _problems(problems)
    print(f"flushed {plural(flushed, 'message')}")
    return status


def _delete_files(args: argparse.Namespace, spool: Spool, failed: FailedStore) -> int:
    if args.all or args.all_failed:
        deleted = queuefiles.delete_all(spool, failed, queue_too=args.all)
    else:
        deleted = queuefiles.delete(spool, failed, args.ids)
    print(f"deleted {plural(deleted, 'message')}")
    return 0


_FILE_CHANGES: dict[str, Callable[[argparse.Namespace, Spool, FailedStore], int]] = {
    "retry": _retry_files, "flush": _flush_files, "delete": _delete_files,
}


__all__ = ["COMMANDS", "NOT_RUNNING", "add_commands", "run"]
