# -*- test-case-name: tests.test_imap_readahead,tests.test_imap_fetch_end -*-
"""
How FETCH writes its responses to the transport: L{Output} buffers one
response and writes nothing once the session is closed; L{Pacer} is the
streaming producer a literal registers, so that a full buffer makes the
writer wait for the client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Pacer:
    """
    Registered on the transport while a message is streamed: C{wait()} fires
    once its buffer has room. With a C{clock}, a client that takes nothing
    for C{timeout} seconds is given up on: C{on_stall} is called (the
    session aborts its connection) and the waiting writer goes on as if the
    connection were gone (twisted turns the idle timer off for the whole of
    a FETCH, so without this a client that stopped reading held its session,
    and its file, for ever).
    """

    def __init__(self, clock: Any = None, timeout: float = 0, on_stall: Any = None) -> None:
        self.paused = self.stopped = False
        self._waiters: list[Deferred] = []
        self.clock, self.timeout, self.on_stall = clock, timeout, on_stall

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport takes more: the writer waiting goes on."""
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        """The connection is gone: the writer waiting stops."""
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def wait(self) -> None:
        """Fires once the transport takes more (at once if it does now), or it stopped, or the client stalled."""
        while self.paused and not self.stopped:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            timer = self.clock.callLater(self.timeout, self._stalled) if self.clock is not None else None
            try:
                await waiter
            finally:
                if timer is not None and timer.active():
                    timer.cancel()

    def _stalled(self) -> None:
        self.stopped = True
        self._wake()
        if self.on_stall is not None:
            self.on_stall()


class Output:
    """
    twisted's C{WriteBuffer} for one FETCH response, that writes nothing
    once the session is closed: what it holds then is dropped, so a
    response the end of the session cut short is not sent in part (as
    C{* 2 FETCH (BODY[] )} was after C{BYE}).
    """

    def __init__(self, session: Any, size: int = 8192) -> None:
        self.session = session
        self.size = size
        self._writes: list[bytes] = []
        self._length = 0

    def write(self, data: bytes) -> None:
        """Buffer C{data} (written once the buffer passes C{size}, or at L{flush})."""
        self._writes.append(data)
        self._length += len(data)
        if self._length > self.size:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, unless the session is closed."""
        writes, self._writes, self._length = self._writes, [], 0
        if writes and not self.session.closed:
            self.session.transport.writeSequence(writes)


__all__ = ["Output", "Pacer"]
