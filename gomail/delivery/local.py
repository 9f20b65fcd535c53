"""
A minimal queue runner that hands every queued message to one delivery agent
(the local mailbox). It retries temporary failures after a fixed delay; the
relay issue replaces it with the full DeliveryQueue (backoff, batching, failed/).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gomail.interfaces import IDeliveryAgent, IQueueConsumer
from gomail.spool.envelope import DELIVERED, FAILED, Envelope
from gomail.spool.store import Spool


@implementer(IQueueConsumer)
class LocalDeliveryService(Service):
    """Deliver queued messages with C{agent}, C{concurrency} at a time."""

    log = Logger()

    def __init__(self, spool: Spool, agent: IDeliveryAgent, clock: IReactorTime,
                 concurrency: int, retry_delay: float = 60.0) -> None:
        self.spool = spool
        self.agent = agent
        self.clock = clock
        self.concurrency = concurrency
        self.retry_delay = retry_delay
        self._known: set[str] = set()
        self._ready: deque[Envelope] = deque()
        self._active: dict[str, Deferred] = {}
        self._timers: dict[str, Any] = {}

    def enqueue(self, envelope: Envelope) -> None:
        if envelope.id in self._known:
            return
        self._known.add(envelope.id)
        delay = envelope.next_attempt - self.clock.seconds()
        if delay > 0:  # recovered after a temporary failure: keep its retry time
            self._timers[envelope.id] = self.clock.callLater(delay, self._retry, envelope)
            return
        self._ready.append(envelope)
        self._pump()

    def startService(self) -> None:
        super().startService()
        self._pump()

    def stopService(self) -> Deferred:
        super().stopService()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        if not self._active:
            return succeed(None)
        return DeferredList(list(self._active.values()))

    def _pump(self) -> None:
        while self.running and self._ready and len(self._active) < self.concurrency:
            envelope = self._ready.popleft()
            d = Deferred.fromCoroutine(self._deliver(envelope))
            self._active[envelope.id] = d
            d.addErrback(lambda f, e=envelope: self._failed(e, f))
            d.addBoth(lambda _, e=envelope: self._finished(e))

    def _finished(self, envelope: Envelope) -> None:
        self._active.pop(envelope.id, None)
        self._pump()

    def _failed(self, envelope: Envelope, failure: Any) -> None:
        self.log.failure("delivery of {queue_id} failed; retrying in {delay} s", failure,
                         queue_id=envelope.id, delay=self.retry_delay)
        self._retry_later(envelope)

    def _retry_later(self, envelope: Envelope) -> None:
        if self.running:
            self._timers[envelope.id] = self.clock.callLater(self.retry_delay, self._retry, envelope)

    def _retry(self, envelope: Envelope) -> None:
        self._timers.pop(envelope.id, None)
        self._ready.append(envelope)
        self._pump()

    async def _deliver(self, envelope: Envelope) -> None:
        pending = envelope.pending()
        results = await self.agent.deliver(envelope, self.spool.message_path(envelope.id), pending)
        for recipient in pending:
            code, text = results.get(recipient.address, (451, "4.3.0 No result from delivery agent"))
            recipient.reply = f"{code} {text}"
            if 200 <= code < 300:
                recipient.status = DELIVERED
            elif code >= 500:
                recipient.status = FAILED
            self.log.info("{queue_id} to <{recipient}>: {agent} {reply}", queue_id=envelope.id,
                          recipient=recipient.address, agent=self.agent.name, reply=recipient.reply)
        if not envelope.pending():
            # Not durable: a removal lost in a crash only redelivers, and the
            # Maildir agent recognises a copy it already delivered.
            await self.spool.remove(envelope.id, durable=False)
            self._known.discard(envelope.id)
            return
        envelope.attempts += 1
        envelope.next_attempt = self.clock.seconds() + self.retry_delay
        await self.spool.update(envelope)
        self._retry_later(envelope)
