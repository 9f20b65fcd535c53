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

from gomail.spool.envelope import Envelope, EnvelopeError, new_queue_id
from gomail.spool.fs import FileSystem, read_queued
from gomail.spool.incoming import IncomingMessage
from gomail.spool.integrity import check_file
from gomail.spool.recent import RecentContent
from gomail.spool.recovery import RecoveryReport, scan_queue
from gomail.spool.spares import SpareFiles
from gomail.spool.writer import ImmediateWriter

RunInThread = Callable[..., Deferred]
SUBDIRECTORIES = ("tmp", "queue", "failed", "corrupt", "mailbox")


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
    #: The name a writer process knows this spool by (see L{gomail.spool.process}).
    job_target = "spool"

    def __init__(self, directory: str, clock: IReactorTime, run: RunInThread,
                 fs: FileSystem | None = None, min_free_bytes: int = 0, writer: Any = None,
                 spare_files: int = 0, recent_content_bytes: int = 0) -> None:
        self.directory = directory
        self.clock = clock
        self.run = run
        self.writer = writer if writer is not None else ImmediateWriter()
        self.fs = fs or FileSystem()
        self.min_free_bytes = min_free_bytes
        #: Where removals go (default: the writer): a second writer keeps them
        #: from delaying the commits that SMTP clients wait on.
        self.removal_writer: Any = None
        #: Up to C{spare_files} removed messages' files, reused by the next
        #: commits (see L{gomail.spool.spares}); the server keeps some, the
        #: one-shot C{gomail queue} command none.
        self.spares = SpareFiles(self.path("tmp"), spare_files)
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
        """The file operations in use (tests swap in failing ones)."""
        return self._fs

    @fs.setter
    def fs(self, fs: FileSystem) -> None:
        self._fs = fs
        if isinstance(self.writer, ImmediateWriter):
            self.writer.fs = fs

    def path(self, *parts: str) -> str:
        """A path inside the spool directory."""
        return os.path.join(self.directory, *parts)

    # -- start-up ---------------------------------------------------------

    def prepare(self) -> None:
        """
        Create the directories, check they are writable, empty ``tmp/`` and
        count the queue. Runs once at start, before any listener serves.

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
            self.queued = sum(1 for name in os.listdir(self.path("queue")) if name.endswith(".json"))
        except OSError as e:
            raise SpoolError(f"spool directory {self.directory} is not usable: {e.strerror} ({e.filename})") from None
        if leftovers:
            self.log.info("removed {count} unfinished messages from {directory}/tmp",
                          count=len(leftovers), directory=self.directory)

    def recover(self) -> Deferred:
        """Scan ``queue/`` in the I/O pool (L{scan_queue}); fires with a L{RecoveryReport}."""
        return self.run(scan_queue, self).addCallback(self._report)

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

    def _report(self, report: RecoveryReport) -> RecoveryReport:
        for key, (kind, problem) in report.problems.items():
            self.log.error("moved {kind} queue entry {queue_id} to {directory}/corrupt: {problem}",
                           kind=kind, queue_id=key, directory=self.directory, problem=problem)
        self.corrupt_total += len(report.problems)
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
        Have the writer finish the message (L{finish_files}); fires once it and
        the C{queue/} directory are on disk. Takes C{fd}, the descriptor of what
        was already written to C{tmp/} (None: nothing was): it is closed
        whatever happens. A writer in another process cannot be handed a
        descriptor, so then it is closed first and the file reopened there.
        """
        if fd is not None and not self.writer.in_process:
            return self.run(self.fs.close, fd).addCallback(
                lambda _: self.writer.call(self, "finish_files", queue_id, None, chunks, envelope, size, True))
        return self.writer.call(self, "finish_files", queue_id, fd, chunks, envelope, size)

    def finish_files(self, queue_id: str, fd: int | None, chunks: list[bytes], envelope: bytes,
                     size: int | None = None, started: bool = False) -> Any:
        """
        (writer, generator) Write the rest of the content (C{size} bytes in all,
        by default those of C{chunks}) and the envelope, have both fsynced, then
        rename them into ``queue/`` (content first). C{fd} is the descriptor of
        the content's start already in C{tmp/}; None with C{started} means that
        file is to be reopened (it was written by another process), None alone
        that there is none yet.
        """
        if size is None:
            size = sum(len(chunk) for chunk in chunks)
        fs = self.fs
        if fd is None:
            path = self.path("tmp", queue_id + ".eml")
            fd = fs.open_appending(path) if started else self.spares.create(fs, path)
        try:
            fs.write(fd, chunks)
            fs.trim(fd, size)
            envelope_fd = self.spares.create(fs, self.path("tmp", queue_id + ".json"))
            try:
                fs.write(envelope_fd, [envelope])
                fs.trim(envelope_fd, len(envelope))
                yield [fd, envelope_fd]
            finally:
                fs.close(envelope_fd)
        finally:
            fs.close(fd)
        fs.rename(self.path("tmp", queue_id + ".eml"), self.path("queue", queue_id + ".eml"))
        fs.rename(self.path("tmp", queue_id + ".json"), self.path("queue", queue_id + ".json"))
        return None, [self.path("queue")]

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
        moved = await writer.call(self, "_move_to_corrupt", queue_id)
        self.queued = max(0, self.queued - 1)
        self.corrupt_total += 1
        self.log.error("moved damaged queue entry {queue_id} ({files}) to {directory}/corrupt instead of "
                       "delivering it: {problem}", queue_id=queue_id, files=", ".join(moved) or "no files",
                       directory=self.directory, problem=problem)

    def _move_to_corrupt(self, queue_id: str) -> tuple[list[str], list[str]]:
        """(writer) Rename C{queue_id}'s files from ``queue/`` into ``corrupt/``; returns their names."""
        moved = []
        for ext in (".json", ".eml"):
            try:
                self.fs.rename(self.path("queue", queue_id + ext), self.path("corrupt", queue_id + ext))
            except FileNotFoundError:
                continue
            moved.append(queue_id + ext)
        return moved, [self.path("corrupt"), self.path("queue")]

    def _write_envelope(self, envelope: Envelope) -> Any:
        tmp = self.path("tmp", envelope.id + ".json.new")
        try:
            fd = self.spares.create(self.fs, tmp)
            try:
                data = envelope.to_json()
                self.fs.write(fd, [data])
                self.fs.trim(fd, len(data))
                yield [fd]
            finally:
                self.fs.close(fd)
            self.fs.rename(tmp, self.path("queue", envelope.id + ".json"))
            return None, [self.path("queue")]
        except Exception:
            # A leftover would make every later update of this message fail (create is O_EXCL).
            self.fs.unlink(tmp)
            raise

    async def update(self, envelope: Envelope) -> None:
        """Replace a queued message's envelope atomically and durably."""
        await self.writer.call(self, "_write_envelope", envelope)

    def _remove_files(self, queue_id: str, durable: bool) -> tuple[list[str], list[str]]:
        """(writer) Remove both files; returns the spares made and the directories to fsync."""
        # The envelope goes first: without it the content is an uncommitted leftover.
        made = [self.spares.retire(self.fs, self.path("queue", queue_id + ext)) for ext in (".json", ".eml")]
        spares = [spare for spare in made if spare is not None]
        # A spare is reused only after its removal is on disk, so making one makes the removal durable.
        return spares, [self.path("queue")] if durable or spares else []

    async def remove(self, queue_id: str, durable: bool = True) -> None:
        """
        Delete a delivered message from the queue. With C{durable}, only once the
        removal is on disk; without, a crash may bring the message back, which
        suits deliveries that recognise a repeat (the Maildir one does) and
        keeps a directory fsync off the intake path.
        """
        self.recent.forget(queue_id)
        writer = self.removal_writer or self.writer
        spares = await writer.call(self, "_remove_files", queue_id, durable)
        if spares:
            if writer.in_process:
                self.spares.publish(spares)
            else:
                # The spares belong to the writer process's spool, where the next commits are made.
                writer.call(self, "publish_spares", spares).addErrback(
                    lambda f: self.log.failure("could not offer spare files", f))
        self.queued = max(0, self.queued - 1)

    def publish_spares(self, spares: list[str]) -> tuple[None, list[str]]:
        """(writer) Offer C{spares} to the next commits (their removal is on disk already)."""
        self.spares.publish(spares)
        return None, []
