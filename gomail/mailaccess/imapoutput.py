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
    """Registered on the transport while a message is streamed: C{wait()} fires once its buffer has room."""

    def __init__(self) -> None:
        self.paused = self.stopped = False
        self._waiters: list[Deferred] = []

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
        """Fires once the transport takes more (at once if it does now), or it stopped."""
        while self.paused and not self.stopped:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            await waiter


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
