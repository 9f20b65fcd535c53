# -*- test-case-name: tests.test_control_lock -*-
"""
The spool's writer lock: an exclusive C{flock} on C{<spool>/writer.lock},
held by whoever writes the spool.

A server's writer child holds it while it works (L{gomail.spool.process});
with C{spool.writerProcess = false} the server's own process holds it
(L{SpoolLock}) from before the spool is prepared until its writers have
stopped. The C{gomail queue} command changes spool files only while it holds
it (L{try_lock}, never waiting): so it never writes next to a server that is
starting, running or stopping.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import deferLater
from twisted.logger import Logger

from gomail.deferreds import deferred_coroutine
from gomail.spool.process import LOCK_NAME

#: How often a starting server looks again at a lock someone else holds.
POLL_INTERVAL = 0.05


def lock_path(directory: str) -> str:
    """The writer lock of the spool in C{directory}."""
    return os.path.join(directory, LOCK_NAME)


def try_lock(directory: str) -> int | None:
    """
    Take the spool's writer lock without waiting: its descriptor (closing it
    lets go of the lock), or None while someone else holds it. A lock file
    this creates as root is given to the spool directory's owner, so the
    server (running as that user) can still open it.

    @raise OSError: when the lock file cannot be opened (no spool, no permission).
    """
    path = lock_path(directory)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.geteuid() == 0:
            owner = os.stat(directory)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class LockHeld(Exception):
    """Someone else held the spool's writer lock for longer than a starting server waits."""


class SpoolLock(Service):
    """
    Holds the spool's writer lock in the server's process (for the thread
    writers); its start fires once the lock is held, waiting up to C{timeout}
    seconds for someone else (a C{gomail queue} command, a server still
    stopping) to let go.
    """

    log = Logger()

    def __init__(self, clock: Any, directory: str, timeout: float = 30.0) -> None:
        self.clock = clock
        self.directory = directory
        self.timeout = timeout
        self._fd: int | None = None

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        super().startService()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        deadline = self.clock.seconds() + self.timeout
        waited = False
        while (fd := try_lock(self.directory)) is None:
            if self.clock.seconds() >= deadline:
                raise LockHeld(f"another process holds {lock_path(self.directory)} "
                               f"(is another gomail running on this spool?)")
            if not waited:
                self.log.warn("waiting for {path}: another process holds it", path=lock_path(self.directory))
                waited = True
            await deferLater(self.clock, POLL_INTERVAL, lambda: None)
        self._fd = fd

    def stopService(self) -> None:
        super().stopService()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["LockHeld", "SpoolLock", "lock_path", "try_lock"]
