"""L{gomail.deferreds}: async methods that Twisted calls for a Deferred; pool work skipped once cancelled."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from gomail.deferreds import defer_to_pool_cancellable, deferred_coroutine


class Thing:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.gate: Deferred = Deferred()

    @deferred_coroutine
    async def start(self, name: str) -> str:
        """Starts, waits for the gate, finishes."""
        self.steps.append(f"start {name}")
        await self.gate
        self.steps.append("finished")
        return name.upper()


class DeferredCoroutineTests(SynchronousTestCase):
    """The decorator's contract."""

    def test_runs_at_once_until_it_waits(self):
        """The call runs the coroutine up to its first wait and returns a Deferred of its result."""
        thing = Thing()
        d = thing.start("spool")
        self.assertIsInstance(d, Deferred)
        self.assertEqual(thing.steps, ["start spool"])
        self.assertNoResult(d)
        thing.gate.callback(None)
        self.assertEqual(self.successResultOf(d), "SPOOL")
        self.assertEqual(thing.steps, ["start spool", "finished"])

    def test_failure_is_the_deferreds(self):
        """An exception in the coroutine fails the Deferred; it is not raised to the caller."""

        @deferred_coroutine
        async def broken() -> None:
            raise ValueError("no spool")

        self.failureResultOf(broken(), ValueError)

    def test_keeps_name_and_docstring(self):
        """The decorated method keeps its name and docstring (for pydoctor and tracebacks)."""
        self.assertEqual(Thing.start.__name__, "start")
        self.assertEqual(Thing.start.__doc__, "Starts, waits for the gate, finishes.")


class HeldPool:
    """A thread pool whose calls wait until C{run_all} (on this thread), and a reactor handing results back at once."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def callInThreadWithCallback(self, on_result: Any, function: Any) -> None:
        self.calls.append((on_result, function))

    def callFromThread(self, function: Any, *args: Any) -> None:
        function(*args)

    def run_all(self) -> None:
        calls, self.calls = self.calls, []
        for on_result, function in calls:
            try:
                on_result(True, function())
            except Exception as e:  # noqa: BLE001 - as the real pool does
                on_result(False, e)


class CancellablePoolTests(SynchronousTestCase):
    """defer_to_pool_cancellable: a call nobody waits for any more does not run."""

    def test_result_and_error(self):
        """Run normally, the Deferred fires with the call's result, or fails with its exception."""
        pool = HeldPool()
        ok = defer_to_pool_cancellable(pool, pool, lambda x: x * 2, 21)
        bad = defer_to_pool_cancellable(pool, pool, lambda: 1 / 0)
        pool.run_all()
        self.assertEqual(self.successResultOf(ok), 42)
        self.failureResultOf(bad, ZeroDivisionError)

    def test_cancelled_before_its_turn_is_skipped(self):
        """Cancelled while waiting for a thread: it fails with CancelledError at once, and the call never runs."""
        pool = HeldPool()
        ran: list[str] = []
        d = defer_to_pool_cancellable(pool, pool, ran.append, "bcrypt")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        pool.run_all()
        self.assertEqual(ran, [])

    def test_cancelled_while_running_drops_the_result(self):
        """Cancelled after the call started: the call's result arrives later and is dropped without error."""
        pool = HeldPool()
        d = defer_to_pool_cancellable(pool, pool, lambda: "late")
        [(on_result, function)] = pool.calls
        result = function()
        d.cancel()
        on_result(True, result)
        self.failureResultOf(d, CancelledError)
