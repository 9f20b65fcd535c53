"""The spool's writer lock (L{gomail.control.lock}): taken without waiting by the command, held by a server."""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gomail.control.lock import POLL_INTERVAL, LockHeld, SpoolLock, lock_path, try_lock


class TryLockTests(SynchronousTestCase):
    """try_lock: the command's non-blocking take."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_exclusive(self) -> None:
        """Held once, a second take gets None; after the holder closes it, it can be taken again."""
        fd = try_lock(self.directory)
        self.assertIsNotNone(fd)
        self.assertIsNone(try_lock(self.directory))
        os.close(fd)
        again = try_lock(self.directory)
        self.assertIsNotNone(again)
        os.close(again)

    def test_created_private(self) -> None:
        """A lock file that did not exist is created mode 0600 as <spool>/writer.lock."""
        os.close(try_lock(self.directory))
        self.assertEqual(stat.S_IMODE(os.stat(lock_path(self.directory)).st_mode), 0o600)
        self.assertEqual(lock_path(self.directory), os.path.join(self.directory, "writer.lock"))

    def test_no_spool(self) -> None:
        """A directory that does not exist: OSError, nothing created."""
        missing = os.path.join(self.directory, "absent")
        self.assertRaises(FileNotFoundError, try_lock, missing)
        self.assertFalse(os.path.exists(missing))


class SpoolLockTests(SynchronousTestCase):
    """SpoolLock: the server's own hold on the lock when its writers are threads."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.service = SpoolLock(self.clock, self.directory, timeout=1.0)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_held_while_running(self) -> None:
        """Started, the server holds the lock (a command cannot take it); stopped, it is free."""
        self.successResultOf(self.service.startService())
        self.assertIsNone(try_lock(self.directory))
        self.service.stopService()
        fd = try_lock(self.directory)
        self.assertIsNotNone(fd)
        os.close(fd)

    def test_waits_for_a_holder(self) -> None:
        """While a command holds the lock, the start waits (saying so once) and fires once it is let go."""
        os.makedirs(self.directory)
        held = try_lock(self.directory)
        d = self.service.startService()
        self.clock.advance(POLL_INTERVAL * 3)
        self.assertNoResult(d)
        waits = [e for e in self.events if "waiting for" in e.get("log_format", "")]
        self.assertEqual(len(waits), 1)
        os.close(held)
        self.clock.advance(POLL_INTERVAL)
        self.successResultOf(d)
        self.service.stopService()

    def test_gives_up(self) -> None:
        """Held past the timeout: the start fails with one line naming the lock file."""
        os.makedirs(self.directory)
        held = try_lock(self.directory)
        self.addCleanup(os.close, held)
        d = self.service.startService()
        self.clock.pump([POLL_INTERVAL] * 25)
        failure = self.failureResultOf(d, LockHeld)
        self.assertIn(f"another process holds {lock_path(self.directory)}", str(failure.value))
