"""L{gomail.deferreds.deferred_coroutine}: async methods that Twisted calls for a Deferred."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gomail.deferreds import deferred_coroutine


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
