# -*- test-case-name: tests.test_delivery_queue -*-
"""
The delivery queue: which queued message is tried when, by whom, and what
happens after.

An in-memory index of queued ids ordered by next-attempt time is filled from
the spool at start and by every commit; one timer on the injected clock wakes
the queue for the earliest message (no polling). Up to C{workers} attempts run
at once. Each attempt hands the pending recipients to the agents the router
picks, bounded by C{processing_timeout}; per-recipient outcomes are written to
the envelope before anything is removed: 2xx delivered, 4xx pending (retried
with backoff), 5xx failed. The sender hears of failed recipients after the
attempt that failed them, and once of a long delay (L{gomail.delivery.bounce}).
A message with nothing pending left is removed, or, if any recipient failed,
moved to the failed store; so is a message older than the policy's maximum age.

Before an agent is given a message its content is checked against the
envelope's size and digest (by the Maildir agent in its own job, for the
others by L{Spool.check_content}); content that fails moves with its envelope
to ``corrupt/`` and nothing of it is delivered.
"""

from __future__ import annotations

import heapq
import random as _random
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.delivery.backoff import RetryPolicy, retry_delay
from gomail.delivery.bounce import (
    DELAY_WARNED,
    delay_warning_time,
    mark_reported,
    queue_dsn,
    unreported_failures,
)
from gomail.delivery.failed import FailedStore, MessageBusy
from gomail.delivery.router import Router
from gomail.delivery.stats import DeliveryStats
from gomail.interfaces import IDeliveryAgent, IQueueConsumer
from gomail.spool.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient
from gomail.spool.integrity import CorruptContent
from gomail.spool.store import Spool

#: Seconds before a finished message's outcome is written again after the writer failed it,
#: doubling with each failure up to BOOKKEEPING_RETRY_MAX (the writer process restarts in 1 s).
BOOKKEEPING_RETRY = 2.0
BOOKKEEPING_RETRY_MAX = 60.0


@implementer(IQueueConsumer)
class DeliveryQueue(Service):
    """Schedules and runs delivery attempts for everything in the spool's queue."""

    log = Logger()

    def __init__(self, spool: Spool, router: Router, clock: IReactorTime, workers: int,
                 processing_timeout: float, policy: RetryPolicy, failed: FailedStore, hostname: str,
                 random: Callable[[], float] = _random.random,
                 delay_warning: float = 0) -> None:
        self.spool, self.router, self.clock = spool, router, clock
        #: Seconds after which a sender is told its message is still being retried (0: never).
        self.delay_warning = delay_warning
        self.workers, self.processing_timeout, self.policy = workers, processing_timeout, policy
        self.failed, self.hostname = failed, hostname
        self.random = random
        self.stats = DeliveryStats()
        #: Tells plugins (IDeliveryObserver) what happened (gomail.extension.events); None: no observers.
        self.events: Any = None
        self._envelopes: dict[str, Envelope] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._active: dict[str, Deferred] = {}
        self._timer: Any = None
        #: queue id -> failed tries to write a finished message's outcome (see _keep_unrecorded)
        self._unrecorded: dict[str, int] = {}

    # -- IQueueConsumer ---------------------------------------------------------

    def enqueue(self, envelope: Envelope) -> None:
        if envelope.id in self._envelopes:
            return
        self._envelopes[envelope.id] = envelope
        self._push(envelope)
        self._wake()

    @property
    def depth(self) -> int:
        """Messages known to the queue (waiting or being delivered)."""
        return len(self._envelopes)

    def summary(self) -> dict[str, Any]:
        """
        The queue by state, for monitoring: C{active} (being delivered now),
        C{deferred} (waiting after a failed attempt), C{new} (not tried yet),
        and the age in seconds of the oldest message.
        """
        now = self.clock.seconds()
        active = sum(1 for queue_id in self._envelopes if queue_id in self._active)
        deferred = sum(1 for queue_id, e in self._envelopes.items()
                       if queue_id not in self._active and e.attempts > 0)
        oldest = min((e.received for e in self._envelopes.values()), default=None)
        return {"active": active, "deferred": deferred, "new": len(self._envelopes) - active - deferred,
                "oldest_age_seconds": max(0.0, now - oldest) if oldest is not None else 0.0}

    def flush(self) -> tuple[int, int]:
        """
        Make every queued message due now (C{gomail queue flush}), except
        those being delivered at this moment. Only the index changes: an
        envelope is written at its attempt's end, by that attempt. Returns
        how many messages were made due and how many are being delivered.
        """
        now = self.clock.seconds()
        flushed = 0
        for queue_id, envelope in self._envelopes.items():
            if queue_id in self._active:
                continue
            if envelope.next_attempt > now:
                envelope.next_attempt = now
                self._push(envelope)
            flushed += 1
        active = len(self._active)
        self._wake()
        return flushed, active

    def queued_ids(self) -> list[str]:
        """The ids of every message in the queue, oldest first."""
        return sorted(self._envelopes)

    async def delete(self, queue_id: str) -> None:
        """
        Delete a queued message for good (C{gomail queue delete}): out of the
        index first, so no attempt starts on it, then its files.

        @raise KeyError: when the message is not in the queue.
        @raise MessageBusy: while it is being delivered (its attempt decides its fate).
        """
        if queue_id in self._active:
            raise MessageBusy(queue_id)
        del self._envelopes[queue_id]
        self._unrecorded.pop(queue_id, None)
        await self.spool.remove(queue_id)
        self.log.info("{queue_id} deleted by an operator", queue_id=queue_id)

    def _push(self, envelope: Envelope) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (envelope.next_attempt, self._sequence, envelope.id))

    # -- service ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._wake()

    def stopService(self) -> Deferred:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for agent in (self.router.local, self.router.relay, *set(self.router.routes.values())):
            close = getattr(agent, "close", None)
            if close is not None:
                close()
        if not self._active:
            return succeed(None)
        return DeferredList(list(self._active.values()))

    # -- scheduling ---------------------------------------------------------------

    def _wake(self) -> None:
        if not self.running:
            return
        now = self.clock.seconds()
        while self._heap and len(self._active) < self.workers:
            when, _, queue_id = self._heap[0]
            if when > now:
                break
            heapq.heappop(self._heap)
            envelope = self._envelopes.get(queue_id)
            if envelope is None or queue_id in self._active or envelope.next_attempt != when:
                continue  # stale heap entry
            d = Deferred.fromCoroutine(self._attempt(envelope))
            self._active[queue_id] = d
            d.addErrback(self._attempt_crashed, envelope)
            d.addBoth(self._attempt_done, envelope)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._heap and len(self._active) < self.workers:
            delay = max(0.0, self._heap[0][0] - now)
            self._timer = self.clock.callLater(delay, self._wake)

    def _attempt_done(self, _: object, envelope: Envelope) -> None:
        self._active.pop(envelope.id, None)
        self._wake()

    def _attempt_crashed(self, failure: Failure, envelope: Envelope) -> None:
        # Our own bug or a spool failure: keep the message and try again later.
        self.log.failure("delivery attempt of {queue_id} failed", failure, queue_id=envelope.id)
        if envelope.id in self._envelopes:
            envelope.next_attempt = self.clock.seconds() + retry_delay(self.policy, max(1, envelope.attempts),
                                                                       self.random)
            self._push(envelope)

    # -- one attempt ----------------------------------------------------------------

    async def _attempt(self, envelope: Envelope) -> None:
        started = self.clock.seconds()
        path = self.spool.message_path(envelope.id)
        try:
            for agent, recipients in self.router.route(envelope.pending()):
                results = await self._deliver(agent, envelope, path, recipients)
                self._record(envelope, agent, recipients, results)
        except CorruptContent as e:
            await self._set_aside(envelope, e.problem)
            return
        finally:
            envelope.fresh = False  # every later attempt checks the digest too
        elapsed = self.clock.seconds() - started
        self.stats.attempts += 1
        self.stats.attempt_seconds_total += elapsed
        for observer in self.stats.attempt_observers:
            observer(elapsed)
        await self._settle(envelope)

    async def _deliver(self, agent: IDeliveryAgent, envelope: Envelope, path: str,
                       recipients: list[Recipient]) -> dict[str, tuple[int, str]]:
        try:
            if not getattr(agent, "checks_content", False):
                await self.spool.check_content(envelope)
            d = agent.deliver(envelope, path, recipients)
            # The relay bounds its own attempts by processingTimeout, except the wait for a final
            # dot's reply (cutting it risks a duplicate): this cut is only a backstop past that.
            d.addTimeout(self.processing_timeout + getattr(agent, "attempt_grace", 0), self.clock)
            return await d
        except CorruptContent:
            raise
        except TimeoutError:
            reply = (451, f"4.4.7 Delivery attempt timed out after {self.processing_timeout:g} s")
        except Exception as e:  # noqa: BLE001 - an agent's own fault defers its recipients (logged), never loses them
            self.log.failure("{agent} failed delivering {queue_id}", agent=agent.name, queue_id=envelope.id)
            reply = (451, f"4.3.0 Local delivery fault: {type(e).__name__}")
        return {r.address: reply for r in recipients}

    def _record(self, envelope: Envelope, agent: IDeliveryAgent, recipients: list[Recipient],
                results: dict[str, tuple[int, str]]) -> None:
        for recipient in recipients:
            code, text = results.get(recipient.address, (451, "4.3.0 No result from delivery agent"))
            # Interned: a smarthost that is down gives a queue of thousands the same reply.
            recipient.reply = sys.intern(f"{code} {text}")
            if 200 <= code < 300:
                recipient.status = DELIVERED
                self.stats.delivered_recipients += 1
            elif code >= 500:
                recipient.status = FAILED
                self.stats.failed_recipients += 1
            else:
                self.stats.deferred_recipients += 1
            if self.events is not None:
                self.events.recipient(envelope, recipient)
            self.log.info("{queue_id} to <{recipient}>: {agent} {reply}", queue_id=envelope.id,
                          recipient=recipient.address, agent=agent.name, reply=recipient.reply)

    async def _settle(self, envelope: Envelope) -> None:
        now = self.clock.seconds()
        pending = envelope.pending()
        if pending and now - envelope.received >= self.policy.max_age:
            for recipient in pending:
                recipient.status = FAILED
                recipient.reply = f"{recipient.reply or '451 4.4.7'} (gave up after {self.policy.max_age:g} s in the queue)"
            pending = []
        await self._notify(envelope, pending, now)
        if pending:
            envelope.attempts += 1
            envelope.next_attempt = now + retry_delay(self.policy, envelope.attempts, self.random)
            warn_at = delay_warning_time(envelope, self.delay_warning)
            if warn_at is not None and now < warn_at < envelope.next_attempt:
                # One more attempt when the warning is due: it goes out on time, with fresh replies.
                envelope.next_attempt = warn_at
            envelope.last_error = pending[0].reply
            await self.spool.update(envelope)
            self.stats.deferred_messages += 1
            self.log.info("{queue_id} deferred: {count} recipients pending, next attempt in {delay:.0f} s",
                          queue_id=envelope.id, count=len(pending), delay=envelope.next_attempt - now)
            self._push(envelope)
            return
        try:
            if any(r.status == FAILED for r in envelope.recipients):
                await self._give_up(envelope)
            else:
                await self.spool.remove(envelope.id, durable=not self._idempotent(envelope))
                self.stats.delivered_messages += 1
        except Exception as e:  # noqa: BLE001 - whatever the writer says, the outcome must not be lost
            self._keep_unrecorded(envelope, e, now)
            return
        # Only now, the outcome being on disk: forgotten earlier, a message whose removal the
        # writer failed (its process killed) was sent again by the next flush or restart.
        del self._envelopes[envelope.id]
        self._unrecorded.pop(envelope.id, None)

    def _keep_unrecorded(self, envelope: Envelope, error: Exception, now: float) -> None:
        """
        The outcome of a finished message could not be written (the spool
        writer failed the job). Keep the envelope, with its recipients' states,
        in the queue: its next turn delivers nothing (nothing is pending) and
        only writes the outcome again, after a few seconds, doubling up to a
        minute, until the writer takes it.
        """
        tries = self._unrecorded.get(envelope.id, 0) + 1
        self._unrecorded[envelope.id] = tries
        delay = min(BOOKKEEPING_RETRY_MAX, BOOKKEEPING_RETRY * 2 ** (tries - 1))
        if tries == 1:
            self.log.warn("{queue_id} is finished but its outcome could not be written ({error}): "
                          "kept in the queue, nothing is sent again; writing it again in {delay:.0f} s",
                          queue_id=envelope.id, error=str(error) or type(error).__name__, delay=delay)
        self.stats.unrecorded_retries += 1
        envelope.next_attempt = now + delay
        self._push(envelope)

    @property
    def unrecorded(self) -> int:
        """Finished messages whose outcome waits to be written (the spool writer failed it)."""
        return len(self._unrecorded)

    def _idempotent(self, envelope: Envelope) -> bool:
        agents = {agent for agent, _ in self.router.route(envelope.recipients)}
        return all(getattr(agent, "idempotent", False) for agent in agents)

    async def _give_up(self, envelope: Envelope) -> None:
        self.stats.failed_messages += 1
        await self.failed.give_up(envelope, "; ".join(
            f"<{r.address}>: {r.reply}" for r in envelope.recipients if r.status == FAILED))

    async def _set_aside(self, envelope: Envelope, problem: str) -> None:
        """Content that failed its check: the entry leaves the queue for corrupt/ (one log line there)."""
        self._envelopes.pop(envelope.id, None)
        envelope.last_error = f"content damaged: {problem}"
        try:
            # What the entry in corrupt/ says: who was delivered before, and why it stopped.
            await self.spool.update(envelope)
        except Exception:  # noqa: BLE001 - any writer failure: the move to corrupt/ matters more
            self.log.failure("could not record why {queue_id} is set aside", queue_id=envelope.id)
        await self.spool.set_aside(envelope.id, problem)

    async def _notify(self, envelope: Envelope, pending: list[Recipient], now: float) -> None:
        """
        Queue the DSNs this attempt calls for: one for the recipients that
        failed and were not reported yet, and the delay warning once it is due
        (see L{gomail.delivery.bounce}). Recorded in the envelope, which the
        caller writes next: a crash in between may repeat a DSN, never lose one.
        """
        failures = unreported_failures(envelope)
        if failures:
            await self._send_dsn(envelope, failures, "failed", now)
            if self.events is not None:
                self.events.bounced(envelope, failures)
            mark_reported(envelope, failures)
            self.stats.bounces += 1
        warn_at = delay_warning_time(envelope, self.delay_warning)
        if pending and warn_at is not None and now >= warn_at:
            await self._send_dsn(envelope, pending, "delayed", now)
            envelope.extra = {**envelope.extra, DELAY_WARNED: now}  # replaced, never changed in place
            self.stats.delay_warnings += 1

    async def _send_dsn(self, envelope: Envelope, recipients: list[Recipient], action: str, now: float) -> None:
        dsn = await queue_dsn(self.spool, envelope, recipients, action, self.hostname, now,
                              retry_until=envelope.received + self.policy.max_age)
        self.log.info("{queue_id}: {action} DSN {dsn_id} queued for <{sender}> about {count} recipients",
                      queue_id=envelope.id, action=action, dsn_id=dsn.id, sender=envelope.sender,
                      count=len(recipients))


__all__ = ["PENDING", "DeliveryQueue", "DeliveryStats", "Router"]
