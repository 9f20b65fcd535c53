# -*- test-case-name: tests.test_deferreds -*-
"""
The one bridge from coroutines to Deferreds for methods that Twisted calls
and expects a Deferred from (C{IService.startService}, C{stopService}, ...).

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

P = ParamSpec("P")
T = TypeVar("T")


def deferred_coroutine(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Deferred[T]]:
    """C{function}, an C{async def}, as a function returning a Deferred (started at once)."""

    @functools.wraps(function)
    def start(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
        return Deferred.fromCoroutine(function(*args, **kwargs))

    return start


__all__ = ["deferred_coroutine"]
