# -*- test-case-name: tests.test_delivery_content -*-
"""
Message content on its way to a smarthost, read off the reactor thread.

twisted.mail's client sends DATA with a C{FileSender}, which calls the file's
C{read()} on the reactor thread: a large message, or one no longer in the page
cache, would stall every other connection while the disk answers. Here the
content is a L{ContentSource} whose reads run in the spool's I/O pool, and
L{send_content} writes it chunk by chunk as the transport takes it (a push
producer registered with the transport), so neither the reactor waits for the
disk nor a whole message sits in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gomail.spool.incoming import is_transparent
from gomail.spool.integrity import (
    CorruptContent,
    digest_problem,
    digest_text,
    new_digest,
    size_problem,
)

#: Bytes read per hand-off to the I/O pool.
CHUNK_SIZE = 256 * 1024


class ContentSource(Protocol):
    """Where a message's bytes come from, one chunk at a time."""

    #: The bytes can be sent as SMTP DATA unchanged: CRLF line endings only,
    #: no line starting with a dot (RFC 5321 4.5.2, recorded at intake in
    #: L{gomail.spool.envelope.Envelope.transparent}); False: dot-stuff and check them.
    transparent: bool

    def read(self, size: int) -> Deferred:
        """Fires with up to C{size} more bytes; with C{b""} at the end."""

    def close(self) -> Deferred:
        """Release what the source holds (idempotent)."""


class FileContent:
    """A queued message file, opened and read in C{run} (the spool's I/O pool: C{Spool.run})."""

    def __init__(self, path: str, run: Callable[..., Deferred], transparent: bool = False) -> None:
        self.transparent = transparent
        self.path = path
        self.run = run
        self._file: Any = None
        self._at_end = False

    def read(self, size: int) -> Deferred:
        if self._at_end:
            return succeed(b"")
        return self.run(self._read, size)

    def close(self) -> Deferred:
        if self._file is None:
            return succeed(None)
        f, self._file = self._file, None
        return self.run(f.close)

    def _read(self, size: int) -> bytes:
        # (I/O pool) A short read is the end: the file is closed in the same hand-off, so a
        # message smaller than a chunk costs one trip to the pool, not three.
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 -- kept open across reads, closed by close()
        data = self._file.read(size)
        if len(data) < size:
            self._at_end = True
            f, self._file = self._file, None
            f.close()
        return data


class CheckedFileContent(FileContent):
    """
    A queued message file whose bytes are hashed as they are read: when they
    are not what the envelope records (the file changed after the attempt's
    check, L{gomail.spool.store.Spool.check_content}), the last read fails
    with L{CorruptContent} instead of ending, so the DATA never gets its final
    dot: the connection is dropped and the smarthost delivers nothing.
    """

    def __init__(self, path: str, run: Callable[..., Deferred], queue_id: str, size: int,
                 digest: str | None, transparent: bool = False) -> None:
        super().__init__(path, run, transparent)
        self.queue_id, self.size, self.digest = queue_id, size, digest
        self._hasher = new_digest(digest)
        self._seen = 0

    def _read(self, size: int) -> bytes:
        data = super()._read(size)
        self._hasher.update(data)
        self._seen += len(data)
        if self._at_end:
            problem = size_problem(self._seen, self.size)
            if problem is None and self.digest is not None:
                problem = digest_problem(digest_text(self._hasher), self.digest, self.size)
            if problem is not None:
                raise CorruptContent(self.queue_id, problem)
        return data


def content_opener(recent: Any, run: Callable[..., Deferred]) -> Callable[..., ContentSource]:
    """
    C{open(queue_id, path, envelope=None)}: a queued message's content from
    C{recent} (the spool's L{gomail.spool.recent.RecentContent}) when it holds
    it, else the file at C{path} read in C{run}, checked as it is read against
    C{envelope}'s size and digest when it is given (L{CheckedFileContent}).
    """
    def open_content(queue_id: str, path: str, envelope: Any = None) -> ContentSource:
        source: ContentSource
        transparent = envelope is not None and envelope.transparent
        content = recent.get(queue_id)
        if content is not None:
            source = BytesContent(content, transparent)
        elif envelope is not None:
            source = CheckedFileContent(path, run, queue_id, envelope.size, envelope.digest, transparent)
        else:
            source = FileContent(path, run)
        signature = envelope.extra.get("dkim") if envelope is not None else None
        if signature:
            # The DKIM-Signature field stored with the envelope (gomail.delivery.signing) goes first.
            return PrefixedContent(signature.encode("ascii"), source)
        return source
    return open_content


class PrefixedContent:
    """C{prefix}, then what C{source} holds."""

    def __init__(self, prefix: bytes, source: ContentSource) -> None:
        self.prefix, self.source = prefix, source
        self.transparent = source.transparent and prefix.endswith(b"\r\n") and is_transparent(prefix)

    def read(self, size: int) -> Deferred:
        if self.prefix:
            chunk, self.prefix = self.prefix, b""
            return succeed(chunk)
        return self.source.read(size)

    def close(self) -> Deferred:
        return self.source.close()


class BytesContent:
    """Content already in memory."""

    def __init__(self, data: bytes, transparent: bool = False) -> None:
        self.transparent = transparent
        self._data = memoryview(data)

    def read(self, size: int) -> Deferred:
        chunk, self._data = bytes(self._data[:size]), self._data[size:]
        return succeed(chunk)

    def close(self) -> Deferred:
        return succeed(None)


@implementer(IPushProducer)
class _Sender:
    """Pumps a source into a transport, pausing while the transport's buffer is full."""

    def __init__(self, source: ContentSource, transport: Any, transform: Callable[[bytes], bytes]) -> None:
        self.source, self.transport, self.transform = source, transport, transform
        self.stopped = False
        self._resumed: Deferred | None = None

    async def run(self) -> bool:
        self.transport.registerProducer(self, True)
        try:
            while not self.stopped:
                if self._resumed is not None:
                    await self._resumed
                    continue
                chunk = await self.source.read(CHUNK_SIZE)
                if not chunk or self.stopped:
                    break
                self.transport.write(self.transform(chunk))
        finally:
            await self.source.close()
            if not self.stopped:
                self.transport.unregisterProducer()
        return not self.stopped

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()


def send_content(source: ContentSource, transport: Any, transform: Callable[[bytes], bytes]) -> Deferred:
    """
    Write all of C{source}, each chunk through C{transform}, to C{transport}.

    @return: Deferred firing with True once everything is written, with False
        when the transport stopped it (the connection went away); failing with
        the source's read error.
    """
    return Deferred.fromCoroutine(_Sender(source, transport, transform).run())
