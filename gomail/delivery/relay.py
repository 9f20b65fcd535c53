"""
Relaying to smarthosts: batches of recipients over reused connections, with
failover between providers by priority.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from gomail.delivery.client import ConnectionFailure, RelayProtocol, Reply, Transaction
from gomail.delivery.content import ContentSource, FileContent
from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient


@dataclass(frozen=True)
class Smarthost:
    """One upstream server (C{forwardHost} or an entry of C{forwardProviders})."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    implicit_tls: bool = False
    priority: int = 0

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Health:
    """Consecutive failures of one smarthost, and until when it is passed over."""

    def __init__(self) -> None:
        self.failures = 0
        self.skip_until = 0.0


@implementer(IDeliveryAgent)
class RelayAgent:
    """
    Delivers through the smarthosts: pending recipients in batches of
    C{batch_size} (one SMTP transaction each, C{batch_delay} ms apart), on a
    connection reused while it is idle for up to C{idle_timeout} seconds.
    A connection-level failure (refused, timeout, TLS, 421) moves to the next
    smarthost by priority; one that failed C{failure_threshold} times in a row
    is passed over for C{skip_seconds}.
    """

    name = "relay"
    idempotent = False
    log = Logger()

    def __init__(self, smarthosts: list[Smarthost], connect: Callable[[Smarthost], Deferred],
                 clock: IReactorTime, batch_size: int, batch_delay_ms: int, continue_on_error: bool,
                 idle_timeout: float = 10.0, failure_threshold: int = 3, skip_seconds: float = 300.0,
                 run: Callable[..., Deferred] = maybeDeferred,
                 open_content: Callable[..., ContentSource] | None = None) -> None:
        self.smarthosts = sorted(smarthosts, key=lambda s: s.priority)
        self.connect = connect
        self.clock = clock
        self.batch_size = batch_size
        self.batch_delay = batch_delay_ms / 1000.0
        self.continue_on_error = continue_on_error
        self.idle_timeout = idle_timeout
        self.failure_threshold = failure_threshold
        self.skip_seconds = skip_seconds
        #: Where the content is read: the spool's I/O pool (C{Spool.run}) in the server.
        self.run = run
        #: open_content(queue_id, path, envelope): the message's bytes (the server's also looks in
        #: memory, and checks what it reads from disk against the envelope's size and digest).
        self.open_content = open_content or (lambda queue_id, path, envelope=None: FileContent(path, self.run))
        self._health = {s: _Health() for s in self.smarthosts}
        self._idle: dict[Smarthost, list[tuple[RelayProtocol, Any]]] = {s: [] for s in self.smarthosts}

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        return Deferred.fromCoroutine(self._deliver(envelope, message_path, [r.address for r in recipients]))

    async def _deliver(self, envelope: Envelope, path: str, addresses: list[str]) -> dict[str, Reply]:
        batches = [addresses[i:i + self.batch_size] for i in range(0, len(addresses), self.batch_size)]
        results: dict[str, Reply] = {}
        for index, batch in enumerate(batches):
            if index and self.batch_delay:
                await deferLater(self.clock, self.batch_delay, lambda: None)
            replies, via = await self._send(envelope, path, batch)
            results.update(replies)
            accepted = sum(1 for code, _ in replies.values() if 200 <= code < 300)
            self.log.info("{queue_id} batch {number}/{total} via {smarthost}: {accepted} of {count} accepted",
                          queue_id=envelope.id, number=index + 1, total=len(batches), smarthost=via,
                          accepted=accepted, count=len(batch))
            if accepted == 0 and not self.continue_on_error:
                for rest in batches[index + 1:]:
                    for address in rest:
                        results[address] = (451, "4.3.0 Not attempted: an earlier batch failed")
                break
        return results

    async def _send(self, envelope: Envelope, path: str, batch: list[str]) -> tuple[dict[str, Reply], str]:
        last = ConnectionFailure(451, "4.4.1 No smarthost available")
        for smarthost in self._in_order():
            try:
                connection = await self._connection(smarthost)
            except ConnectionFailure as e:
                self._failed(smarthost, e)
                last = e
                continue
            try:
                replies = await connection.send(
                    Transaction(envelope.sender, batch, lambda: self.open_content(envelope.id, path, envelope)))
            except ConnectionFailure as e:
                self._failed(smarthost, e)
                last = e
                continue
            except CancelledError:
                # processingTimeout ran out mid-transaction: this connection's
                # state is unknown, so it is dropped rather than reused.
                connection.close()
                raise
            self._health[smarthost].failures = 0
            self._release(smarthost, connection)
            return replies, str(smarthost)
        return {address: last.reply for address in batch}, "none"

    # -- smarthost health ----------------------------------------------------------

    def failing(self) -> list[str]:
        """The smarthosts whose last connection failed (for the health check)."""
        return [str(s) for s in self.smarthosts if self._health[s].failures > 0]

    def _in_order(self) -> list[Smarthost]:
        now = self.clock.seconds()
        healthy = [s for s in self.smarthosts if self._health[s].skip_until <= now]
        resting = [s for s in self.smarthosts if self._health[s].skip_until > now]
        return healthy + resting

    def _failed(self, smarthost: Smarthost, failure: ConnectionFailure) -> None:
        health = self._health[smarthost]
        health.failures += 1
        self.log.warn("smarthost {smarthost} failed ({count} in a row): {code} {text}", smarthost=str(smarthost),
                      count=health.failures, code=failure.code, text=failure.text)
        if health.failures >= self.failure_threshold:
            health.skip_until = self.clock.seconds() + self.skip_seconds

    # -- connection pool --------------------------------------------------------------

    async def _connection(self, smarthost: Smarthost) -> RelayProtocol:
        idle = self._idle[smarthost]
        while idle:
            connection, timer = idle.pop()
            if timer.active():
                timer.cancel()
            if not connection.closed:
                return connection
        return await self.connect(smarthost)

    def _release(self, smarthost: Smarthost, connection: RelayProtocol) -> None:
        if connection.closed:
            return
        timer = self.clock.callLater(self.idle_timeout, self._expire, smarthost, connection)
        self._idle[smarthost].append((connection, timer))

    def _expire(self, smarthost: Smarthost, connection: RelayProtocol) -> None:
        self._idle[smarthost] = [(c, t) for c, t in self._idle[smarthost] if c is not connection]
        connection.close()

    def close(self) -> None:
        """Close every idle connection (at shutdown)."""
        for smarthost, idle in self._idle.items():
            for connection, timer in idle:
                if timer.active():
                    timer.cancel()
                connection.close()
            idle.clear()
