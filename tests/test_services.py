"""L{gomail.servicekit}: ordered start and stop of the composition root's parts, and periodic work."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gomail.servicekit import PeriodicService, SequentialMultiService


class Step(Service):
    """A child whose start and stop finish when the test says so; records what happened in C{log}."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.setName(name)
        self.log = log
        self.starting: Deferred | None = None
        self.stopping: Deferred | None = None

    def startService(self) -> Deferred:
        super().startService()
        self.log.append(f"start {self.name}")
        self.starting = Deferred()
        return self.starting

    def stopService(self) -> Deferred:
        super().stopService()
        self.log.append(f"stop {self.name}")
        self.stopping = Deferred()
        return self.stopping


class SequentialMultiServiceTests(SynchronousTestCase):
    """Each child starts once the one before it has started; they stop in reverse, one at a time."""

    def setUp(self) -> None:
        self.log: list[str] = []
        self.parent = SequentialMultiService()
        self.spool, self.smtp = Step("spool", self.log), Step("smtp", self.log)
        self.spool.setServiceParent(self.parent)
        self.smtp.setServiceParent(self.parent)

    def test_start_waits_for_each_child(self):
        """SMTP starts only after the spool's start has finished; the parent's Deferred fires last."""
        d = self.parent.startService()
        self.assertEqual(self.log, ["start spool"])
        self.assertTrue(self.parent.running)
        self.spool.starting.callback(None)
        self.assertEqual(self.log, ["start spool", "start smtp"])
        self.assertNoResult(d)
        self.smtp.starting.callback(None)
        self.successResultOf(d)

    def test_stop_in_reverse_one_at_a_time(self):
        """SMTP stops first; the spool only once SMTP has finished stopping."""
        self.parent.startService()
        self.spool.starting.callback(None)
        self.smtp.starting.callback(None)
        d = self.parent.stopService()
        self.assertEqual(self.log[2:], ["stop smtp"])
        self.smtp.stopping.callback(None)
        self.assertEqual(self.log[2:], ["stop smtp", "stop spool"])
        self.spool.stopping.callback(None)
        self.successResultOf(d)

    def test_stopped_while_starting(self):
        """Stopped while the spool is starting: SMTP is never started, the spool is stopped."""
        self.parent.startService()
        stopped = self.parent.stopService()
        self.assertEqual(self.log, ["start spool", "stop spool"])
        self.spool.stopping.callback(None)
        self.successResultOf(stopped)
        self.spool.starting.callback(None)
        self.assertEqual(self.log, ["start spool", "stop spool"])
        self.assertFalse(self.smtp.running)

    def test_failed_start_fails_the_parent(self):
        """A child that cannot start fails the parent's start; the ones after it never start."""
        d = self.parent.startService()
        self.spool.starting.errback(OSError("spool unreadable"))
        self.failureResultOf(d, OSError)
        self.assertEqual(self.log, ["start spool"])


class PeriodicServiceTests(SynchronousTestCase):
    """L{PeriodicService}: periodic work as a service on an injected clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls: list[float] = []
        self.pending: Deferred | None = None

    def work(self) -> Deferred | None:
        self.calls.append(self.clock.seconds())
        return self.pending

    def test_now_false_waits_one_step(self):
        """With now=False the first call comes one step after the start, then every step."""
        timer = PeriodicService("work", 10, self.work, self.clock, now=False)
        timer.startService()
        self.assertEqual(self.calls, [])
        self.clock.pump([10, 10])
        self.assertEqual(self.calls, [10, 20])
        timer.stopService()
        self.clock.advance(100)
        self.assertEqual(self.calls, [10, 20])

    def test_failure_logged_and_calls_go_on(self):
        """A call that fails is logged once, and the next step calls again (a LoopingCall would stop)."""
        def broken() -> None:
            self.calls.append(self.clock.seconds())
            raise OSError("database is locked")
        timer = PeriodicService("work", 5, broken, self.clock)
        timer.startService()
        self.clock.advance(5)
        self.assertEqual(self.calls, [0, 5])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 2)
        timer.stopService()

    def test_stop_waits_for_the_call_in_progress(self):
        """stopService fires only once a call still running has finished."""
        self.pending = Deferred()
        timer = PeriodicService("work", 5, self.work, self.clock)
        timer.startService()
        stopped = timer.stopService()
        self.assertNoResult(stopped)
        self.pending.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(timer.running)
