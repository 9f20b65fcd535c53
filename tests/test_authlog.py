"""
Tests for L{gomail.auth.authlog.AuthLog}: entries buffered in memory, written
in one transaction per flush to the real SQLite database, purged after the
retention, and kept (bounded) when the database cannot take them.
"""

from __future__ import annotations

import os

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.auth.authlog import AuthLog, AuthLogEntry
from gomail.auth.users import SQLiteUserStore

DAY = 86400.0


def entry(time: float, user: str = "alice", result: str = "success") -> AuthLogEntry:
    return AuthLogEntry(time, user, "imap", "192.0.2.1", result, "password", 1.5, "10.0.0.5:143")


class AuthLogDatabaseTests(TestCase):
    """Against a real user database (its adbapi pool in a real thread)."""

    async def log(self, retention_days: int = 30) -> AuthLog:
        store = SQLiteUserStore(os.path.join(os.path.abspath(self.mktemp()), "gomail.db"))
        self.addCleanup(store.close)
        await store.start()
        self.clock = Clock()
        return AuthLog(store.pool, self.clock, retention_days)

    async def test_flush_writes_and_query_reads(self) -> None:
        """Recorded entries reach the database at flush; query returns them newest first, by user if asked."""
        log = await self.log()
        for i, user in enumerate(("alice", "bob", "alice")):
            log.record(entry(1000.0 + i, user))
        self.assertEqual(await log.query(), [])
        await log.flush()
        self.assertEqual(log.buffer, [])
        self.assertEqual([e.time for e in await log.query()], [1002.0, 1001.0, 1000.0])
        self.assertEqual(await log.query(user="bob"), [entry(1001.0, "bob")])
        self.assertEqual([e.time for e in await log.query(since=1001.0, limit=1)], [1002.0])

    async def test_purge_keeps_the_retention(self) -> None:
        """purge() deletes entries older than retention_days before now, and only those."""
        log = await self.log(retention_days=1)
        self.clock.advance(10 * DAY)
        log.record(entry(8 * DAY))
        log.record(entry(9.5 * DAY))
        await log.flush()
        await log.purge()
        self.assertEqual([e.time for e in await log.query()], [9.5 * DAY])


class FakePool:
    """runInteraction answering from a list of results (a failure or None)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.broken = False

    def runInteraction(self, function, *args):
        self.calls.append((function.__name__, args))
        return fail(OSError("database is locked")) if self.broken else succeed(None)


class AuthLogBufferTests(SynchronousTestCase):
    """The buffer in front of the database."""

    def test_failed_flush_keeps_entries(self) -> None:
        """When the database refuses a batch, its entries stay buffered, in order, for the next flush."""
        pool = FakePool()
        log = AuthLog(pool, Clock(), 30)
        log.record(entry(1.0))
        pool.broken = True
        self.successResultOf(log.flush())
        log.record(entry(2.0))
        self.assertEqual([e.time for e in log.buffer], [1.0, 2.0])
        pool.broken = False
        self.successResultOf(log.flush())
        self.assertEqual(log.buffer, [])
        self.assertEqual([e.time for e in pool.calls[-1][1][0]], [1.0, 2.0])

    def test_full_buffer_drops_oldest(self) -> None:
        """A full buffer drops its oldest tenth instead of growing without bound."""
        log = AuthLog(FakePool(), Clock(), 30)
        log.MAX_BUFFER = 10
        for i in range(11):
            log.record(entry(float(i)))
        self.assertEqual([e.time for e in log.buffer], [float(i) for i in range(1, 11)])
        self.assertEqual(log.dropped, 1)

    def test_service_flushes_every_second_and_at_stop(self) -> None:
        """Started, it writes once a second on its clock; stopping writes what is left."""
        pool, clock = FakePool(), Clock()
        log = AuthLog(pool, clock, 30)
        log.startService()
        log.record(entry(1.0))
        clock.advance(1.0)
        self.assertIn("insert_entries", [name for name, _ in pool.calls])
        log.record(entry(2.0))
        self.successResultOf(log.stopService())
        self.assertEqual(log.buffer, [])
        self.assertEqual(clock.getDelayedCalls(), [])
