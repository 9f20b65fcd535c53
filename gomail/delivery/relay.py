# -*- test-case-name: tests.test_relay_agent,tests.test_relay_timeouts -*-
"""
Relaying to smarthosts: batches of recipients over reused connections, with
failover between providers by priority.

An attempt is bounded by C{processing_timeout} (the Go relay's
C{processingTimeout}) up to the final dot of a transaction; the wait for that
dot's reply is bounded by the connection's own C{data_timeout} alone, since
giving up on it may duplicate the message. A dot left without its reply is
logged as a possible duplicate and counted (C{possible_duplicates}); its
recipients stay pending and are retried later (at least once), never failed
over to another smarthost in the same attempt.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
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
    #: The name the server's certificate must carry (direct delivery: the MX host; default: C{host}).
    tls_name: str = ""
    #: Never STARTTLS (direct delivery's second try of an address whose TLS failed).
    plaintext: bool = False
    #: TLS required (else the session is refused, 4.7.0), and whether its certificate is checked
    #: (None: the connector's setting). Direct delivery's TLS policies (encrypt, verify).
    require_tls: bool = False
    verify: bool | None = None

    def __str__(self) -> str:
        where = f"{self.host}:{self.port}"
        if self.tls_name:
            where = f"{self.tls_name} [{self.host}]:{self.port}"
        return where + (" (no TLS)" if self.plaintext else "")


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
    #: Seconds past C{data_timeout} the queue waits before cutting an attempt itself:
    #: the relay's own bounds end it first (see L{attempt_grace}).
    GRACE_MARGIN = 5.0

    def __init__(self, smarthosts: list[Smarthost], connect: Callable[[Smarthost], Deferred],
                 clock: IReactorTime, batch_size: int, batch_delay_ms: int, continue_on_error: bool,
                 idle_timeout: float = 10.0, failure_threshold: int = 3, skip_seconds: float = 300.0,
                 run: Callable[..., Deferred] = maybeDeferred,
                 open_content: Callable[..., ContentSource] | None = None,
                 processing_timeout: float | None = None, data_timeout: float = 600.0) -> None:
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
        #: Seconds an attempt may take up to a final dot (None: unbounded here).
        self.processing_timeout = processing_timeout
        #: The connections' wait for the final dot's reply (they apply it; the grace below follows it).
        self.data_timeout = data_timeout
        #: Final dots sent whose reply never came (the message may have been delivered twice).
        self.possible_duplicates = 0
        self._health = {s: _Health() for s in self.smarthosts}
        #: Sessions opened, by TLS state (verified, unverified, none): for /metrics.
        self.tls_sessions: Counter[str] = Counter()
        self._idle: dict[Smarthost, list[tuple[RelayProtocol, Any]]] = {s: [] for s in self.smarthosts}

    @property
    def attempt_grace(self) -> float:
        """
        Seconds the delivery queue adds to C{processingTimeout} before it cuts an
        attempt itself: a final dot sent just before the attempt's bound may wait
        C{data_timeout} for its reply, and cutting that wait would risk a duplicate.
        """
        return self.data_timeout + self.GRACE_MARGIN

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        return Deferred.fromCoroutine(self._deliver(envelope, message_path, [r.address for r in recipients]))

    async def _deliver(self, envelope: Envelope, path: str, addresses: list[str]) -> dict[str, Reply]:
        batches = [addresses[i:i + self.batch_size] for i in range(0, len(addresses), self.batch_size)]
        deadline = None if self.processing_timeout is None else self.clock.seconds() + self.processing_timeout
        results: dict[str, Reply] = {}
        for index, batch in enumerate(batches):
            if index and self.batch_delay:
                await deferLater(self.clock, self.batch_delay, lambda: None)
            if deadline is not None and self.clock.seconds() >= deadline:
                rest = [address for later in batches[index:] for address in later]
                self.log.warn("{queue_id}: processingTimeout ({timeout:g} s) reached, {count} recipients left "
                              "for the next attempt", queue_id=envelope.id, timeout=self.processing_timeout,
                              count=len(rest))
                results.update({address: self._expired().reply for address in rest})
                break
            replies, via = await self._send(envelope, path, batch, deadline)
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

    async def _send(self, envelope: Envelope, path: str, batch: list[str],
                    deadline: float | None = None) -> tuple[dict[str, Reply], str]:
        last = ConnectionFailure(451, "4.4.1 No smarthost available")
        for smarthost in self._in_order():
            try:
                connection = await self._connection(smarthost, deadline)
            except ConnectionFailure as e:
                if e.expired:
                    return {address: e.reply for address in batch}, str(smarthost)
                self._failed(smarthost, e)
                last = e
                continue
            guard = self._guard(envelope, smarthost, connection, deadline)
            try:
                replies = await connection.send(
                    Transaction(envelope.sender, batch, lambda: self.open_content(envelope.id, path, envelope)))
            except ConnectionFailure as e:
                if e.expired:
                    return {address: e.reply for address in batch}, str(smarthost)
                self._failed(smarthost, e)
                if e.possible_duplicate:
                    # Another smarthost now would make a second copy at once: the
                    # recipients wait for the next attempt instead.
                    self._possible_duplicate(envelope, smarthost, e.text)
                    return {address: e.reply for address in batch}, str(smarthost)
                last = e
                continue
            except CancelledError:
                # The queue cut the attempt (a bug past our own bounds, or shutdown):
                # this connection's state is unknown, so it is dropped rather than reused.
                if getattr(connection, "awaiting_dot", False):
                    self._possible_duplicate(envelope, smarthost, "the delivery attempt was cancelled")
                connection.close()
                raise
            finally:
                if guard is not None and guard.active():
                    guard.cancel()
            self._health[smarthost].failures = 0
            self._release(smarthost, connection)
            return replies, str(smarthost)
        return {address: last.reply for address in batch}, "none"

    # -- the attempt's bound and possible duplicates --------------------------------

    def _expired(self, doing: str = "") -> ConnectionFailure:
        text = f"4.4.7 Delivery attempt timed out after {self.processing_timeout:g} s (processingTimeout)"
        return ConnectionFailure(451, f"{text} {doing}".rstrip(), expired=True)

    def _guard(self, envelope: Envelope, smarthost: Smarthost, connection: RelayProtocol,
               deadline: float | None) -> IDelayedCall | None:
        """At C{deadline}: drop the connection, unless its final dot waits for a reply."""
        if deadline is None:
            return None

        def reached() -> None:
            if getattr(connection, "awaiting_dot", False):
                self.log.info("{queue_id}: processingTimeout ({timeout:g} s) reached while {smarthost} has the "
                              "final dot: waiting for its reply (delivery.dataTimeout) rather than risk a duplicate",
                              queue_id=envelope.id, timeout=self.processing_timeout, smarthost=str(smarthost))
                return
            connection.abort(self._expired(f"waiting for {getattr(connection, 'step', 'the smarthost')}"))

        return self.clock.callLater(max(0.0, deadline - self.clock.seconds()), reached)

    def _possible_duplicate(self, envelope: Envelope, smarthost: Smarthost, what: str) -> None:
        self.possible_duplicates += 1
        self.log.warn("{queue_id} possible duplicate: {smarthost} got the final dot but no reply to it ({what}); "
                      "the message may already be delivered, and is retried all the same (at least once)",
                      queue_id=envelope.id, smarthost=str(smarthost), what=what)

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

    async def _connection(self, smarthost: Smarthost, deadline: float | None = None) -> RelayProtocol:
        idle = self._idle[smarthost]
        while idle:
            connection, timer = idle.pop()
            if timer.active():
                timer.cancel()
            if not connection.closed:
                return connection
        connecting = self.connect(smarthost).addCallback(self._opened, smarthost)
        if deadline is None:
            return await connecting
        expired: list[bool] = []

        def reached() -> None:
            expired.append(True)
            connecting.cancel()

        timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), reached)
        try:
            return await connecting
        except CancelledError:
            if expired:
                raise self._expired(f"connecting to {smarthost}") from None
            raise
        finally:
            if timer.active():
                timer.cancel()

    def _opened(self, connection: RelayProtocol, smarthost: Smarthost) -> RelayProtocol:
        tls = getattr(connection, "tls", "none")
        self.tls_sessions[tls] += 1
        self.log.info("session with {smarthost}: TLS {tls}", smarthost=str(smarthost), tls=tls)
        return connection

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
        for idle in self._idle.values():
            for connection, timer in idle:
                if timer.active():
                    timer.cancel()
                connection.close()
            idle.clear()
