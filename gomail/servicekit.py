# -*- test-case-name: tests.test_service -*-
"""Service building blocks: ordered start/stop with Deferreds, periodic work, and an owned thread pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from gomail.deferreds import deferred_coroutine


class SequentialMultiService(MultiService):
    """
    A MultiService that starts its children one after another, waiting for any
    Deferred a child's C{startService} returns, and stops them in reverse order,
    each after the previous one has finished stopping.

    A plain MultiService ignores Deferreds from C{startService} and stops every
    child at once, which would let the SMTP listeners accept mail before the
    spool is recovered, or stop the I/O pool under an SMTP transaction that is
    still committing.
    """

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        # Only IService.startService's bookkeeping: the children are started below.
        self.running = 1
        for child in list(self):
            await maybeDeferred(child.startService)
            if not self.running:
                # Stopped while that child was starting: the rest never start.
                return

    @deferred_coroutine
    async def stopService(self) -> None:  # type: ignore[override]
        self.running = 0
        for child in reversed(list(self)):
            if child.running:
                await maybeDeferred(child.stopService)


class PeriodicService(TimerService):
    """
    Calls C{function} every C{step} seconds while the service runs: the
    server's periodic work (failed-store retry, user database watch, backend
    health, audit log flush and purge) as children of the service tree, each named by C{what} (its C{repr} and its log lines).

    Unlike a plain L{TimerService}, the first call can wait one step
    (C{now=False}), and a call that fails is logged and the calls go on (a
    LoopingCall stops at the first failure). Stopping waits for a call in
    progress.
    """

    log = Logger()

    def __init__(self, what: str, step: float, function: Callable[[], Any], clock: Any, now: bool = True) -> None:
        """@param function: returns anything, a Deferred or a coroutine (waited for before the next call)."""
        super().__init__(step, self._call)
        self.what = what
        self.function = function
        self.clock = clock
        self.now = now

    def __repr__(self) -> str:
        return f"<PeriodicService {self.what!r} every {self.step:g} s>"

    def startService(self) -> None:
        Service.startService(self)
        self._loop = LoopingCall(self._call)
        self._loop.clock = self.clock
        self._loopFinished = self._loop.start(self.step, now=self.now)
        self._loopFinished.addErrback(self._failed)

    def _call(self) -> Deferred:
        d = maybeDeferred(self.function)
        return d.addErrback(lambda failure: self.log.failure("{what} failed", failure, what=self.what))


class ThreadPoolService(Service):
    """
    Owns a thread pool: started with the service, stopped (threads joined) with it.

    C{run(f, *args)} runs C{f} in the pool and returns a Deferred for its result.
    """

    def __init__(self, reactor: Any, name: str, max_threads: int) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred:
        super().stopService()
        # Joins the threads: waits for work in progress (an fsync) to finish.
        self.pool.stop()
        return maybeDeferred(lambda: None)

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run C{function} in the pool; fires with its result or fails with its exception."""
        return deferToThreadPool(self.reactor, self.pool, function, *args, **kwargs)



class ListenError(Exception):
    """A listener could not start; the text names the endpoint and the reason."""


class ListeningService(Service):
    """
    One listening endpoint. Unlike StreamServerEndpointService, C{startService}
    returns a Deferred that fails with a L{ListenError} naming the endpoint, so
    start-up can stop with a clear message (port in use, permission denied).
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: Any, kind: str) -> None:
        self.description = description
        self.kind = kind
        self.endpoint = serverFromString(reactor, description)
        self.factory = factory
        self.port: Any = None

    def startService(self) -> Deferred:  # type: ignore[override]
        super().startService()
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        self.log.info("{kind} listening on {address}", kind=self.kind,
                      address=f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}".strip(":") or str(host))

    def _failed(self, failure: Any) -> None:
        raise ListenError(f"cannot listen on {self.description} ({self.kind}): {failure.getErrorMessage()}")

    def stopService(self) -> Deferred:
        super().stopService()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else maybeDeferred(lambda: None)
