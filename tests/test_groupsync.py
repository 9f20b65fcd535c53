"""
Tests for L{gomail.spool.groupsync.GroupSync}: concurrent commits share
directory fsyncs, and no commit is told "durable" by an fsync that started
before it asked.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gomail.spool.groupsync import GroupSync
from tests.spooltesting import listing, make_spool, start_commit


class ManualSyncs:
    """A C{run_sync} whose fsyncs finish when the test says so."""

    def __init__(self) -> None:
        self.started: list[Deferred] = []
        self.running = 0
        self.most_at_once = 0

    def __call__(self) -> Deferred:
        d: Deferred = Deferred()
        self.started.append(d)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        return d

    def finish(self, index: int, error: Exception | None = None) -> None:
        self.running -= 1
        if error is None:
            self.started[index].callback(None)
        else:
            self.started[index].errback(error)


class GroupSyncTests(SynchronousTestCase):
    """Sharing and ordering of directory fsyncs."""

    def setUp(self) -> None:
        self.syncs = ManualSyncs()
        self.group = GroupSync(self.syncs)

    def test_idle_request_starts_a_sync(self) -> None:
        """With nothing running a request starts a sync at once and fires when it is done."""
        d = self.group.sync()
        self.assertEqual(len(self.syncs.started), 1)
        self.assertNoResult(d)
        self.syncs.finish(0)
        self.assertIsNone(self.successResultOf(d))

    def test_requests_during_a_sync_share_the_next(self) -> None:
        """N requests made while a sync runs cost one more sync, not N."""
        first = self.group.sync()
        waiting = [self.group.sync() for _ in range(10)]
        self.assertEqual(len(self.syncs.started), 1)
        self.syncs.finish(0)
        self.successResultOf(first)
        self.assertEqual(len(self.syncs.started), 2)
        self.syncs.finish(1)
        for d in waiting:
            self.successResultOf(d)
        self.assertEqual((self.group.syncs, len(self.syncs.started)), (2, 2))

    def test_request_during_a_sync_waits_for_the_next(self) -> None:
        """The running sync may predate the caller's rename: its end does not answer a later request."""
        self.group.sync()
        later = self.group.sync()
        self.syncs.finish(0)
        self.assertNoResult(later)
        self.syncs.finish(1)
        self.successResultOf(later)

    def test_failure_reaches_every_waiter_of_the_batch(self) -> None:
        """A failed fsync fails all requests it was serving, and only those."""
        first = self.group.sync()
        batch = [self.group.sync() for _ in range(3)]
        self.syncs.finish(0)
        self.successResultOf(first)
        after = self.group.sync()
        self.syncs.finish(1, OSError(errno.EIO, "Input/output error"))
        for d in batch:
            self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.EIO)
        self.assertNoResult(after)
        self.syncs.finish(2)
        self.successResultOf(after)

    def test_failure_then_new_requests(self) -> None:
        """After a failed sync the next request starts a fresh one."""
        d = self.group.sync()
        self.syncs.finish(0, OSError(errno.EIO, "Input/output error"))
        self.failureResultOf(d, OSError)
        d = self.group.sync()
        self.assertEqual(len(self.syncs.started), 2)
        self.syncs.finish(1)
        self.successResultOf(d)

    def test_one_sync_at_a_time_when_waiters_ask_again(self) -> None:
        """Waiters whose callbacks ask for another sync never make two run at once."""
        again: list[Deferred] = []
        self.group.sync()
        for _ in range(2):
            self.group.sync().addCallback(lambda _: again.append(self.group.sync()))
        self.syncs.finish(0)
        self.syncs.finish(1)
        self.assertEqual(len(again), 2)
        self.assertEqual(self.syncs.most_at_once, 1)
        # The first re-request started sync 2 at once; the second came after it started, so it waits for sync 3.
        self.syncs.finish(2)
        self.successResultOf(again[0])
        self.assertNoResult(again[1])
        self.syncs.finish(3)
        self.successResultOf(again[1])
        self.assertEqual((self.syncs.running, self.syncs.most_at_once, len(self.syncs.started)), (0, 1, 4))

    def test_synchronous_sync(self) -> None:
        """A run_sync that finishes at once answers each request at once."""
        count: list[None] = []
        group = GroupSync(lambda: maybeDeferred(count.append, None))
        self.successResultOf(group.sync())
        self.successResultOf(group.sync())
        self.assertEqual(len(count), 2)


class SpoolGroupCommitTests(SynchronousTestCase):
    """Concurrent spool commits share the fsync of queue/."""

    def test_concurrent_commits_share_directory_fsyncs(self) -> None:
        """Ten commits in flight together cost two fsyncs of queue/, and each fires only after a sync."""
        directory = os.path.abspath(self.mktemp())
        held: list[Deferred] = []
        calls: list[Any] = []

        def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
            if getattr(f, "__name__", "") == "fsync_directory":
                calls.append(args)
                d: Deferred = Deferred()
                held.append(d)
                return d.addCallback(lambda _: f(*args, **kwargs))
            return maybeDeferred(f, *args, **kwargs)

        spool = make_spool(directory, Clock(), run=run)
        commits = [start_commit(spool, b"Subject: %d\r\n\r\nbody\r\n" % n)[1] for n in range(10)]
        self.assertEqual(len(held), 1)
        for d in commits:
            self.assertNoResult(d)
        held[0].callback(None)
        self.successResultOf(commits[0])
        for d in commits[1:]:
            self.assertNoResult(d)
        self.assertEqual(len(held), 2)
        held[1].callback(None)
        for d in commits:
            self.successResultOf(d)
        self.assertEqual(calls, [(spool.path("queue"),)] * 2)
        self.assertEqual(len(listing(spool, "queue")), 20)
        self.assertEqual(spool.queued, 10)
