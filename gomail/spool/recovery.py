# -*- test-case-name: tests.test_spool_integrity -*-
"""
The start-up scan of ``queue/``: which entries are deliverable, and which go
to ``corrupt/``.

Nothing in ``queue/`` is ever deleted here: every entry there may have been
answered 250. Whatever cannot be delivered as it is moves to ``corrupt/``,
kept for a human, with one log line naming what is wrong (see
L{gomail.spool.store.Spool.recover}):

- an ``.eml`` without its ``.json`` (a commit or a removal cut short by a
  crash of the machine, or an envelope deleted by hand): "incomplete";
- a ``.json`` without its ``.eml``: "incomplete";
- an envelope that cannot be read or does not belong to its file: "unreadable";
- content whose size differs from the envelope's: "damaged";
- a file that is not a queue file at all: "stray".

The content's digest is not read here: every queued message is checked in
full before each of its delivery attempts (and every one is attempted within
C{delivery.retryMaxDelay} or so of the start), so the scan costs a directory
listing, one small read and one C{stat} per message, whatever the sizes of
the messages, and mail is accepted again that much sooner after a restart.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gomail.spool.envelope import Envelope, EnvelopeError
from gomail.spool.integrity import size_problem

if TYPE_CHECKING:
    from gomail.spool.store import Spool

QUEUE_EXTENSIONS = (".eml", ".json")


@dataclass
class RecoveryReport:
    """What a start-up scan of ``queue/`` found."""

    envelopes: list[Envelope] = field(default_factory=list)
    #: The file names moved to corrupt/.
    corrupt: list[str] = field(default_factory=list)
    #: Per entry set aside (queue id, or the file name of a stray file): (kind, what is wrong).
    problems: dict[str, tuple[str, str]] = field(default_factory=dict)


def scan_queue(spool: Spool) -> RecoveryReport:
    """(I/O pool) Sort ``queue/`` into deliverable envelopes and entries moved to ``corrupt/``."""
    listing, report = list_queue(spool)
    scan_entries(spool, sorted([*listing.partial, *((queue_id, _BOTH) for queue_id in listing.complete)]), report)
    report.envelopes.sort(key=lambda e: (e.next_attempt, e.id))
    return report


_BOTH = frozenset(QUEUE_EXTENSIONS)


@dataclass
class QueueListing:
    """
    One listing of ``queue/``, kept compact (a recovery in the background
    holds it for minutes with a million entries): the ids having both files,
    sorted, and the few others with the extensions present.
    """

    complete: list[str]
    partial: list[tuple[str, frozenset[str]]]

    def __len__(self) -> int:
        return len(self.complete) + len(self.partial)

    @property
    def envelopes(self) -> int:
        """How many entries have an envelope file (what C{queueSize} counts)."""
        return len(self.complete) + sum(1 for _, exts in self.partial if ".json" in exts)

    def steps(self, size: int) -> Iterator[tuple[int, list[tuple[str, frozenset[str]]]]]:
        """(offset, up to C{size} entries as (queue id, extensions)): the partial ones first."""
        entries = itertools.chain(self.partial, ((queue_id, _BOTH) for queue_id in self.complete))
        done = 0
        while chunk := list(itertools.islice(entries, size)):
            yield done, chunk
            done += len(chunk)


def list_queue(spool: Spool) -> tuple[QueueListing, RecoveryReport]:
    """
    (I/O pool) One listing of ``queue/`` (the snapshot a recovery in steps
    works through), and a report of the stray files moved to ``corrupt/``.
    """
    report = RecoveryReport()
    names = os.listdir(spool.path("queue"))
    names.sort()
    complete: list[str] = []
    found: dict[str, set[str]] = {}  # ids seen without both files so far (few)
    # Sorted, an id's two files are next to each other (unless a stray name sorts between them: see below).
    current, exts = "", set[str]()
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext not in QUEUE_EXTENSIONS or not stem:
            _set_aside(spool, report, name, [name], "stray", "not a queue file (neither <id>.eml nor <id>.json)")
            continue
        if stem != current:
            _add_entry(complete, found, current, exts)
            current, exts = stem, set()
        exts.add(ext)
    _add_entry(complete, found, current, exts)
    # Two halves of one id parted by another name: whole after all.
    partial = []
    for queue_id, parts in sorted(found.items()):
        if parts == _BOTH:
            complete.append(queue_id)
        else:
            partial.append((queue_id, frozenset(parts)))
    if len(partial) < len(found):
        complete.sort()
    _fsync_if_moved(spool, report)
    return QueueListing(complete, partial), report


def scan_entries(spool: Spool, entries: list[tuple[str, frozenset[str]]],
                 report: RecoveryReport | None = None) -> RecoveryReport:
    """(I/O pool) Sort some entries of L{list_queue} into deliverable envelopes and entries moved to ``corrupt/``."""
    report = report if report is not None else RecoveryReport()
    queue = spool.path("queue")
    moved_before = len(report.corrupt)
    for queue_id, exts in entries:
        names = [queue_id + ext for ext in sorted(exts, key=lambda e: e != ".json")]
        if exts == {".eml"}:
            _set_aside(spool, report, queue_id, names, "incomplete",
                       f"its envelope {queue_id}.json is missing (a commit or removal cut short by a "
                       "crash, or the file was deleted); the content is kept")
            continue
        if exts == {".json"}:
            _set_aside(spool, report, queue_id, names, "incomplete",
                       f"its content {queue_id}.eml is missing; the envelope is kept")
            continue
        try:
            with open(os.path.join(queue, queue_id + ".json"), "rb") as f:
                envelope = Envelope.from_json(f.read())
            if envelope.id != queue_id:
                raise EnvelopeError(f"envelope id {envelope.id!r} does not match its file name")
            size = os.stat(os.path.join(queue, queue_id + ".eml")).st_size
        except (OSError, EnvelopeError) as e:
            _set_aside(spool, report, queue_id, names, "unreadable", f"unreadable envelope: {e}")
            continue
        problem = size_problem(size, envelope.size)
        if problem is not None:
            _set_aside(spool, report, queue_id, names, "damaged", problem)
            continue
        report.envelopes.append(envelope)
    if len(report.corrupt) > moved_before:
        _fsync_if_moved(spool, report)
    return report


def _add_entry(complete: list[str], found: dict[str, set[str]], queue_id: str, exts: set[str]) -> None:
    if not queue_id:
        return
    if exts == _BOTH:
        complete.append(queue_id)
    else:
        found.setdefault(queue_id, set()).update(exts)


def _fsync_if_moved(spool: Spool, report: RecoveryReport) -> None:
    if report.corrupt:
        spool.fs.fsync_directory(spool.path("corrupt"))
        spool.fs.fsync_directory(spool.path("queue"))


def _set_aside(spool: Spool, report: RecoveryReport, key: str, names: list[str], kind: str,
               problem: str) -> None:
    moved = []
    for name in names:
        # One rename: after a crash the file has one name or the other (both directories are fsynced after).
        try:
            spool.fs.rename(spool.path("queue", name), spool.path("corrupt", name))
        except FileNotFoundError:
            continue  # gone since the listing (a recovery in the background runs beside the server)
        moved.append(name)
    if moved:
        report.corrupt.extend(moved)
        report.problems[key] = (kind, problem)
