"""
What the relay does when the smarthost is slow or silent (issue 15 items 4 and 11).

The relay talks to the real test smarthost (L{tests.smarthost}) in this
process, over an in-memory connection (L{twisted.test.iosim}) and a
L{task.Clock}: a smarthost that answers the final dot late, or never; one that
stalls at a step; one that offers AUTH in the clear. The tester's run (a dot
answered after the timeout) is also reproduced end to end, on real processes,
in L{tests.test_relay_integration}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gomail.configschema import DeliverySettings
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.client import ConnectionFailure, RelayProtocol
from gomail.delivery.connect import make_connector
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.delivery.router import Router
from gomail.metrics import Metrics
from gomail.spool.envelope import DELIVERED, PENDING, Envelope, Recipient
from tests.smarthost import SmarthostFactory
from tests.spooltesting import make_spool, new_envelope

COMMAND_TIMEOUT = 300
DATA_TIMEOUT = 600
PROCESSING_TIMEOUT = 300
SMARTHOST = Smarthost("smarthost.test", 587)
CONTENT = b"From: alice@example.org\r\nSubject: slow smarthost\r\n\r\nHello.\r\n"


class Wire:
    """
    The test smarthost and the relay's connections to it, in memory, on one
    Clock. C{connect} is what a L{RelayAgent} is given (L{make_connector} in
    the server); C{advance} moves time and then the bytes.
    """

    def __init__(self, test: SynchronousTestCase, username: str = "", **smarthost: Any) -> None:
        self.clock = Clock()
        self.lines: list[str] = []
        self.spool = os.path.abspath(test.mktemp())
        os.makedirs(self.spool)
        self.factory = SmarthostFactory(self.spool, "reject", "busy", clock=self.clock,
                                        announce=self.lines.append, **smarthost)
        self.username = username
        self.pumps: list[iosim.IOPump] = []
        self.clients: list[RelayProtocol] = []

    def connect(self, smarthost: Smarthost) -> Deferred:
        client = RelayProtocol("gomail.test", self.clock, COMMAND_TIMEOUT, self.username,
                               "secret" if self.username else "", tls_context=object(),
                               data_timeout=DATA_TIMEOUT)
        server = self.factory.buildProtocol(None)
        self.clients.append(client)
        self.pumps.append(iosim.connect(server, iosim.FakeTransport(server, True), client,
                                        iosim.FakeTransport(client, False), clock=self.clock))
        return client.ready

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    def stored(self) -> int:
        """Messages the smarthost has stored (delivered, whatever it told the relay)."""
        return len([name for name in os.listdir(self.spool) if name.endswith(".eml")])


class LogCapture:
    """The formatted lines a Logger emitted."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def logger(self) -> Logger:
        return Logger(observer=self.events.append)

    @property
    def lines(self) -> list[str]:
        return [formatEvent(event) for event in self.events]

    def having(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


class AgentCase(SynchronousTestCase):
    """A RelayAgent on a L{Wire}, bounded by processingTimeout as in the server."""

    def setUp(self) -> None:
        self.log = LogCapture()
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "wb") as f:
            f.write(CONTENT)

    def agent(self, wire: Wire, smarthosts: tuple[Smarthost, ...] = (SMARTHOST,),
              processing_timeout: float = PROCESSING_TIMEOUT) -> RelayAgent:
        agent = RelayAgent(list(smarthosts), wire.connect, wire.clock, batch_size=20, batch_delay_ms=0,
                           continue_on_error=True, processing_timeout=processing_timeout,
                           data_timeout=DATA_TIMEOUT)
        agent.log = self.log.logger()
        return agent

    def deliver(self, wire: Wire, agent: RelayAgent, queue_id: str = "Q1") -> Deferred:
        envelope = Envelope(id=queue_id, sender="alice@example.org", recipients=[Recipient("bob@example.net")],
                            received=0)
        d = agent.deliver(envelope, self.path, envelope.pending())
        wire.flush()
        return d


class FinalDotTests(AgentCase):
    """The wait for the final dot's reply, and a reply that never comes in time."""

    def test_dot_answered_after_the_timeout_is_one_possible_duplicate(self) -> None:
        """
        The tester's smarthost: it stores the message at the dot and answers
        after dataTimeout. The recipient stays pending (4xx, retried), one line
        says the message may already be delivered, naming the message and the
        smarthost, and the counter (gomail_relay_possible_duplicates_total) is 1.
        """
        wire = Wire(self, dot_delay=DATA_TIMEOUT + 60)
        agent = self.agent(wire, (SMARTHOST, Smarthost("backup.test", 587, priority=10)))
        d = self.deliver(wire, agent, "Q42")
        self.assertEqual((wire.stored(), wire.lines[-1]), (1, "dot delayed 1"))
        wire.advance(DATA_TIMEOUT - 1)
        self.assertNoResult(d)
        wire.advance(1)
        code, text = self.successResultOf(d)["bob@example.net"]
        self.assertEqual((code, text), (451, "4.4.2 timeout after 600 s waiting for the final dot"))
        [line] = self.log.having("possible duplicate")
        self.assertIn("Q42", line)
        self.assertIn("smarthost.test:587", line)
        self.assertIn("may already be delivered", line)
        self.assertIn("timeout after 600 s waiting for the final dot", line)
        self.assertEqual(agent.possible_duplicates, 1)
        # Not sent again through the backup in the same attempt: one copy so far, retried later.
        self.assertEqual((len(wire.clients), wire.stored()), (1, 1))
        wire.advance(60)  # the late reply finds the connection gone
        self.assertEqual(self.log.having("possible duplicate"), [line])

    def test_dot_waits_longer_than_any_other_reply(self) -> None:
        """
        A dot answered after commandTimeout (and after processingTimeout) but
        within dataTimeout is a delivery: 250, the connection kept for reuse,
        no possible duplicate, the message stored once.
        """
        wire = Wire(self, dot_delay=COMMAND_TIMEOUT + 150)
        agent = self.agent(wire)
        d = self.deliver(wire, agent)
        wire.advance(COMMAND_TIMEOUT + 149)
        self.assertNoResult(d)
        self.assertTrue(self.log.having("processingTimeout (300 s) reached while smarthost.test:587 has the final "
                                        "dot: waiting for its reply"))
        wire.advance(1)
        self.assertEqual(self.successResultOf(d)["bob@example.net"][0], 250)
        self.assertEqual((wire.stored(), agent.possible_duplicates), (1, 0))
        self.assertEqual(self.log.having("possible duplicate"), [])
        self.assertFalse(wire.clients[0].closed)

    def test_other_replies_wait_command_timeout(self) -> None:
        """A MAIL left unanswered fails after commandTimeout, naming the step; nothing was sent, no duplicate."""
        wire = Wire(self, stall=("MAIL",))
        agent = self.agent(wire, processing_timeout=1000)
        d = self.deliver(wire, agent)
        wire.advance(COMMAND_TIMEOUT - 1)
        self.assertNoResult(d)
        wire.advance(1)
        self.assertEqual(self.successResultOf(d)["bob@example.net"],
                         (451, "4.4.2 timeout after 300 s waiting for MAIL"))
        self.assertEqual((agent.possible_duplicates, wire.stored()), (0, 0))
        [line] = self.log.having("smarthost smarthost.test:587 failed")
        self.assertIn("timeout after 300 s waiting for MAIL", line)

    def test_dot_never_answered_then_delivered_by_the_retry(self) -> None:
        """A smarthost silent after the dot: a possible duplicate; the next attempt (new connection) delivers again."""
        wire = Wire(self, stall=("dot",))
        agent = self.agent(wire)
        d = self.deliver(wire, agent)
        wire.advance(DATA_TIMEOUT)
        self.assertEqual(self.successResultOf(d)["bob@example.net"][0], 451)
        self.assertEqual(agent.possible_duplicates, 1)
        wire.factory.stall = frozenset()
        self.assertEqual(self.successResultOf(self.deliver(wire, agent))["bob@example.net"][0], 250)
        self.assertEqual((wire.stored(), len(wire.clients)), (2, 2))  # at least once: the copy was not lost

    def test_possible_duplicates_reach_prometheus(self) -> None:
        """The counter is exported as gomail_relay_possible_duplicates_total."""
        wire = Wire(self, stall=("dot",))
        agent = self.agent(wire)
        self.deliver(wire, agent)
        wire.advance(DATA_TIMEOUT)
        metrics = Metrics(delivery=delivery_queue(self, wire, agent))
        self.assertEqual(metrics.registry.get_sample_value("gomail_relay_possible_duplicates_total"), 1.0)


def delivery_queue(test: SynchronousTestCase, wire: Wire, agent: RelayAgent) -> DeliveryQueue:
    """The server's delivery queue around C{agent} (one worker, processingTimeout 300), started."""
    spool = make_spool(os.path.abspath(test.mktemp()), wire.clock)
    queue = DeliveryQueue(spool, Router(object(), agent), wire.clock, 1, processing_timeout=PROCESSING_TIMEOUT,
                          policy=RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0, max_age=86400),
                          failed=FailedStore(spool, wire.clock), hostname="mx.test", random=lambda: 0.5)
    spool.add_listener(queue.enqueue)
    queue.startService()
    test.addCleanup(queue.stopService)
    return queue


class QueueBoundTests(SynchronousTestCase):
    """processingTimeout (the queue's bound on an attempt) never cuts the dot's wait short."""

    def test_queue_waits_for_a_slow_dot(self) -> None:
        """
        Through the delivery queue with processingTimeout 300: a dot answered
        after 450 s delivers the message once (recorded delivered, removed),
        where cutting at 300 s would have left it to be sent again.
        """
        wire = Wire(self, dot_delay=450)
        wire.clock.advance(1700000000)
        agent = RelayAgent([SMARTHOST], wire.connect, wire.clock, 20, 0, True,
                           processing_timeout=PROCESSING_TIMEOUT, data_timeout=DATA_TIMEOUT)
        queue = delivery_queue(self, wire, agent)
        spool = queue.spool
        message = spool.new_message()
        message.write(CONTENT)
        envelope = new_envelope(message.id, "bob@example.net", received=wire.clock.seconds(), content=CONTENT)
        envelope.next_attempt = wire.clock.seconds()
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        wire.flush()
        self.assertEqual(wire.stored(), 1)
        wire.advance(PROCESSING_TIMEOUT + 10)
        self.assertEqual(queue.stats.delivered_recipients, 0)
        self.assertEqual(envelope.recipients[0].status, PENDING)
        wire.advance(450 - PROCESSING_TIMEOUT - 10)
        self.assertEqual(envelope.recipients[0].status, DELIVERED)
        self.assertEqual((queue.stats.delivered_messages, agent.possible_duplicates, wire.stored()), (1, 0, 1))
        self.assertEqual(os.listdir(spool.path("queue")), [])

    def test_grace_covers_the_dot_wait(self) -> None:
        """The queue's own cut comes after processingTimeout plus dataTimeout: past any dot the relay waits for."""
        agent = RelayAgent([SMARTHOST], lambda s: Deferred(), Clock(), 1, 0, True,
                           processing_timeout=PROCESSING_TIMEOUT, data_timeout=DATA_TIMEOUT)
        self.assertGreater(agent.attempt_grace, DATA_TIMEOUT)

    def test_attempt_bound_cuts_before_the_dot(self) -> None:
        """A smarthost stalling at DATA for longer than processingTimeout: dropped at 300 s, the reply says why."""
        wire = Wire(self, stall=("DATA",))
        agent = RelayAgent([SMARTHOST], wire.connect, wire.clock, 20, 0, True,
                           processing_timeout=250, data_timeout=DATA_TIMEOUT)
        envelope = Envelope(id="Q1", sender="a@example.org", recipients=[Recipient("b@example.net")], received=0)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(CONTENT)
        d = agent.deliver(envelope, path, envelope.pending())
        wire.flush()
        wire.advance(250)
        self.assertEqual(self.successResultOf(d)["b@example.net"],
                         (451, "4.4.7 Delivery attempt timed out after 250 s (processingTimeout) waiting for DATA"))
        self.assertTrue(wire.clients[0].closed)
        self.assertEqual((agent.possible_duplicates, agent.failing()), (0, []))


class StepTests(AgentCase):
    """Every failure before mail is sent names its step."""

    def assert_step_timeout(self, step: str, stall: str) -> None:
        wire = Wire(self, stall=(stall,))
        # (processingTimeout longer than commandTimeout: at equal values it cuts first, also naming the step)
        agent = self.agent(wire, processing_timeout=1000)
        d = self.deliver(wire, agent)
        wire.advance(COMMAND_TIMEOUT)
        self.assertEqual(self.successResultOf(d)["bob@example.net"],
                         (451, f"4.4.2 timeout after 300 s waiting for {step}"))
        [line] = self.log.having("smarthost smarthost.test:587 failed")
        self.assertIn(f"timeout after 300 s waiting for {step}", line)

    def test_each_step_named(self) -> None:
        """A smarthost silent at the greeting, EHLO, MAIL, RCPT or DATA: the log says which, and after how long."""
        for step, stall in (("greeting", "greeting"), ("EHLO", "EHLO"), ("MAIL", "MAIL"), ("RCPT", "RCPT"),
                            ("DATA", "DATA")):
            self.log.events.clear()
            self.assert_step_timeout(step, stall)

    def test_each_step_named_without_pipelining(self) -> None:
        """The same one command at a time (Twisted's machine, without PIPELINING)."""
        for step in ("MAIL", "RCPT", "DATA"):
            self.log.events.clear()
            wire = Wire(self, stall=(step,), pipelining=False)
            agent = self.agent(wire, processing_timeout=1000)
            d = self.deliver(wire, agent)
            wire.advance(COMMAND_TIMEOUT)
            self.assertEqual(self.successResultOf(d)["bob@example.net"],
                             (451, f"4.4.2 timeout after 300 s waiting for {step}"))

    def test_auth_in_clear_refused(self) -> None:
        """
        Credentials configured and a smarthost offering AUTH but no STARTTLS:
        gomail sends no AUTH (nor MAIL), says QUIT, and the reason is its own
        refusal, not "Smarthost refused".
        """
        wire = Wire(self, username="relay@example.org", offer_auth=True)
        agent = self.agent(wire)
        d = self.deliver(wire, agent)
        code, text = self.successResultOf(d)["bob@example.net"]
        self.assertEqual(code, 451)
        self.assertEqual(text, "4.7.0 gomail refused to send AUTH in clear: the smarthost offers no STARTTLS and "
                               "credentials are configured (they are only ever sent over TLS)")
        self.assertEqual(wire.lines, ["session: EHLO QUIT"])
        [line] = self.log.having("smarthost smarthost.test:587 failed")
        self.assertIn("refused to send AUTH in clear", line)
        self.assertNotIn("Smarthost refused", line)

    def test_auth_step_timeout(self) -> None:
        """An AUTH left unanswered (after STARTTLS) times out naming AUTH."""
        clock = Clock()
        client = RelayProtocol("gomail.test", clock, COMMAND_TIMEOUT, "user", "secret", tls_context=object())
        transport = StringTransport()
        transport.startTLS = lambda context: None
        client.makeConnection(transport)
        client.dataReceived(b"220 smarthost\r\n")
        client.dataReceived(b"250-smarthost\r\n250 STARTTLS\r\n")
        client.dataReceived(b"220 go ahead\r\n")
        client.dataReceived(b"250-smarthost\r\n250 AUTH PLAIN\r\n")
        self.assertTrue(transport.value().endswith(b"AUTH PLAIN dXNlcgB1c2VyAHNlY3JldA==\r\n"))
        clock.advance(COMMAND_TIMEOUT)
        failure = self.failureResultOf(client.ready, ConnectionFailure)
        self.assertEqual(failure.value.reply, (451, "4.4.2 timeout after 300 s waiting for AUTH"))

    def test_refused_auth_names_the_step(self) -> None:
        """A 535 to AUTH is the smarthost's refusal, said as such, at AUTH."""
        clock = Clock()
        client = RelayProtocol("gomail.test", clock, COMMAND_TIMEOUT, "user", "wrong", tls_context=object())
        transport = StringTransport()
        transport.startTLS = lambda context: None
        client.makeConnection(transport)
        for reply in (b"220 smarthost", b"250-smarthost\r\n250 STARTTLS", b"220 go ahead",
                      b"250-smarthost\r\n250 AUTH PLAIN", b"535 5.7.8 bad credentials",
                      b"535 5.7.8 bad credentials"):  # (Twisted tries PLAIN twice, with and without authzid)
            client.dataReceived(reply + b"\r\n")
        failure = self.failureResultOf(client.ready, ConnectionFailure)
        self.assertEqual(failure.value.reply,
                         (451, "4.7.0 Smarthost refused the session at AUTH: 535 5.7.8 bad credentials"))


class ConnectTests(SynchronousTestCase):
    """make_connector: the TCP connect and the whole way to ready, bounded and named."""

    SETTINGS = DeliverySettings(tlsVerify=False, connectTimeout=30, commandTimeout=COMMAND_TIMEOUT)

    def test_connect_never_completes(self) -> None:
        """A TCP connect that never completes fails naming connect (the endpoint's own timeout is the reactor's)."""
        reactor = MemoryReactorClock()
        d = make_connector(reactor, "gomail.test", self.SETTINGS)(Smarthost("192.0.2.1", 25))
        reactor.advance(0)
        self.assertEqual(len(reactor.tcpClients), 1)
        reactor.advance(30 + COMMAND_TIMEOUT)
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.text, "4.4.1 Cannot reach 192.0.2.1:25: timeout after 330 s waiting for connect")

    def test_not_ready_in_time(self) -> None:
        """Connected, but the greeting and EHLO take longer together than connectTimeout + commandTimeout."""
        reactor = MemoryReactorClock()
        d = make_connector(reactor, "gomail.test", self.SETTINGS)(Smarthost("192.0.2.1", 25))
        reactor.advance(0)
        transport = StringTransport()
        protocol = reactor.tcpClients[0][2].buildProtocol(None)
        protocol.makeConnection(transport)
        reactor.advance(200)
        protocol.dataReceived(b"220 smarthost\r\n")
        reactor.advance(130)
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.text, "4.4.2 192.0.2.1:25: timeout after 330 s waiting for EHLO "
                                             "(not ready within connectTimeout + commandTimeout)")
        self.assertTrue(transport.disconnecting)

    def test_cancel_drops_the_connection(self) -> None:
        """Cancelling (the attempt's bound) drops a half-open session and fails with CancelledError."""
        from twisted.internet.defer import CancelledError

        reactor = MemoryReactorClock()
        d = make_connector(reactor, "gomail.test", self.SETTINGS)(Smarthost("192.0.2.1", 25))
        reactor.advance(0)
        transport = StringTransport()
        reactor.tcpClients[0][2].buildProtocol(None).makeConnection(transport)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
