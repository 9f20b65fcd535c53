# -*- test-case-name: tests.test_spool -*-
"""
The durable on-disk queue.

Layout under the spool directory::

    tmp/      messages being received; anything here at start is removed
    queue/    committed messages: <id>.eml (content) and <id>.json (envelope)
    failed/   messages given up on (JSON with metadata and content)
    corrupt/  queue entries that could not be read, kept for a human
    mailbox/  local Maildir delivery

A message is committed when ``queue/<id>.json`` exists and the ``queue/``
directory has been fsynced: the content is written and fsynced first, then the
envelope, then both are renamed into ``queue/`` (content first), then the
directory is fsynced. Recovery (L{gomail.spool.recovery}) never deletes
anything in ``queue/``: entries it cannot deliver as they are (incomplete,
unreadable, damaged) move to ``corrupt/``; so does an entry whose content
fails its check before a delivery attempt (L{Spool.check_content}).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gomail.interfaces import ISpoolWriter
from gomail.spool.envelope import Envelope, EnvelopeError, new_queue_id
from gomail.spool.fs import FileSystem, read_queued
from gomail.spool.incoming import IncomingMessage
from gomail.spool.integrity import check_file
from gomail.spool.jobs import SpoolFiles, queuejobs
from gomail.spool.recent import RecentContent
from gomail.spool.recovery import QueueListing, RecoveryReport, list_queue, scan_entries, scan_queue
from gomail.spool.removals import Removals
from gomail.spool.spares import SpareFiles
from gomail.spool.writer import ImmediateWriter

RunInThread = Callable[..., Deferred]
SUBDIRECTORIES = ("tmp", "queue", "failed", "corrupt", "mailbox")
#: Queue entries read per hand-off to the I/O pool when recovering while the server runs.
RECOVERY_STEP = 2000


class SpoolError(Exception):
    """The spool cannot be used (not writable, not creatable)."""


class Spool:
    """
    The spool directory and every file operation on it.

    Blocking work never runs on the reactor thread: durable changes go to the
    C{writer} (a L{gomail.spool.writer.BatchWriter} in production), other file
    work through C{run} (normally C{deferToThreadPool} on an I/O pool). Tests
    pass a synchronous C{run}, the default L{ImmediateWriter}, and a
    L{FileSystem} that fails on purpose.
    """

    log = Logger()

    def __init__(self, directory: str, clock: IReactorTime, run: RunInThread,
                 fs: FileSystem | None = None, min_free_bytes: int = 0, writer: ISpoolWriter | None = None,
                 spare_files: int = 0, recent_content_bytes: int = 0, files: SpoolFiles | None = None) -> None:
        """
        @param files: the L{SpoolFiles} this process's writers share (the
            spares reused by commits); by default new ones, with
            C{spare_files} spares and C{fs}.
        @param writer: the L{ISpoolWriter} of commits and envelope rewrites
            (default: an L{ImmediateWriter} over C{files}).
        """
        self.directory = directory
        self.clock = clock
        self.run = run
        self.files = files or SpoolFiles(directory, fs or FileSystem(), spare_files)
        self.writer: ISpoolWriter = writer if writer is not None else ImmediateWriter(files=self.files)
        self.min_free_bytes = min_free_bytes
        #: Where removals go (default: the writer): a second writer keeps them
        #: from delaying the commits that SMTP clients wait on.
        self.removal_writer: ISpoolWriter | None = None
        self._removals = Removals(lambda: self.removal_writer or self.writer, self._removed)
        self._publishing = False
        #: Content of just-committed messages for their delivery (see L{gomail.spool.recent}).
        self.recent = RecentContent(recent_content_bytes)
        self.queued = 0
        #: Queue entries this process moved to corrupt/ (at recovery or before a delivery attempt).
        self.corrupt_total = 0
        self._listeners: list[Callable[[Envelope], Any]] = []
        self._space_checked_at: float | None = None
        self._space_ok = True

    @property
    def fs(self) -> FileSystem:
        """The file operations in use here and by in-process writers' jobs (tests swap in failing ones)."""
        return self.files.fs

    @fs.setter
    def fs(self, fs: FileSystem) -> None:
        self.files.fs = fs

    @property
    def spares(self) -> SpareFiles:
        """
        Removed messages' files reused by the next commits (see
        L{gomail.spool.spares}): those of the writers in this process (with a
        writer process, they are its own and these stay empty).
        """
        return self.files.spares

    def path(self, *parts: str) -> str:
        """A path inside the spool directory."""
        return os.path.join(self.directory, *parts)

    # -- start-up ---------------------------------------------------------

    def prepare(self) -> None:
        """
        Create the directories, check they are writable and empty ``tmp/``.
        Runs once at start, before any listener serves; the queue is counted
        by the listing that follows (L{list_queue}, or L{recover}).

        @raise SpoolError: with a one-line explanation.
        """
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self.fs.spread_subdirectories(self.directory)  # before tmp/ exists: it decides where tmp/ goes
            for name in SUBDIRECTORIES:
                os.makedirs(self.path(name), mode=0o700, exist_ok=True)
            probe = self.path("tmp", ".write-probe")
            self.fs.unlink(probe)  # left by a crash during an earlier start: create() would refuse it
            self.fs.write_file(probe, b"probe")
            os.unlink(probe)
            self.spares.forget()
            leftovers = os.listdir(self.path("tmp"))
            for name in leftovers:
                self.fs.unlink(self.path("tmp", name))
            if leftovers:
                self.fs.fsync_directory(self.path("tmp"))
        except OSError as e:
            raise SpoolError(f"spool directory {self.directory} is not usable: {e.strerror} ({e.filename})") from None
        if leftovers:
            self.log.info("removed {count} unfinished messages from {directory}/tmp",
                          count=len(leftovers), directory=self.directory)

    def recover(self) -> Deferred:
        """Scan ``queue/`` in the I/O pool (L{scan_queue}); fires with a L{RecoveryReport}."""
        return self.run(scan_queue, self).addCallback(self._report)

    def list_queue(self) -> Deferred:
        """
        List ``queue/`` once in the I/O pool (L{list_queue}, stray files set
        aside and logged): fires with the snapshot L{recover_entries} works
        through (a L{QueueListing}); sets C{queued} to the envelopes in it.
        """
        def listed(result: tuple[QueueListing, RecoveryReport]) -> QueueListing:
            listing, strays = result
            self._log_problems(strays)
            self.queued = listing.envelopes
            return listing
        return self.run(list_queue, self).addCallback(listed)

    async def recover_entries(self, listing: QueueListing, enqueue: Callable[[Envelope], Any],
                              step: int = RECOVERY_STEP, stopping: Callable[[], bool] = lambda: False) -> None:
        """
        Recover a snapshot of ``queue/`` (L{list_queue}) C{step} entries at a
        time in the I/O pool (L{scan_entries}), handing each deliverable
        envelope to C{enqueue}, while the server already runs: messages
        committed after the snapshot are not in it (they reach the queue
        through the listeners), so none is queued twice. C{queued} counted
        the snapshot at L{prepare}; entries set aside are taken off it.
        Ends early, between steps, once C{stopping()} is true.
        """
        recovered = corrupt = 0
        for start, chunk in listing.steps(step):
            if stopping():
                self.log.info("spool recovery stopped with {left} entries not read yet",
                              left=len(listing) - start)
                return
            report = await self.run(scan_entries, self, chunk)
            self._log_problems(report)
            exts = dict(chunk)
            counted = sum(1 for key in report.problems if ".json" in exts.get(key, ()))
            self.queued = max(0, self.queued - counted)
            corrupt += len(report.problems)
            recovered += len(report.envelopes)
            for envelope in report.envelopes:
                enqueue(envelope)
        self.log.info("spool recovered: {count} queued messages read ({corrupt} set aside)",
                      count=recovered, corrupt=corrupt)

    def read_queue(self) -> list[Envelope]:
        """(blocking) The envelopes of every committed message in ``queue/``, changing nothing."""
        queue = self.path("queue")
        names = set(os.listdir(queue))
        envelopes = []
        for name in names:
            if not name.endswith(".json") or name[:-5] + ".eml" not in names:
                continue
            try:
                envelopes.append(Envelope.from_json(read_queued(os.path.join(queue, name))))
            except (OSError, EnvelopeError):
                continue  # being replaced or removed right now, or for recovery to set aside
        return envelopes

    def _log_problems(self, report: RecoveryReport) -> None:
        for key, (kind, problem) in report.problems.items():
            self.log.error("moved {kind} queue entry {queue_id} to {directory}/corrupt: {problem}",
                           kind=kind, queue_id=key, directory=self.directory, problem=problem)
        self.corrupt_total += len(report.problems)

    def _report(self, report: RecoveryReport) -> RecoveryReport:
        self._log_problems(report)
        self.queued = len(report.envelopes)
        self.log.info("spool recovered: {count} queued messages", count=self.queued)
        return report

    # -- intake -----------------------------------------------------------

    def has_free_space(self) -> bool:
        """Whether the spool's file system has more than the configured minimum free (checked at most once a second)."""
        now = self.clock.seconds()
        if self._space_checked_at is None or now - self._space_checked_at >= 1.0:
            self._space_checked_at = now
            try:
                stats = os.statvfs(self.directory)
                self._space_ok = stats.f_bavail * stats.f_frsize > self.min_free_bytes
            except OSError:
                self._space_ok = False
        return self._space_ok

    def free_bytes(self) -> int:
        """Bytes available to us on the spool's file system."""
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    def new_message(self) -> IncomingMessage:
        """Start receiving a message under a fresh queue id."""
        return IncomingMessage(self, new_queue_id(self.clock.seconds()))

    def append_tmp(self, queue_id: str, fd: int | None, chunks: list[bytes], digest: Any = None) -> int:
        """
        (I/O pool) Append to ``tmp/<id>.eml``, creating it first if C{fd} is
        None; returns the descriptor. C{digest}, the message's hash object, is
        fed the chunks here, off the reactor.
        """
        if digest is not None:
            for chunk in chunks:
                digest.update(chunk)
        if fd is None:
            fd = self.spares.create(self.fs, self.path("tmp", queue_id + ".eml"))
            try:
                self.fs.write(fd, chunks)
            except BaseException:
                # The caller never learns this descriptor: close it here or it leaks.
                self.fs.close(fd)
                raise
            return fd
        self.fs.write(fd, chunks)
        return fd

    def commit_files(self, queue_id: str, fd: int | None, chunks: list[bytes], envelope: bytes,
                     size: int) -> Deferred:
        """
        Have the writer commit the message (L{queuejobs.commit_message}); fires
        once it and the C{queue/} directory are on disk. Takes C{fd}, the
        descriptor of what was already written to C{tmp/} (None: nothing was):
        it is closed whatever happens. A writer in another process cannot be
        handed a descriptor, so then it is closed first and the file reopened there.
        """
        if fd is not None and not self.writer.in_process:
            return self.run(self.fs.close, fd).addCallback(
                lambda _: self.writer.run(queuejobs.commit_message, queue_id=queue_id, chunks=chunks,
                                          envelope=envelope, size=size, started=True))
        return self.writer.run(queuejobs.commit_message, queue_id=queue_id, chunks=chunks, envelope=envelope,
                               size=size, fd=fd)

    def discard_files(self, queue_id: str, fd: int | None) -> None:
        """(I/O pool) Remove every trace of a message that was not committed."""
        if fd is not None:
            try:
                self.fs.close(fd)
            except OSError:
                pass
        for name in ("queue", "tmp"):
            for ext in (".json", ".eml"):
                try:
                    self.fs.unlink(self.path(name, queue_id + ext))
                except OSError as e:
                    self.log.error("could not remove {path}: {error}", path=e.filename, error=e.strerror)

    def committed(self, envelope: Envelope) -> None:
        """Record a newly committed message and tell the listeners."""
        self.queued += 1
        for listener in self._listeners:
            listener(envelope)

    def add_listener(self, listener: Callable[[Envelope], Any]) -> None:
        """Call C{listener(envelope)} for every message committed from now on."""
        self._listeners.append(listener)

    # -- delivery ---------------------------------------------------------

    def message_path(self, queue_id: str) -> str:
        """Where a queued message's content is."""
        return self.path("queue", queue_id + ".eml")

    async def check_content(self, envelope: Envelope) -> None:
        """
        Make sure what a delivery attempt is about to send is the content the
        envelope records (L{gomail.spool.integrity}). Content kept in memory
        (L{recent}) is the very bytes that were hashed and fsynced (or checked
        here before): nothing to read. The first attempt of a message this
        process has just committed (C{envelope.fresh}) reads it once, as it
        sends it, checked as it goes (L{gomail.delivery.content.CheckedFileContent}:
        a mismatch drops the connection before the final dot). Otherwise the
        file is checked in the I/O pool, and when it is small enough its
        checked bytes are kept in memory so that the attempt sends exactly
        them and reads the file only once.

        @raise gomail.spool.integrity.CorruptContent: when it is not (then
            call L{set_aside}).
        @raise OSError: the file cannot be read (a temporary failure).
        """
        if envelope.fresh or self.recent.get(envelope.id) is not None:
            return
        data = await self.run(check_file, envelope.id, self.message_path(envelope.id), envelope.size,
                              envelope.digest, self.recent.largest)
        if data is not None:
            self.recent.keep(envelope.id, data)

    async def set_aside(self, queue_id: str, problem: str) -> None:
        """
        Move a queued message whose content failed its check to ``corrupt/``
        (both files, durably), count it and log one line naming it and what
        is wrong. It leaves the queue: nothing of it is delivered.
        """
        self.recent.forget(queue_id)
        writer = self.removal_writer or self.writer
        moved = await writer.run(queuejobs.move_to_corrupt, queue_id=queue_id)
        self.queued = max(0, self.queued - 1)
        self.corrupt_total += 1
        self.log.error("moved damaged queue entry {queue_id} ({files}) to {directory}/corrupt instead of "
                       "delivering it: {problem}", queue_id=queue_id, files=", ".join(moved) or "no files",
                       directory=self.directory, problem=problem)

    async def update(self, envelope: Envelope) -> None:
        """Replace a queued message's envelope atomically and durably."""
        await self.writer.run(queuejobs.rewrite_envelope, queue_id=envelope.id, envelope=envelope.to_json())

    def _removed(self, count: int) -> None:
        self.queued = max(0, self.queued - count)

    def remove(self, queue_id: str, durable: bool = True) -> Deferred:
        """
        Delete a delivered message from the queue; fires once the removal is
        done (with C{durable}, on disk; without, a crash may bring the
        message back, which suits deliveries that recognise a repeat, as the
        Maildir one does, and keeps a directory fsync off the intake path).

        Removals asked for while one is in the writer go together in the
        next job (L{gomail.spool.removals}). A failed job fails each of its
        removals, and the queue keeps those messages and retries
        (L{gomail.delivery.queue}).
        """
        self.recent.forget(queue_id)
        return self._removals.remove(queue_id, durable)
