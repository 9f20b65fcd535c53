# -*- test-case-name: tests.test_deferreds -*-
"""
The one bridge from coroutines to Deferreds for methods that Twisted calls
and expects a Deferred from (C{IService.startService}, C{stopService}, ...),
and L{defer_to_pool_cancellable}: work in a thread pool that is skipped when
nobody waits for it any more.

    class SpoolService(Service):
        @deferred_coroutine
        async def startService(self) -> None:
            super().startService()
            await self.spool.recover()

Calling the decorated method runs its coroutine at once, up to its first
wait (as klein's C{eagerDeferredCoroutine}), and returns a Deferred of its
result: the synchronous part (C{self.running = 1}, say) has happened when the
call returns, as with a plain method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

P = ParamSpec("P")
T = TypeVar("T")


def deferred_coroutine(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """C{function}, an C{async def}, as a function returning a Deferred (started at once)."""

    @functools.wraps(function)
    def start(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(function(*args, **kwargs))

    return start


def defer_to_pool_cancellable(reactor: Any, pool: Any, function: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    C{deferToThreadPool}, except that cancelling the Deferred before the pool
    starts the call skips the call. (Twisted's fails the Deferred but still
    runs the call: a bcrypt verification queued behind others would spend
    its 50-250 ms of CPU for a client that has gone.) A call already running
    finishes, and its result is dropped.
    """
    cancelled = False

    def cancel(_: Deferred) -> None:
        nonlocal cancelled
        cancelled = True  # read by the pool's thread; a call just starting may still run, harmlessly

    d: Deferred[T] = Deferred(cancel)

    def call() -> T | None:
        return None if cancelled else function(*args)

    def deliver(ok: bool, result: Any) -> None:
        if d.called:  # cancelled meanwhile: nobody waits for it
            return
        if ok:
            d.callback(result)
        else:
            d.errback(result if isinstance(result, Failure) else Failure(result))

    pool.callInThreadWithCallback(lambda ok, result: reactor.callFromThread(deliver, ok, result), call)
    return d


__all__ = ["defer_to_pool_cancellable", "deferred_coroutine"]
