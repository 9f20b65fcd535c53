"""The delivery queue on a Clock: scheduling, backoff, outcomes, failed store and bounces."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore, MessageBusy
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.interfaces import IDeliveryAgent, IQueueConsumer
from gomail.servicekit import PeriodicService
from gomail.spool.envelope import DELIVERED, FAILED, PENDING, Envelope
from tests.spooltesting import listing, make_spool, new_envelope, read

CONTENT = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
START = 1700000000.0


@implementer(IDeliveryAgent)
class ScriptedAgent:
    """Answers each call from a script: a code for every recipient, or a dict; default 250."""

    name = "scripted"
    idempotent = False

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, list[str]]] = []
        self.hold: list[Deferred] = []

    def deliver(self, envelope: Envelope, message_path: str, recipients: list) -> Deferred:
        addresses = [r.address for r in recipients]
        self.calls.append((envelope.id, addresses))
        step = self.script.pop(0) if self.script else 250
        if isinstance(step, Exception):
            return fail(step)
        if step == "hold":
            d: Deferred = Deferred()
            self.hold.append(d)
            return d
        if isinstance(step, dict):
            return succeed({a: step.get(a, (250, "2.0.0 Ok")) for a in addresses})
        text = {2: "2.0.0 Ok", 4: "4.2.0 Try later", 5: "5.1.1 No such user"}[step // 100]
        return succeed({a: (step, text) for a in addresses})


class QueueTestCase(SynchronousTestCase):
    """A spool, a failed store and a queue around a scripted agent, all synchronous."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.spool = make_spool(os.path.abspath(self.mktemp()), self.clock)

    def queue(self, agent: ScriptedAgent, workers: int = 5, **policy: Any) -> DeliveryQueue:
        values = {"initial": 300, "factor": 2, "maximum": 3600, "jitter": 0.2, "max_age": 5 * 86400}
        values.update(policy)
        queue = DeliveryQueue(self.spool, Router(agent), self.clock, workers, processing_timeout=300,
                              policy=RetryPolicy(**values), failed=FailedStore(self.spool, self.clock),
                              hostname="mx.test", random=lambda: 0.5)
        self.spool.add_listener(queue.enqueue)
        queue.startService()
        self.addCleanup(queue.stopService)
        return queue

    def commit(self, *recipients: str, sender: str = "sender@example.com") -> Envelope:
        """Queue a message the way SMTP intake does (the listener hands it to the queue)."""
        message = self.spool.new_message()
        message.write(CONTENT)
        now = self.clock.seconds()
        envelope = new_envelope(message.id, *recipients, sender=sender, received=now)
        envelope.next_attempt = now
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        return envelope

    def on_disk(self, queue_id: str) -> Envelope:
        return Envelope.from_json(read(self.spool.path("queue", queue_id + ".json")))


class SchedulingTests(QueueTestCase):
    """When attempts happen."""

    def test_is_a_queue_consumer(self) -> None:
        """DeliveryQueue provides IQueueConsumer."""
        self.assertTrue(verifyObject(IQueueConsumer, self.queue(ScriptedAgent())))

    def test_new_mail_is_delivered_at_once_and_removed(self) -> None:
        """A committed message is delivered without waiting and leaves the queue."""
        agent = ScriptedAgent()
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com")
        self.assertEqual(agent.calls, [(envelope.id, ["bob@example.com"])])
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertEqual((queue.depth, self.spool.queued, queue.stats.delivered_messages), (0, 0, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing left to schedule

    def test_backoff_schedule(self) -> None:
        """4xx answers defer: the next attempts come 300, 600, 1200 s later, recorded in the envelope."""
        agent = ScriptedAgent(450, 450, 450, 250)
        self.queue(agent)
        envelope = self.commit("bob@example.com")
        waits = []
        for expected in (300, 600, 1200):
            stored = self.on_disk(envelope.id)
            waits.append(stored.next_attempt - self.clock.seconds())
            self.assertEqual(stored.recipients[0].status, PENDING)
            self.assertEqual(stored.last_error, "450 4.2.0 Try later")
            self.clock.advance(expected - 1)
            calls = len(agent.calls)
            self.clock.advance(1)
            self.assertEqual(len(agent.calls), calls + 1)
        self.assertEqual(waits, [300, 600, 1200])
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_partial_success_retries_only_pending(self) -> None:
        """After one recipient is delivered and one deferred, the retry is for the deferred one only."""
        agent = ScriptedAgent({"b@example.com": (451, "4.2.0 busy")})
        self.queue(agent)
        envelope = self.commit("a@example.com", "b@example.com")
        self.assertEqual([r.status for r in self.on_disk(envelope.id).recipients], [DELIVERED, PENDING])
        self.clock.advance(300)
        self.assertEqual(agent.calls[-1], (envelope.id, ["b@example.com"]))
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_workers_bound_concurrency(self) -> None:
        """With workers=2, a third message waits until an attempt ends."""
        agent = ScriptedAgent("hold", "hold", 250)
        self.queue(agent, workers=2)
        first, second, third = (self.commit(f"u{i}@example.com") for i in range(3))
        self.assertEqual([c[0] for c in agent.calls], [first.id, second.id])
        agent.hold[0].callback({"u0@example.com": (250, "2.0.0 Ok")})
        self.assertEqual([c[0] for c in agent.calls], [first.id, second.id, third.id])

    def test_processing_timeout_defers(self) -> None:
        """An attempt that takes longer than processingTimeout counts as a temporary failure."""
        agent = ScriptedAgent("hold")
        self.queue(agent)
        envelope = self.commit("bob@example.com")
        self.clock.advance(300)
        stored = self.on_disk(envelope.id)
        self.assertEqual(stored.recipients[0].status, PENDING)
        self.assertIn("4.4.7 Delivery attempt timed out", stored.recipients[0].reply)
        self.assertEqual(stored.attempts, 1)

    def test_agent_fault_is_a_temporary_failure(self) -> None:
        """An agent whose Deferred fails (its own fault) defers every recipient with 451 4.3.0."""
        agent = ScriptedAgent(RuntimeError("agent bug"))
        self.queue(agent)
        envelope = self.commit("bob@example.com")
        stored = self.on_disk(envelope.id)
        self.assertEqual(stored.recipients[0].reply, "451 4.3.0 Local delivery fault: RuntimeError")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(300)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_recovered_messages_keep_their_time(self) -> None:
        """A message enqueued with a future next attempt is tried then, not before."""
        agent = ScriptedAgent()
        queue = self.queue(agent)
        self.spool._listeners.clear()
        envelope = self.commit("bob@example.com")
        envelope.next_attempt = self.clock.seconds() + 50
        queue.enqueue(envelope)
        queue.enqueue(envelope)
        self.clock.advance(49)
        self.assertEqual(agent.calls, [])
        self.clock.advance(1)
        self.assertEqual(len(agent.calls), 1)


class GivingUpTests(QueueTestCase):
    """Permanent failures and old age: failed/ and a bounce."""

    def test_permanent_failure_goes_to_failed_with_a_bounce(self) -> None:
        """A 5xx moves the message to failed/ as JSON with its content, and bounces to the sender."""
        agent = ScriptedAgent(550, 250)
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com")
        record = json.loads(read(self.spool.path("failed", envelope.id + ".json")))
        self.assertEqual(record["content"].encode(), read_content_tail(record))
        self.assertEqual(record["recipients"][0]["status"], FAILED)
        self.assertEqual(record["recipients"][0]["reply"], "550 5.1.1 No such user")
        self.assertIn("550 5.1.1 No such user", record["reason"])
        # The bounce was queued and delivered (second call) to the original sender, from <>.
        _bounce_id, bounce_to = agent.calls[1]
        self.assertEqual(bounce_to, ["sender@example.com"])
        self.assertEqual((queue.stats.failed_messages, queue.stats.bounces), (1, 1))
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_bounce_content(self) -> None:
        """The bounce is a multipart/report with the recipient, its status and the original headers."""
        agent = ScriptedAgent(550, "hold")
        self.queue(agent)
        envelope = self.commit("bob@example.com")
        bounce_id = agent.calls[1][0]
        bounce = self.on_disk(bounce_id)
        self.assertEqual(bounce.sender, "")
        content = read(self.spool.message_path(bounce_id))
        self.assertIn(b"Content-Type: multipart/report; report-type=delivery-status", content)
        self.assertIn(b"Final-Recipient: rfc822; bob@example.com\r\nAction: failed\r\nStatus: 5.1.1", content)
        self.assertIn(b"Subject: hello", content)
        self.assertIn(envelope.id.encode(), content)

    def test_no_bounce_for_a_bounce(self) -> None:
        """A message from the null sender that fails is kept in failed/ but never bounced."""
        agent = ScriptedAgent(550)
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com", sender="")
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(queue.stats.bounces, 0)
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])

    def test_maximum_age(self) -> None:
        """A message still deferred after maxQueueAge is given up: failed/ and a bounce."""
        agent = ScriptedAgent(*([451] * 10))
        queue = self.queue(agent, max_age=1000)
        envelope = self.commit("bob@example.com")
        self.clock.advance(300)
        self.assertEqual(listing(self.spool, "failed"), [])
        self.clock.advance(600)   # second retry at 900 s: still younger than 1000 s
        self.clock.advance(1200)  # third at 2100 s: too old
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])
        record = json.loads(read(self.spool.path("failed", envelope.id + ".json")))
        self.assertIn("gave up after 1000 s", record["recipients"][0]["reply"])
        self.assertEqual(queue.stats.bounces, 1)


class FailedRetryTests(QueueTestCase):
    """Failed mail comes back: on demand and periodically."""

    def test_retry_requeues_with_fresh_counters(self) -> None:
        """retry() puts a failed message back with its failed recipients pending and attempts at 0."""
        agent = ScriptedAgent(550, 250, 250)
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com", sender="")
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])
        count = self.successResultOf(Deferred.fromCoroutine(queue.failed.retry(envelope.id)))
        self.assertEqual(count, 1)
        self.assertEqual(agent.calls[-1], (envelope.id, ["bob@example.com"]))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_retry_unknown_id(self) -> None:
        """Retrying an id that is not in failed/ is a KeyError."""
        queue = self.queue(ScriptedAgent())
        self.failureResultOf(Deferred.fromCoroutine(queue.failed.retry("nope")), KeyError)

    def test_periodic_retry_and_no_second_bounce(self) -> None:
        """failed/ is retried every failedRetryInterval; a second failure does not bounce again."""
        agent = ScriptedAgent(550, 250, 550)
        queue = self.queue(agent)
        # The server's timer (gomail.root): a PeriodicService beside the queue.
        retry = PeriodicService("failed-store retry", 3600, queue.failed.retry, self.clock, now=False)
        retry.startService()
        self.addCleanup(retry.stopService)
        envelope = self.commit("bob@example.com")
        self.assertEqual(queue.stats.bounces, 1)
        self.clock.advance(3600)
        self.assertEqual(agent.calls[-1], (envelope.id, ["bob@example.com"]))
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])
        self.assertEqual(queue.stats.bounces, 1)


def read_content_tail(record: dict) -> bytes:
    """The content stored in a failed record (it is text here)."""
    return record["content"].encode()


class OperatorChangeTests(QueueTestCase):
    """flush() and delete(): what `gomail queue` asks of a running server (through gomail.control)."""

    def test_flush_makes_deferred_mail_due_without_writing(self) -> None:
        """A deferred message is tried at once after flush(); its envelope file is not rewritten by the flush."""
        agent = ScriptedAgent(451)
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com")
        before = read(self.spool.path("queue", envelope.id + ".json"))
        agent.script = ["hold"]
        self.assertEqual(queue.flush(), (1, 0))
        self.assertEqual(len(agent.calls), 2)
        self.assertEqual(read(self.spool.path("queue", envelope.id + ".json")), before)
        agent.hold[0].callback({"bob@example.com": (250, "2.0.0 Ok")})
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_flush_leaves_attempts_under_way_alone(self) -> None:
        """A message being delivered is counted as active and not tried a second time."""
        agent = ScriptedAgent("hold")
        queue = self.queue(agent)
        self.commit("bob@example.com")
        self.assertEqual(queue.flush(), (0, 1))
        self.assertEqual(len(agent.calls), 1)
        agent.hold[0].callback({"bob@example.com": (250, "2.0.0 Ok")})
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_delete_deferred_message(self) -> None:
        """A deferred message is deleted: files gone, never tried again, the queue's depth down."""
        agent = ScriptedAgent(451)
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com")
        self.successResultOf(Deferred.fromCoroutine(queue.delete(envelope.id)))
        self.assertEqual((listing(self.spool, "queue"), queue.depth), ([], 0))
        self.clock.advance(86400)
        self.assertEqual(len(agent.calls), 1)

    def test_delete_during_attempt_is_refused(self) -> None:
        """A message being delivered is not deleted (MessageBusy): its attempt settles it, its files stay until then."""
        agent = ScriptedAgent("hold")
        queue = self.queue(agent)
        envelope = self.commit("bob@example.com")
        self.failureResultOf(Deferred.fromCoroutine(queue.delete(envelope.id)), MessageBusy)
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        agent.hold[0].callback({"bob@example.com": (250, "2.0.0 Ok")})
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_delete_unknown(self) -> None:
        """An id the queue does not hold: KeyError."""
        queue = self.queue(ScriptedAgent())
        self.failureResultOf(Deferred.fromCoroutine(queue.delete("0123456789abcdef01234")), KeyError)
