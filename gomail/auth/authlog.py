# -*- test-case-name: tests.test_authlog -*-
"""
The audit log of login attempts through nginx auth_http, kept in the user database.

nginx asks once per login, possibly thousands of times a second, so entries are
buffered in memory and written in one transaction per second (and at stop);
entries older than the retention are deleted hourly. A full buffer (the
database stuck) drops the oldest entries with a warning rather than growing
without bound: the log is evidence, not a queue of mail.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gomail.auth import authrollup
from gomail.servicekit import PeriodicService

#: Control characters: what no stored text, and no header value, may carry.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class AuthLogEntry(NamedTuple):
    """
    One attempt. A tuple, so that a batch goes to C{executemany} as it is:
    converting thousands of dataclasses a second (C{dataclasses.astuple}
    deep-copies) held the GIL in the database thread for tens of milliseconds
    and stalled the reactor.
    """

    time: float
    user: str
    protocol: str
    client_ip: str
    result: str  # success, failure, tempfail, refused
    reason: str  # password, cache, app-password, bad-password, locked, blacklisted, ...
    latency_ms: float
    backend: str | None = None


def insert_entries(cursor: Any, entries: list[AuthLogEntry]) -> None:
    """Write C{entries}, and add them to the dashboard's rollups in the same transaction."""
    after = authrollup.last_id(cursor)
    cursor.executemany(
        "INSERT INTO auth_log (time, user, protocol, client_ip, result, reason, latency_ms, backend)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", entries)
    authrollup.add_new(cursor, after)


def purge_entries(cursor: Any, before: float, now: float | None = None) -> int:
    """Delete the entries older than C{before}; with C{now}, the rollups older than they are kept too."""
    cursor.execute("DELETE FROM auth_log WHERE time < ?", (before,))
    count: int = cursor.rowcount
    if now is not None:
        authrollup.purge(cursor, max(before, now - authrollup.KEEP_SECONDS))
    return count


def query_entries(cursor: Any, since: float = 0.0, user: str | None = None, limit: int = 100) -> list[AuthLogEntry]:
    """The newest entries first, from C{since} on, optionally of one user."""
    sql = "SELECT time, user, protocol, client_ip, result, reason, latency_ms, backend FROM auth_log WHERE time >= ?"
    args: list[Any] = [since]
    if user is not None:
        sql += " AND user = ?"
        args.append(user)
    cursor.execute(sql + " ORDER BY time DESC, id DESC LIMIT ?", (*args, limit))
    return [AuthLogEntry(*row) for row in cursor.fetchall()]


def printable(text: str, limit: int = 254) -> str:
    """A client-supplied string made safe to store and show: no control characters, bounded."""
    # Lone surrogates (from a JSON escape) are no text: SQLite and every log refuse them.
    return CONTROL_CHARACTERS.sub("?", text).encode("utf-8", "replace").decode("utf-8")[:limit]


class AuthLog(MultiService):
    """
    Buffers entries and writes them through the user store's pool: flushed
    every FLUSH_SECONDS and purged of entries older than the retention every
    PURGE_SECONDS (and at start), by its two L{PeriodicService} children.
    """

    log = Logger()
    FLUSH_SECONDS = 1.0
    PURGE_SECONDS = 3600.0
    MAX_BUFFER = 100_000

    def __init__(self, pool: Any, clock: Any, retention_days: int) -> None:
        """@param pool: an adbapi ConnectionPool (the user store's C{pool})."""
        super().__init__()
        self.pool = pool
        self.clock = clock
        self.retention = retention_days * 86400
        self.buffer: list[AuthLogEntry] = []
        self.dropped = 0
        self._flushing: Deferred | None = None
        PeriodicService("audit log flush", self.FLUSH_SECONDS, self.flush, clock, now=False).setServiceParent(self)
        PeriodicService("audit log purge", self.PURGE_SECONDS, self.purge, clock).setServiceParent(self)

    def record(self, entry: AuthLogEntry) -> None:
        if len(self.buffer) >= self.MAX_BUFFER:
            del self.buffer[: len(self.buffer) // 10]
            self.dropped += 1
            self.log.warn("auth log buffer full: dropping old entries (database not keeping up)")
        self.buffer.append(entry)

    def flush(self) -> Deferred:
        """Write what is buffered; fires when written (errors are logged, the entries kept for the next try)."""
        if self._flushing is not None or not self.buffer:
            return succeed(None)
        entries, self.buffer = self.buffer, []

        def failed(failure: Any) -> None:
            self.log.warn("could not write the auth log: {error}", error=failure.getErrorMessage())
            self.buffer[:0] = entries

        def done(_: Any) -> None:
            self._flushing = None

        # Set before the callbacks: a pool that answers at once must still clear it.
        d = self._flushing = self.pool.runInteraction(insert_entries, entries)
        d.addErrback(failed).addBoth(done)
        return d

    def purge(self) -> Deferred:
        now = self.clock.seconds()
        d = self.pool.runInteraction(purge_entries, now - self.retention, now)
        return d.addErrback(lambda f: self.log.warn("could not purge the auth log: {error}",
                                                    error=f.getErrorMessage()))

    def query(self, since: float = 0.0, user: str | None = None, limit: int = 100) -> Deferred:
        return self.pool.runInteraction(query_entries, since, user, limit)

    def stopService(self) -> Deferred:  # type: ignore[override]
        # The timers stop first (waiting for a flush or purge in progress), then what is buffered is written.
        d = super().stopService()
        d.addCallback(lambda _: self._flushing or succeed(None))
        return d.addCallback(lambda _: self.flush())
