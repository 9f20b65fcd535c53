# -*- test-case-name: tests.test_cli_queue -*-
"""
C{gomail queue retry|flush|delete} when no server runs: the changes made on
the spool's files by this process.

Only while the caller holds the spool's writer lock (L{gomail.control.lock}):
then no server is starting, running or stopping on this spool, and these are
its only writer. The changes go through the same durable writer jobs as the
server's own (L{Spool.update}, L{Spool.remove}, L{FailedStore.retry},
L{FailedStore.delete}), run at once by an L{ImmediateWriter}, so they never
leave a partial file. A running server is asked instead (L{gomail.control}).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gomail.cli.queueview import UnknownMessage, clean, in_failed, in_queue, queued, wait
from gomail.delivery.failed import FailedStore
from gomail.spool.store import Spool


def _require(ids: list[str], present: Callable[[str], bool], where: str) -> None:
    missing = [i for i in ids if not present(i)]
    if missing:
        raise UnknownMessage(f"not in {where}: {', '.join(clean(i) for i in missing)}")


def retry(failed: FailedStore, ids: list[str] | None = None) -> tuple[int, list[str]]:
    """
    Move failed messages (C{ids}, or all when None) back to ``queue/`` with
    fresh counters. Returns how many were requeued and the ids that could not
    be (the failed store logs why; they stay in ``failed/``).

    @raise UnknownMessage: when an id is not in ``failed/``; then nothing is changed.
    """
    if ids is None:
        ids = failed.ids()
    else:
        _require(ids, lambda i: in_failed(failed, i), "failed/")
    requeued, problems = 0, []
    for queue_id in dict.fromkeys(ids):
        try:
            done = wait(failed.retry(queue_id))
        except KeyError:
            continue
        if done:
            requeued += done
        else:
            problems.append(queue_id)
    return requeued, problems


def flush(spool: Spool) -> tuple[int, list[str]]:
    """
    Make every queued message due now: its C{next_attempt} is set to the
    clock's time and the envelope rewritten atomically (L{Spool.update}), so
    the server that starts next tries it at once. Returns how many were
    rewritten and one line per message that could not be.
    """
    now = spool.clock.seconds()
    flushed, problems = 0, []
    for entry in queued(spool):
        if entry.envelope is None:
            problems.append(f"{entry.id}: unreadable envelope: {entry.error}")
            continue
        if not os.path.exists(spool.message_path(entry.id)):
            problems.append(f"{entry.id}: its content is missing (the next start moves it to corrupt/)")
            continue
        entry.envelope.next_attempt = now
        try:
            wait(spool.update(entry.envelope))
        except OSError as e:
            problems.append(f"{entry.id}: could not rewrite the envelope: {e.strerror}")
            continue
        flushed += 1
    return flushed, problems


def delete(spool: Spool, failed: FailedStore, ids: list[str]) -> int:
    """
    Delete messages for good, each from ``queue/`` or ``failed/`` (both, if a
    crash left a copy in each). Returns how many ids were deleted.

    @raise UnknownMessage: when an id is in neither; then nothing is deleted.
    """
    _require(ids, lambda i: in_queue(spool, i) or in_failed(failed, i), "queue/ or failed/")
    deleted = 0
    for queue_id in dict.fromkeys(ids):
        found = False
        if in_queue(spool, queue_id):
            wait(spool.remove(queue_id))
            found = True
        if in_failed(failed, queue_id):
            try:
                wait(failed.delete(queue_id))
                found = True
            except KeyError:
                pass
        deleted += found
    return deleted


def delete_all(spool: Spool, failed: FailedStore, queue_too: bool) -> int:
    """Delete everything in ``failed/`` (and in ``queue/`` with C{queue_too}); returns how many messages."""
    deleted = 0
    if queue_too:
        for entry in queued(spool):
            wait(spool.remove(entry.id))
            deleted += 1
    for queue_id in failed.ids():
        try:
            wait(failed.delete(queue_id))
        except KeyError:
            continue
        deleted += 1
    return deleted


__all__ = ["delete", "delete_all", "flush", "retry"]
