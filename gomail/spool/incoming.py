# -*- test-case-name: tests.test_spool -*-
"""A message being received: streamed to ``tmp/`` in the I/O pool, then committed."""

from __future__ import annotations

import contextlib
import errno
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gomail.spool.integrity import digest_text, new_digest

if TYPE_CHECKING:
    from gomail.spool.envelope import Envelope
    from gomail.spool.store import Spool


class IncomingMessage:
    """
    The content of one message on its way into the spool.

    Data is collected in memory only up to L{FLUSH_AT} bytes, then appended to
    ``tmp/<id>.eml`` in the spool's I/O pool, one write at a time and in order.
    Small messages therefore cost no thread hand-off until L{commit}, which
    writes the rest, fsyncs, and renames into ``queue/``.

    The content's digest (recorded in the envelope with its size, see
    L{gomail.spool.integrity}) is fed the same bytes in the same order: the
    blocks written to ``tmp/`` in the I/O pool next to their write (off the
    reactor, where large messages cost the most), the rest at the commit.
    """

    #: Up to this size a message stays whole in memory: its commit hands the
    #: writer the bytes (no tmp/ file written in the I/O pool, closed and
    #: reopened) and its relay sends them from memory (L{gomail.spool.recent}).
    #: At 64 KiB, 100 KB messages took 5.3 ms of CPU each, at 256 KiB 4.2 ms
    #: (bench/README.md); the price is at most this much per session in memory.
    FLUSH_AT = 256 * 1024
    #: Above this many unwritten bytes the sender should be paused.
    HIGH_WATER = 1024 * 1024

    log = Logger()

    def __init__(self, spool: Spool, queue_id: str) -> None:
        self.id = queue_id
        self.size = 0
        self._spool = spool
        self._chunks: list[bytes] = []
        self._buffered = 0
        # Fed by one thread at a time: the writes to tmp/ are serialised (_writing), and the
        # commit adds the rest only once they are done.
        self._digest = new_digest()
        self._fd: int | None = None
        self._writing: Deferred | None = None
        self._failure = None
        self._finished = False
        #: Whether the content can go out as SMTP DATA unchanged (L{is_transparent}); recorded in the envelope.
        self.transparent = True
        # Where the bytes so far end: at a line start, or after a CR (half a CRLF?).
        self._line_start, self._cr = True, False
        #: Called (no arguments) whenever a background write completes.
        self.on_drain: Callable[[], None] | None = None

    @property
    def backlog(self) -> int:
        """Bytes received but not yet handed to the file."""
        return self._buffered

    def write(self, data: bytes, lines_checked: bool = False) -> None:
        """
        Add received content (already unstuffed, CRLF line endings).

        @param lines_checked: the caller (the DATA reader) has seen that
            C{data} is whole lines ending in CRLF only, and clears
            L{transparent} itself when one of them starts with a dot; else
            the bytes are checked here (a pass over them: meant for headers).
        """
        if self._finished or not data:
            return
        if lines_checked:
            # Whole lines are transparent only when they start where a line starts.
            self.transparent = self.transparent and self._line_start and not self._cr
            self._line_start, self._cr = True, False
        elif self.transparent:
            self._check_transparency(data)
        self.size += len(data)
        if self._failure is not None:
            # The commit will fail with the first error; keep (and retry) nothing more.
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= self.FLUSH_AT and self._writing is None:
            self._flush()

    def _check_transparency(self, data: bytes) -> None:
        """Whether C{data} keeps the content transparent, a CRLF cut between two writes included."""
        at_line_start = self._line_start
        if self._cr:
            if not data.startswith(b"\n"):
                self.transparent = False
                return
            data, at_line_start = data[1:], True
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        self.transparent = is_transparent(data, at_line_start)
        self._line_start = data.endswith(b"\n") if data else at_line_start and not self._cr

    def _flush(self) -> None:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        d = self._spool.run(self._spool.append_tmp, self.id, self._fd, chunks, self._digest)
        self._writing = d
        d.addCallbacks(self._written, self._write_failed)

    def _written(self, fd: int) -> None:
        self._writing = None
        self._fd = fd
        if self._finished:
            return
        if self._buffered >= self.FLUSH_AT:
            self._flush()
        if self.on_drain is not None:
            self.on_drain()

    def _write_failed(self, failure) -> None:
        self._writing = None
        self._failure = failure
        self._chunks, self._buffered = [], 0
        if self.on_drain is not None:
            self.on_drain()

    async def commit(self, envelope: Envelope) -> None:
        """
        Make the message durable in ``queue/``: returns only once the content,
        the envelope and the directory entry are on stable storage.

        @raise Exception: any local failure; then nothing is left in the spool.
        """
        self._finished = True
        await self._idle()
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        for chunk in chunks:
            self._digest.update(chunk)
        envelope.size = self.size
        envelope.digest = digest_text(self._digest)
        envelope.transparent = self.transparent and self._line_start and not self._cr
        fd, self._fd = self._fd, None
        # No descriptor yet: nothing went to tmp/ before, every byte is in chunks.
        whole = fd is None
        try:
            if self._failure is not None:
                self._failure.raiseException()
            # commit_files closes the descriptor whatever happens: never close it again (another
            # thread may have been given the same number by then).
            handed, fd = fd, None
            await self._spool.commit_files(self.id, handed, chunks, envelope.to_json(), self.size)
        except Exception:
            # A real crash runs no cleanup; recovery handles that (see Spool.recover).
            await self._spool.run(self._spool.discard_files, self.id, fd)
            raise
        if whole:
            # Exactly the bytes now on disk; kept before delivery hears of the message.
            self._spool.recent.keep(self.id, b"".join(chunks))
        envelope.fresh = True
        self._spool.committed(envelope)

    async def settle(self) -> None:
        """Wait until no write to C{tmp/} is under way (then L{open_content} sees every byte so far)."""
        await self._idle()

    def open_content(self) -> io.RawIOBase | io.BytesIO:
        """
        A binary file object over the content received so far (call after
        L{settle}): what is in C{tmp/}, then what is still in memory. Read it
        in a thread when it may be large: a file read blocks.
        """
        memory = io.BytesIO(b"".join(self._chunks))
        if self._fd is None:
            return memory
        return _Joined(self._spool.path("tmp", self.id + ".eml"), self.size - self._buffered, memory)

    async def prepend(self, data: bytes) -> None:
        """
        Put C{data} (header fields a plugin adds at end of data) before the
        content, before the L{commit}. In memory it is one more chunk; once
        part of the message is in C{tmp/}, that file is copied behind C{data}
        into a new one, block by block in the I/O pool, and hashed again.
        """
        await self._idle()
        if self._failure is not None or not data:
            return  # the commit fails with the error
        if not (data.endswith(b"\r\n") and is_transparent(data)):
            self.transparent = False
        if self._fd is None:
            self._chunks.insert(0, data)
            self._buffered += len(data)
        else:
            # On failure the old file and its descriptor (still self._fd) stay for abort() to remove.
            self._fd, self._digest = await self._spool.run(
                prepend_tmp, self._spool, self.id, self._fd, data, self.size - self._buffered)
        self.size += len(data)

    def abort(self) -> Deferred:
        """Forget the message and remove what was written of it."""
        if self._finished:
            return succeed(None)
        self._finished = True
        self._chunks, self._buffered = [], 0
        return Deferred.fromCoroutine(self._abort())

    async def _abort(self) -> None:
        await self._idle()
        fd, self._fd = self._fd, None
        await self._spool.run(self._spool.discard_files, self.id, fd)

    async def _idle(self) -> None:
        while self._writing is not None:
            with contextlib.suppress(Exception):  # its failure is the commit's, reported there
                await self._writing


def is_transparent(data: bytes, at_line_start: bool = True) -> bool:
    """
    Whether C{data} can be sent as SMTP DATA as it is (RFC 5321 4.5.2,
    "transparency"): line endings are CRLF only (no bare CR or LF) and no
    line starts with a dot (C{at_line_start}: whether its first byte starts one).
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf or b"\r\n." in data:
        return False
    return not (at_line_start and data.startswith(b"."))


#: Bytes copied at a time when header fields are put before a message already in tmp/.
PREPEND_BLOCK = 1024 * 1024


def prepend_tmp(spool: Spool, queue_id: str, fd: int, data: bytes, length: int) -> tuple[int, Any]:
    """
    (I/O pool) Replace ``tmp/<id>.eml``, whose first C{length} bytes are the
    message so far (C{fd} writes it), with C{data} followed by them; returns
    the new file's descriptor (positioned at its end) and the digest of
    its content. C{fd} is closed. The old file is read in blocks: a large
    message is never held in memory.
    """
    path = spool.path("tmp", queue_id + ".eml")
    staging = spool.path("tmp", queue_id + ".prepend")
    digest = new_digest()
    digest.update(data)
    new_fd = spool.fs.create(staging)
    try:
        spool.fs.write(new_fd, [data])
        with open(path, "rb") as old:
            while length > 0:
                block = old.read(min(PREPEND_BLOCK, length))
                if not block:
                    raise OSError(errno.EIO, f"{path} is shorter than the {length} bytes written to it")
                length -= len(block)
                digest.update(block)
                spool.fs.write(new_fd, [block])
        spool.fs.rename(staging, path)
    except BaseException:
        spool.fs.close(new_fd)
        spool.fs.unlink(staging)
        raise
    spool.fs.close(fd)
    return new_fd, digest


class _Joined(io.RawIOBase):
    """The first C{length} bytes of the file at C{path}, then C{rest} (read-only)."""

    def __init__(self, path: str, length: int, rest: io.BytesIO) -> None:
        super().__init__()
        self._file = open(path, "rb")  # noqa: SIM115 -- closed by close()
        self._left = length
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        if self._left > 0:
            count = self._file.readinto(view[:min(len(view), self._left)])
            if count:
                self._left -= count
                return count
            self._left = 0
        return self._rest.readinto(view)

    def close(self) -> None:
        self._file.close()
        super().close()
