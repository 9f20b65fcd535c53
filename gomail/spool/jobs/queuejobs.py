# -*- test-case-name: tests.test_spool_jobs -*-
"""The queue's jobs: commit, rewrite an envelope, remove, set aside, publish spares (see L{gomail.spool.jobs})."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from gomail.spool.jobs import SpoolFiles

#: What a generator job is: it yields the descriptors to fsync, then returns (result, directories).
GeneratorJob = Generator[list[int], None, tuple[Any, list[str]]]


def commit_message(files: SpoolFiles, queue_id: str, chunks: list[bytes], envelope: bytes,
                   size: int | None = None, fd: int | None = None, started: bool = False) -> GeneratorJob:
    """
    Commit a message: write the rest of its content (C{size} bytes in all, by
    default those of C{chunks}) to C{tmp/<id>.eml} and its envelope to
    C{tmp/<id>.json}, have both fsynced, then rename them into C{queue/}
    (content first); C{queue/} is fsynced with the batch. C{fd} is the
    descriptor of the content's start already in C{tmp/} (only in the process
    that wrote it); without one, C{started} means that file exists (written
    by another process) and is reopened, else it is created. The descriptor
    is closed whatever happens.
    """
    if size is None:
        size = sum(len(chunk) for chunk in chunks)
    fs = files.fs
    if fd is None:
        path = files.path("tmp", queue_id + ".eml")
        fd = fs.open_appending(path) if started else files.spares.create(fs, path)
    try:
        fs.write(fd, chunks)
        fs.trim(fd, size)
        envelope_fd = files.spares.create(fs, files.path("tmp", queue_id + ".json"))
        try:
            fs.write(envelope_fd, [envelope])
            fs.trim(envelope_fd, len(envelope))
            yield [fd, envelope_fd]
        finally:
            fs.close(envelope_fd)
    finally:
        fs.close(fd)
    fs.rename(files.path("tmp", queue_id + ".eml"), files.path("queue", queue_id + ".eml"))
    fs.rename(files.path("tmp", queue_id + ".json"), files.path("queue", queue_id + ".json"))
    return None, [files.path("queue")]


def rewrite_envelope(files: SpoolFiles, queue_id: str, envelope: bytes) -> GeneratorJob:
    """Replace C{queue/<id>.json} with C{envelope}, atomically (a fsynced file renamed over it)."""
    fs = files.fs
    tmp = files.path("tmp", queue_id + ".json.new")
    try:
        fd = files.spares.create(fs, tmp)
        try:
            fs.write(fd, [envelope])
            fs.trim(fd, len(envelope))
            yield [fd]
        finally:
            fs.close(fd)
        fs.rename(tmp, files.path("queue", queue_id + ".json"))
        return None, [files.path("queue")]
    except Exception:
        # A leftover would make every later update of this message fail (create is O_EXCL).
        fs.unlink(tmp)
        raise


def remove_messages(files: SpoolFiles, queue_ids: list[str], durable: bool = True) -> tuple[list[str], list[str]]:
    """
    Remove each message's two files from C{queue/} (the envelope first:
    without it the content is an uncommitted leftover). Small files become
    spares (L{gomail.spool.spares}); returns their names, to be published with
    L{publish_spares} once this job's batch is durable. Without C{durable}
    (and no spare made) C{queue/} is not fsynced for them.
    """
    spares = []
    for queue_id in queue_ids:
        for ext in (".json", ".eml"):
            spare = files.spares.retire(files.fs, files.path("queue", queue_id + ext))
            if spare is not None:
                spares.append(spare)
    # A spare is reused only after its removal is on disk, so making one makes the removal durable.
    return spares, [files.path("queue")] if durable or spares else []


def publish_spares(files: SpoolFiles, spares: list[str]) -> tuple[None, list[str]]:
    """Offer C{spares} (made by L{remove_messages}, whose removal is on disk) to the next commits."""
    files.spares.publish(spares)
    return None, []


def move_to_corrupt(files: SpoolFiles, queue_id: str) -> tuple[list[str], list[str]]:
    """Rename a message's files from C{queue/} into C{corrupt/}; returns the names moved."""
    moved = []
    for ext in (".json", ".eml"):
        try:
            files.fs.rename(files.path("queue", queue_id + ext), files.path("corrupt", queue_id + ext))
        except FileNotFoundError:
            continue
        moved.append(queue_id + ext)
    return moved, [files.path("corrupt"), files.path("queue")]
