"""RelayAgent on a Clock with fake connections: batches, continueOnError, failover, reuse."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.delivery.client import ConnectionFailure, Transaction
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient

PRIMARY = Smarthost("primary.test", 587, priority=0)
BACKUP = Smarthost("backup.test", 587, priority=10)


class FakeConnection:
    """Stands for a RelayProtocol: answers each transaction with a script of replies."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[list[str]] = []
        self.closed = False

    def send(self, transaction: Transaction) -> Deferred:
        self.sent.append(transaction.recipients)
        reply = self.replies.pop(0) if self.replies else 250
        if isinstance(reply, ConnectionFailure):
            return fail(reply)
        return succeed({a: (reply, "2.0.0 ok" if reply < 400 else "x.y.z no") for a in transaction.recipients})

    def close(self) -> None:
        self.closed = True


class AgentTestCase(SynchronousTestCase):
    """An agent whose connect() hands out scripted connections or fails."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.connections: dict[Smarthost, list[FakeConnection]] = {PRIMARY: [], BACKUP: []}
        self.refuse: set[Smarthost] = set()
        self.script: dict[Smarthost, list[Any]] = {PRIMARY: [], BACKUP: []}
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")

    def connect(self, smarthost: Smarthost) -> Deferred:
        if smarthost in self.refuse:
            return fail(ConnectionFailure(451, f"4.4.1 Cannot reach {smarthost}: refused"))
        connection = FakeConnection(self.script[smarthost])
        self.connections[smarthost].append(connection)
        return succeed(connection)

    def agent(self, batch_size: int = 2, batch_delay_ms: int = 0, continue_on_error: bool = True,
              smarthosts: tuple = (PRIMARY, BACKUP)) -> RelayAgent:
        return RelayAgent(list(smarthosts), self.connect, self.clock, batch_size, batch_delay_ms,
                          continue_on_error, idle_timeout=10, failure_threshold=2, skip_seconds=300)

    def deliver(self, agent: RelayAgent, *addresses: str) -> Deferred:
        envelope = Envelope(id="q1", sender="a@example.org", recipients=[Recipient(a) for a in addresses],
                            received=0)
        return agent.deliver(envelope, self.path, envelope.pending())


class BatchTests(AgentTestCase):
    """batchSize, batchDelay, continueOnError."""

    def test_is_a_delivery_agent(self) -> None:
        """RelayAgent provides IDeliveryAgent."""
        self.assertTrue(verifyObject(IDeliveryAgent, self.agent()))

    def test_batches_share_one_connection(self) -> None:
        """Five recipients with batchSize 2 are three transactions on one connection."""
        result = self.successResultOf(self.deliver(self.agent(), *[f"u{i}@x.test" for i in range(5)]))
        self.assertEqual(len(result), 5)
        [connection] = self.connections[PRIMARY]
        self.assertEqual(connection.sent, [["u0@x.test", "u1@x.test"], ["u2@x.test", "u3@x.test"], ["u4@x.test"]])

    def test_batch_delay(self) -> None:
        """batchDelay milliseconds pass between batches, on the clock."""
        d = self.deliver(self.agent(batch_delay_ms=1000), "a@x.test", "b@x.test", "c@x.test")
        self.assertEqual(len(self.connections[PRIMARY][0].sent), 1)
        self.clock.advance(0.999)
        self.assertEqual(len(self.connections[PRIMARY][0].sent), 1)
        self.clock.advance(0.001)
        self.successResultOf(d)

    def test_stop_at_failed_batch(self) -> None:
        """continueOnError false: after a batch with no recipient accepted, the rest stay pending (4xx)."""
        self.script[PRIMARY] = [550]
        result = self.successResultOf(self.deliver(self.agent(continue_on_error=False),
                                                   "a@x.test", "b@x.test", "c@x.test"))
        self.assertEqual(result["a@x.test"][0], 550)
        self.assertEqual(result["c@x.test"], (451, "4.3.0 Not attempted: an earlier batch failed"))
        self.assertEqual(len(self.connections[PRIMARY][0].sent), 1)

    def test_continue_after_failed_batch(self) -> None:
        """continueOnError true: later batches are still sent."""
        self.script[PRIMARY] = [550, 250]
        result = self.successResultOf(self.deliver(self.agent(continue_on_error=True),
                                                   "a@x.test", "b@x.test", "c@x.test"))
        self.assertEqual((result["a@x.test"][0], result["c@x.test"][0]), (550, 250))


class FailoverTests(AgentTestCase):
    """Priorities, connection failures, idle reuse."""

    def test_failover_to_the_next_priority(self) -> None:
        """When the primary refuses connections, the backup delivers in the same attempt."""
        self.refuse.add(PRIMARY)
        result = self.successResultOf(self.deliver(self.agent(), "a@x.test"))
        self.assertEqual(result["a@x.test"][0], 250)
        self.assertEqual(len(self.connections[BACKUP]), 1)

    def test_all_down_defers(self) -> None:
        """With every smarthost unreachable each recipient gets the last connection error, a 4xx."""
        self.refuse.update({PRIMARY, BACKUP})
        result = self.successResultOf(self.deliver(self.agent(), "a@x.test"))
        self.assertEqual(result["a@x.test"], (451, "4.4.1 Cannot reach backup.test:587: refused"))

    def test_failing_smarthost_is_passed_over(self) -> None:
        """After failure_threshold failures in a row the primary is tried last, for skip_seconds."""
        self.refuse.add(PRIMARY)
        agent = self.agent()
        self.successResultOf(self.deliver(agent, "a@x.test"))
        self.successResultOf(self.deliver(agent, "b@x.test"))
        self.refuse.discard(PRIMARY)
        self.successResultOf(self.deliver(agent, "c@x.test"))
        self.assertEqual(self.connections[PRIMARY], [])
        self.clock.advance(300)
        self.successResultOf(self.deliver(agent, "d@x.test"))
        self.assertEqual(len(self.connections[PRIMARY]), 1)

    def test_connection_lost_mid_transaction_tries_the_next(self) -> None:
        """A transaction that fails at connection level moves to the next smarthost (at-least-once)."""
        self.script[PRIMARY] = [ConnectionFailure(451, "4.4.2 Connection to smarthost lost")]
        result = self.successResultOf(self.deliver(self.agent(), "a@x.test"))
        self.assertEqual(result["a@x.test"][0], 250)
        self.assertEqual(self.connections[BACKUP][0].sent, [["a@x.test"]])

    def test_idle_connection_reused_then_closed(self) -> None:
        """A connection is reused by the next message while idle, and closed after idle_timeout."""
        agent = self.agent()
        self.successResultOf(self.deliver(agent, "a@x.test"))
        self.successResultOf(self.deliver(agent, "b@x.test"))
        [connection] = self.connections[PRIMARY]
        self.assertEqual(connection.sent, [["a@x.test"], ["b@x.test"]])
        self.clock.advance(10)
        self.assertTrue(connection.closed)
        self.successResultOf(self.deliver(agent, "c@x.test"))
        self.assertEqual(len(self.connections[PRIMARY]), 2)


class HangingConnection(FakeConnection):
    """A connection whose transaction never answers."""

    def send(self, transaction: Transaction) -> Deferred:
        self.sent.append(transaction.recipients)
        return transaction.done


class CancelTests(AgentTestCase):
    """processingTimeout cancels a delivery in the middle of a transaction."""

    def test_cancelled_transaction_drops_the_connection(self) -> None:
        """Cancelling the delivery closes the connection instead of returning it to the pool."""
        hanging = HangingConnection([])
        agent = RelayAgent([PRIMARY], lambda s: succeed(hanging), self.clock, 2, 0, True)
        d = self.deliver(agent, "a@x.test")
        d.cancel()
        self.failureResultOf(d)
        self.assertTrue(hanging.closed)
        self.assertEqual(agent._idle[PRIMARY], [])
