"""Group commit: many renames into one directory share one directory fsync."""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class GroupSync:
    """
    Coalesce requests to fsync one directory.

    A request made while a sync is running waits for the *next* sync (the running
    one may have started before the caller's rename). All requests waiting when a
    sync starts share it, so N concurrent commits cost about two directory fsyncs,
    not N.

    @param run_sync: starts one fsync and returns a Deferred for it (normally
        the directory fsync deferred to the I/O thread pool).
    """

    def __init__(self, run_sync: Callable[[], Deferred]) -> None:
        self._run_sync = run_sync
        self._waiting: list[Deferred] = []
        self._running = False
        self.syncs = 0

    def sync(self) -> Deferred:
        """Fires with None once a directory fsync that started after this call is done."""
        d: Deferred = Deferred()
        self._waiting.append(d)
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.syncs += 1
        self._run_sync().addBoth(self._finished, batch)

    def _finished(self, result: object, batch: list[Deferred]) -> None:
        self._running = False
        for d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
        # A waiter's callback may already have started the next sync (and queued more behind it).
        if self._waiting and not self._running:
            self._start()
