"""
Test helpers for the spool: a synchronous C{run}, a L{FileSystem} that fails
or "crashes" at a chosen step, and shortcuts to build and fill a spool.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from gomail.spool.envelope import Envelope, Recipient
from gomail.spool.fs import FileSystem
from gomail.spool.integrity import digest_text, new_digest
from gomail.spool.store import Spool


def synchronous_run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """Run blocking spool work right away instead of in a thread pool."""
    return maybeDeferred(f, *args, **kwargs)


class Crash(BaseException):
    """
    A simulated power cut. It is a BaseException so that no C{except Exception}
    cleanup runs, as none would after a real crash.
    """


class ScriptedFileSystem(FileSystem):
    """
    A real L{FileSystem} that records every step and raises C{error} at step
    number C{fail_at} (counting from 0).

    A L{Crash} is final: every later step crashes too, because a dead process
    does nothing more. Any other error (an C{OSError}) happens once.
    Descriptors are tracked, so tests can check none leaks and none is closed
    twice; L{close_all} closes what a crash left open.
    """

    def __init__(self, root: str = "", fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.root = root
        self.fail_at = fail_at
        self.error = error
        self.steps: list[str] = []
        self.crashed = False
        self.open_fds: set[int] = set()
        self.double_closes: list[int] = []

    def _name(self, path: str) -> str:
        return os.path.relpath(path, self.root) if self.root else path

    def _step(self, label: str) -> None:
        index = len(self.steps)
        self.steps.append(label)
        if self.crashed:
            raise Crash(f"already crashed; step {index}: {label}")
        if index == self.fail_at and self.error is not None:
            if isinstance(self.error, Crash):
                self.crashed = True
            raise self.error

    def create(self, path: str) -> int:
        self._step(f"create {self._name(path)}")
        fd = super().create(path)
        self.open_fds.add(fd)
        return fd

    def open_existing(self, path: str) -> int:
        self._step(f"open_existing {self._name(path)}")
        fd = super().open_existing(path)
        self.open_fds.add(fd)
        return fd

    def write(self, fd: int, chunks: list[bytes]) -> None:
        self._step(f"write {sum(len(c) for c in chunks)} bytes")
        super().write(fd, chunks)

    def trim(self, fd: int, length: int) -> None:
        self._step(f"trim {length}")
        super().trim(fd, length)

    def empty(self, path: str) -> None:
        self._step(f"empty {self._name(path)}")
        super().empty(path)

    def links_and_size(self, path: str) -> tuple[int, int]:
        self._step(f"links_and_size {self._name(path)}")
        return super().links_and_size(path)

    def fsync(self, fd: int) -> None:
        self._step("fsync")
        super().fsync(fd)

    def close(self, fd: int) -> None:
        if fd not in self.open_fds:
            self.double_closes.append(fd)
        try:
            self._step("close")
        except OSError:
            # close(2) releases the descriptor even when it reports an error.
            self.open_fds.discard(fd)
            os.close(fd)
            raise
        # (After a Crash the descriptor stays open until close_all, as in a dead process.)
        self.open_fds.discard(fd)
        super().close(fd)

    def rename(self, source: str, target: str) -> None:
        self._step(f"rename {self._name(source)} {self._name(target)}")
        super().rename(source, target)

    def fsync_directory(self, path: str) -> None:
        self._step(f"fsync_directory {self._name(path)}")
        super().fsync_directory(path)

    def unlink(self, path: str) -> None:
        self._step(f"unlink {self._name(path)}")
        super().unlink(path)

    def write_file(self, path: str, data: bytes) -> None:
        self._step(f"write_file {self._name(path)}")
        super().write_file(path, data)

    def close_all(self) -> None:
        """Close every descriptor still open (what the kernel does for a dead process)."""
        for fd in sorted(self.open_fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self.open_fds.clear()


def make_spool(directory: str, clock: Clock | None = None, fs: FileSystem | None = None,
               run: Callable[..., Deferred] = synchronous_run, min_free_bytes: int = 0,
               spare_files: int = 0, recent_content_bytes: int = 0) -> Spool:
    """A prepared spool in C{directory} working synchronously; C{fs} is used after preparation."""
    spool = Spool(directory, clock or Clock(), run, min_free_bytes=min_free_bytes, spare_files=spare_files,
                  recent_content_bytes=recent_content_bytes)
    spool.prepare()
    if fs is not None:
        spool.fs = fs
    return spool


def new_envelope(queue_id: str, *recipients: str, sender: str = "sender@example.com",
                 received: float = 0.0, content: bytes | None = None) -> Envelope:
    """An envelope as the SMTP side makes one; with C{content}, recording its size and digest as a commit does."""
    envelope = Envelope(id=queue_id, sender=sender,
                        recipients=[Recipient(a) for a in recipients or ("rcpt@example.com",)],
                        received=received, client_address="192.0.2.1", client_helo="client.example")
    if content is not None:
        envelope.size, envelope.digest = len(content), content_digest(content)
    return envelope


def content_digest(content: bytes) -> str:
    """The digest an envelope records for C{content}."""
    digest = new_digest()
    digest.update(content)
    return digest_text(digest)


def start_commit(spool: Spool, content: bytes, *recipients: str, chunk: int = 8192,
                 received: float = 0.0) -> tuple[Envelope, Deferred]:
    """Receive C{content} in chunks as DATA would, then commit; returns the envelope and the commit's Deferred."""
    message = spool.new_message()
    for start in range(0, len(content), chunk):
        message.write(content[start:start + chunk])
    envelope = new_envelope(message.id, *recipients, received=received)
    return envelope, Deferred.fromCoroutine(message.commit(envelope))


def listing(spool: Spool, name: str) -> list[str]:
    """The sorted file names in one spool subdirectory."""
    return sorted(os.listdir(spool.path(name)))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
