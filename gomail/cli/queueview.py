# -*- test-case-name: tests.test_cli_queue -*-
"""
The operator's view of the spool: what ``gomail queue list|show`` print.

Reading works on the spool directory of a stopped or a running server and is
always safe: a message that disappears while it is read (delivered
meanwhile) is simply left out. Changes are elsewhere: through a running
server's control channel (L{gomail.control}), or, when none runs, on the
files under the spool's writer lock (L{gomail.cli.queuefiles}).

The spool is never prepared here (L{Spool.prepare} empties ``tmp/``, where a
running server keeps the messages it is receiving).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TextIO

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.cli.common import iso_time
from gomail.control.commands import valid_id
from gomail.delivery.failed import FailedStore, decode_content
from gomail.spool.envelope import DELIVERED, Envelope, EnvelopeError
from gomail.spool.fs import read_queued
from gomail.spool.store import Spool

QUEUE, FAILED = "queue", "failed"
# What a terminal would act on: everything below space but newline and tab, and DEL.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MAX_HEADER_BYTES = 64 * 1024
_ID_WIDTH, _SIZE_WIDTH, _TIME_WIDTH = 21, 8, 20
_INDENT = " " * (_ID_WIDTH + _SIZE_WIDTH + _TIME_WIDTH + 3)


class QueueToolError(Exception):
    """A problem to report to the operator as one line (unknown id, no spool, unreadable entry)."""


class UnknownMessage(QueueToolError):
    """Ids that are in neither ``queue/`` nor the place asked for."""


@dataclass
class Entry:
    """One message as listed: its envelope (None when unreadable) and where it is."""

    id: str
    location: str
    envelope: Envelope | None = None
    reason: str | None = None
    failed_at: float | None = None
    error: str | None = None


def _synchronous_run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    return maybeDeferred(f, *args, **kwargs)


def open_spool(directory: str, clock: IReactorTime, errors: TextIO | None = None) -> tuple[Spool, FailedStore]:
    """
    The spool in C{directory} and its failed store, working synchronously,
    without preparing or recovering anything. Warnings and errors the spool
    code logs (a failed message that cannot be requeued) go to C{errors} as
    C{gomail: ...} lines.

    @raise QueueToolError: when C{directory} holds no spool.
    """
    for name in ("tmp", QUEUE, FAILED):
        if not os.path.isdir(os.path.join(directory, name)):
            raise QueueToolError(f"no spool in {directory} ({name}/ is missing)")
    spool = Spool(directory, clock, _synchronous_run)  # its writer: an ImmediateWriter over its files
    failed = FailedStore(spool, clock)
    if errors is not None:
        observer = _ErrorLines(errors)
        spool.log = Logger(namespace="gomail.spool", observer=observer)
        failed.log = Logger(namespace="gomail.delivery.failed", observer=observer)
    return spool, failed


@implementer(ILogObserver)
class _ErrorLines:
    """A log observer writing warnings and errors as one C{gomail: ...} line each."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: dict) -> None:
        if event.get("log_level", LogLevel.info) >= LogLevel.warn:
            text = " ".join((formatEvent(event) or "").split())
            print(f"gomail: {clean(text)}", file=self.stream)


def wait(work: Coroutine | Deferred) -> Any:
    """
    The result of spool work that completes synchronously (with an
    L{gomail.spool.writer.ImmediateWriter} and a synchronous C{run}, it all does).

    @raise Exception: what the work raised.
    """
    d = Deferred.fromCoroutine(work) if not isinstance(work, Deferred) else work
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise RuntimeError("spool work did not complete synchronously")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# -- reading -------------------------------------------------------------------


def _ids(directory: str) -> list[str]:
    return sorted(n[:-5] for n in os.listdir(directory) if n.endswith(".json") and valid_id(n[:-5]))


def count(spool: Spool, location: str) -> int:
    """How many messages are in ``queue/`` or ``failed/``."""
    return len(_ids(spool.path(location)))


def in_queue(spool: Spool, queue_id: str) -> bool:
    """Whether C{queue_id} is a committed message in ``queue/``."""
    return valid_id(queue_id) and os.path.exists(spool.path(QUEUE, queue_id + ".json"))


def in_failed(failed: FailedStore, queue_id: str) -> bool:
    """Whether C{queue_id} is in ``failed/``."""
    return valid_id(queue_id) and os.path.exists(failed.path(queue_id))


def _read(path: str) -> bytes:
    # The server may remove (and reuse the file of) a message while we read it.
    return read_queued(path)


def _queued_entry(spool: Spool, queue_id: str) -> Entry:
    """@raise FileNotFoundError: when the message is gone (delivered meanwhile)."""
    raw = _read(spool.path(QUEUE, queue_id + ".json"))
    try:
        return Entry(queue_id, QUEUE, Envelope.from_json(raw))
    except EnvelopeError as e:
        return Entry(queue_id, QUEUE, error=str(e))


def _failed_record(failed: FailedStore, queue_id: str) -> dict[str, Any]:
    """@raise FileNotFoundError: when the record is gone; L{EnvelopeError} when it is not JSON."""
    try:
        record = json.loads(_read(failed.path(queue_id)))
    except ValueError as e:
        raise EnvelopeError(f"unreadable failed record: {e}") from None
    if not isinstance(record, dict):
        raise EnvelopeError("unreadable failed record: not a JSON object")
    return record


def _failed_entry(failed: FailedStore, queue_id: str) -> Entry:
    try:
        record = _failed_record(failed, queue_id)
        fields = {k: v for k, v in record.items()
                  if k not in ("content", "content_encoding", "reason", "failed_at")}
        envelope = Envelope.from_json(json.dumps(fields).encode("utf-8"))
    except EnvelopeError as e:
        return Entry(queue_id, FAILED, error=str(e))
    return Entry(queue_id, FAILED, envelope, reason=record.get("reason"), failed_at=record.get("failed_at"))


def queued(spool: Spool) -> list[Entry]:
    """The messages in ``queue/``, oldest id first (ids sort by arrival)."""
    entries = []
    for queue_id in _ids(spool.path(QUEUE)):
        try:
            entries.append(_queued_entry(spool, queue_id))
        except FileNotFoundError:
            continue
    return entries


def failed_entries(failed: FailedStore) -> list[Entry]:
    """The messages in ``failed/``, oldest id first."""
    entries = []
    for queue_id in _ids(failed.spool.path(FAILED)):
        try:
            entries.append(_failed_entry(failed, queue_id))
        except FileNotFoundError:
            continue
    return entries


def entry_json(entry: Entry) -> dict[str, Any]:
    """One listed message as the JSON object C{queue list --json} prints."""
    data: dict[str, Any] = {"id": entry.id, "location": entry.location}
    envelope = entry.envelope
    if envelope is None:
        data["error"] = entry.error
        return data
    data.update(
        size=envelope.size,
        arrival=iso_time(envelope.received),
        sender=envelope.sender,
        recipients=[{"address": r.address, "status": r.status, "reply": r.reply} for r in envelope.recipients],
        attempts=envelope.attempts,
        next_attempt=iso_time(envelope.next_attempt),
        last_error=envelope.last_error,
    )
    if entry.location == FAILED:
        data.update(reason=entry.reason, failed_at=iso_time(entry.failed_at))
    return data


def clean(text: str) -> str:
    """C{text} with the control characters a terminal would act on written as escapes."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def print_listing(entries: list[Entry], queued_count: int, failed_count: int, out: TextIO) -> None:
    """
    Print C{entries} the way C{postqueue -p} does: a line per message (id, size,
    arrival time in UTC, sender), its recipients below with their status and
    last reply, then a summary line.
    """
    if entries:
        print(f"{'-Queue ID-':<{_ID_WIDTH}} {'--Size--':>{_SIZE_WIDTH}} {'--Arrival (UTC)--':<{_TIME_WIDTH}}"
              f" -Sender/Recipient-", file=out)
    for entry in entries:
        envelope = entry.envelope
        if envelope is None:
            print(f"{entry.id:<{_ID_WIDTH}} (unreadable: {clean(entry.error or '')})", file=out)
            print(file=out)
            continue
        arrival = iso_time(envelope.received)
        print(f"{entry.id:<{_ID_WIDTH}} {envelope.size:>{_SIZE_WIDTH}} {arrival:<{_TIME_WIDTH}} "
              f"{clean(envelope.sender) or '<>'}", file=out)
        for recipient in envelope.recipients:
            line = f"{_INDENT}{clean(recipient.address)} {recipient.status}"
            if recipient.status != DELIVERED and recipient.reply:
                line += f" ({clean(recipient.reply)})"
            print(line, file=out)
        print(file=out)
    print(f"{queued_count} {'message' if queued_count == 1 else 'messages'} in the queue, "
          f"{failed_count} in failed/", file=out)


def print_json(entries: list[Entry], out: TextIO) -> None:
    """Print C{entries} as one JSON array."""
    print(json.dumps([entry_json(e) for e in entries], indent=2), file=out)


def _headers(content: bytes) -> bytes:
    """The header section (with its last line ending, without the empty line after it)."""
    head = content[:_MAX_HEADER_BYTES]
    crlf, lf = head.find(b"\r\n\r\n"), head.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return head[: crlf + 2]
    return head[: lf + 1] if lf >= 0 else head


def _as_text(content: bytes) -> str:
    text = content.decode("utf-8", "replace").replace("\r\n", "\n")
    return clean(text)


def show(spool: Spool, failed: FailedStore, queue_id: str, out: TextIO, content: bool = False) -> None:
    """
    Print a message's envelope (pretty JSON; for ``failed/`` the record without
    its content), then its header section, or with C{content} the whole
    message. The message is shown as text: CRLF as newlines, bytes that are
    not UTF-8 and control characters replaced.

    @raise UnknownMessage: when C{queue_id} is in neither ``queue/`` nor ``failed/``.
    @raise QueueToolError: when the entry cannot be read.
    """
    location, message = QUEUE, b""
    try:
        if in_queue(spool, queue_id):
            location = QUEUE
            record = json.loads(_read(spool.path(QUEUE, queue_id + ".json")))
            message = _read(spool.message_path(queue_id))
        elif in_failed(failed, queue_id):
            location = FAILED
            record = _failed_record(failed, queue_id)
            message = decode_content(record.pop("content", ""), record.pop("content_encoding", "utf-8"))
        else:
            raise UnknownMessage(f"no message {clean(queue_id)} in queue/ or failed/")
    except FileNotFoundError:
        raise UnknownMessage(f"message {clean(queue_id)} left the spool while it was read") from None
    except (ValueError, TypeError) as e:
        raise QueueToolError(f"{location}/{queue_id}: unreadable: {e}") from None
    print(f"*** ENVELOPE {location}/{queue_id} ***", file=out)
    print(json.dumps(record, indent=2, sort_keys=True), file=out)
    print(f"*** {'MESSAGE' if content else 'HEADERS'} ***", file=out)
    text = _as_text(message if content else _headers(message))
    out.write(text if text.endswith("\n") or not text else text + "\n")
