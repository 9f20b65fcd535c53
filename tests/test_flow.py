"""
Tests for L{gomail.flow}: a connection whose unsent output is over the bound
is not read, and is aborted when it stays over past the timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol, _AggregateSmallWrites
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gomail.flow import OutputBound, ReadPauses, _tls_layer
from tests.smtphelpers import tls_context

# -- unit tests: the transport's calls played by hand ------------------------------------------


class Recorder:
    """Records the callbacks an L{OutputBound} makes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def paused(self) -> None:
        self.calls.append("paused")

    def resumed(self) -> None:
        self.calls.append("resumed")


class OutputBoundTests(SynchronousTestCase):
    """L{OutputBound} as the transport drives it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.recorder = Recorder()
        self.flow = OutputBound(self.clock, 30, self.recorder.paused, self.recorder.resumed)
        self.flow.attach(self.transport)

    def test_provides_push_producer(self) -> None:
        """It is a streaming (push) producer, registered as such on the transport."""
        self.assertTrue(verifyObject(IPushProducer, self.flow))
        self.assertIs(self.transport.producer, self.flow)
        self.assertTrue(self.transport.streaming)

    def test_pause_calls_on_paused_once(self) -> None:
        """The transport pauses on every write while full: the protocol hears of it once."""
        self.flow.pauseProducing()
        self.flow.pauseProducing()
        self.assertEqual(self.recorder.calls, ["paused"])
        self.assertTrue(self.flow.paused)

    def test_resume_calls_on_resumed_once(self) -> None:
        """A drained buffer resumes the protocol once; a resume without a pause is nothing."""
        self.flow.resumeProducing()
        self.flow.pauseProducing()
        self.flow.resumeProducing()
        self.flow.resumeProducing()
        self.assertEqual(self.recorder.calls, ["paused", "resumed"])
        self.assertFalse(self.flow.paused)

    def test_over_the_bound_past_the_timeout_aborts(self) -> None:
        """A connection over the bound for the whole timeout is aborted."""
        self.flow.pauseProducing()
        self.clock.advance(29.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.flow.timed_out)

    def test_drained_in_time_is_kept(self) -> None:
        """Draining before the timeout cancels it; a later pause gets a whole timeout again."""
        self.flow.pauseProducing()
        self.clock.advance(20)
        self.flow.resumeProducing()
        self.clock.advance(20)
        self.flow.pauseProducing()
        self.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 70)

    def test_repeated_pauses_do_not_restart_the_timer(self) -> None:
        """A client cannot push the deadline back: more writes while full keep the first deadline."""
        self.flow.pauseProducing()
        self.clock.advance(20)
        self.flow.pauseProducing()
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)

    def test_stop_producing_cancels_the_timer(self) -> None:
        """A lost connection (the transport calls stopProducing) leaves no timer behind."""
        self.flow.pauseProducing()
        self.flow.stopProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flow.resumeProducing()
        self.assertEqual(self.recorder.calls, ["paused"])

    def test_detach_unregisters_and_cancels(self) -> None:
        """detach unregisters the producer and cancels the timer; calling it again is harmless."""
        self.flow.pauseProducing()
        self.flow.detach()
        self.flow.detach()
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_tls_started_ends_a_pause(self) -> None:
        """A pause from before startTLS ends at tls_started (the new TLS layer never resumes it)."""
        self.flow.pauseProducing()
        self.flow.tls_started()
        self.assertEqual(self.recorder.calls, ["paused", "resumed"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.flow.tls_started()
        self.assertEqual(self.recorder.calls, ["paused", "resumed"])

    def test_on_timeout_replaces_the_abort(self) -> None:
        """An on_timeout callback runs instead of abortConnection."""
        called: list[bool] = []
        flow = OutputBound(self.clock, 5, on_timeout=lambda: called.append(True))
        transport = StringTransport()
        flow.attach(transport)
        flow.pauseProducing()
        self.clock.advance(5)
        self.assertEqual(called, [True])
        self.assertFalse(transport.disconnecting)

    def test_no_timeout(self) -> None:
        """With timeout None the connection is paused but never aborted for it."""
        flow = OutputBound(self.clock, None)
        transport = StringTransport()
        flow.attach(transport)
        flow.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(transport.producerState, "paused")

    def test_bad_timeout(self) -> None:
        """A zero or negative timeout is a programming error."""
        self.assertRaises(ValueError, OutputBound, self.clock, 0)


class DefaultCallbackTests(SynchronousTestCase):
    """Without callbacks, L{OutputBound} pauses and resumes the transport's reading itself."""

    def test_pauses_and_resumes_reading(self) -> None:
        """The transport's reading follows the output's state."""
        transport = StringTransport()
        flow = OutputBound(Clock(), 10)
        flow.attach(transport)
        flow.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        flow.resumeProducing()
        self.assertEqual(transport.producerState, "producing")


class ReadPausesTests(SynchronousTestCase):
    """L{ReadPauses}: reading resumes only when every reason is released."""

    def test_two_reasons(self) -> None:
        """Releasing one of two reasons keeps reading paused; releasing both resumes it."""
        transport = StringTransport()
        pauses = ReadPauses(transport)
        pauses.pause("output")
        pauses.pause("answer")
        self.assertEqual(pauses.reasons, {"output", "answer"})
        self.assertFalse(pauses.resume("output"))
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(pauses.resume("answer"))
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse(pauses)

    def test_release_unknown_reason(self) -> None:
        """Releasing a reason not held changes nothing."""
        transport = StringTransport()
        pauses = ReadPauses(transport)
        pauses.pause("output")
        self.assertFalse(pauses.resume("answer"))
        self.assertIn("output", pauses)
        self.assertEqual(transport.producerState, "paused")

    def test_composes_with_output_bound(self) -> None:
        """The output bound's end does not resume reading another reason still holds."""
        transport = StringTransport()
        pauses = ReadPauses(transport)
        flow = OutputBound(Clock(), 10, lambda: pauses.pause("output"), lambda: pauses.resume("output"))
        flow.attach(transport)
        pauses.pause("answer")
        flow.pauseProducing()
        flow.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        pauses.resume("answer")
        self.assertEqual(transport.producerState, "producing")


# -- real loopback connections ------------------------------------------------------------------

REPLY = b"250 " + b"x" * 1020 + b"\r\n"  # about 100 times the 6-byte command it answers
COMMANDS = 40000  # 240 KB of commands: 41 MB of replies if all were answered


def buffered(transport: Any) -> int:
    """
    The bytes a connection holds unsent: the TCP transport's write buffer and,
    under TLS, what the TLS layer holds (its small-write aggregation and any
    writes waiting for the handshake).
    """
    total = 0
    tls = _tls_layer(transport)
    if tls is not None:
        total += sum(map(len, getattr(getattr(tls, "_aggregator", None), "_buffer", [])))
        total += sum(map(len, tls._appSendBuffer))
    tcp = _socket_transport(transport)
    return total + len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def bound(transport: Any) -> int:
    """
    What L{buffered} may reach on C{transport}: the TCP transport's
    C{bufferSize} and one reply; under TLS, plus one flush of the TLS layer's
    small-write aggregation (64000 bytes) as TLS records (some overhead).
    """
    limit = _socket_transport(transport).bufferSize + len(REPLY)
    if _tls_layer(transport) is not None:
        limit += int(_AggregateSmallWrites.MAX_BUFFER_SIZE * 1.05)
    return limit


class LineServer(Protocol):
    """Answers every line with L{REPLY}, from its own input buffer, bounded by an L{OutputBound}."""

    def __init__(self, clock: Clock, banner: bytes = b"", start_tls: Any = None) -> None:
        self.clock, self.banner, self.start_tls = clock, banner, start_tls
        self.input = b""
        self.received = 0
        self.most_buffered = 0
        self.paused = Deferred()
        self.lost = Deferred()

    def connectionMade(self) -> None:
        small_buffers(_socket_transport(self.transport).getHandle())
        self.flow = OutputBound(self.clock, 60, self.output_full, self.output_drained, name="test")
        self.flow.attach(self.transport)
        if self.banner:
            self.transport.write(self.banner)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.input += data
        self.process()

    def process(self) -> None:
        while not self.flow.paused and b"\n" in self.input:
            line, _, self.input = self.input.partition(b"\n")
            if line == b"STARTTLS\r" and self.start_tls is not None:
                self.transport.write(b"220 go ahead\r\n")
                self.transport.startTLS(self.start_tls)
                self.flow.tls_started()
                continue
            self.transport.write(REPLY)
            self.most_buffered = max(self.most_buffered, buffered(self.transport))
        self.most_buffered = max(self.most_buffered, buffered(self.transport))

    def output_full(self) -> None:
        self.transport.pauseProducing()
        if not self.paused.called:
            self.paused.callback(None)

    def output_drained(self) -> None:
        self.transport.resumeProducing()
        self.process()

    def connectionLost(self, reason: Any = None) -> None:
        self.flow.detach()
        self.lost.callback(None)


@implementer(IHandshakeListener)
class Sink(Protocol):
    """
    A client that sends C{data} once connected, reads what it is told to (over
    TLS: stops reading once the handshake is done), and records the end.
    """

    def __init__(self, data: bytes, read: bool = False, until: bytes = b"", tls: bool = False) -> None:
        self.data, self.read, self.until, self.tls = data, read, until, tls
        self.got = b""
        self.seen = Deferred()
        self.lost = Deferred()

    def connectionMade(self) -> None:
        if not self.read:
            small_buffers(_socket_transport(self.transport).getHandle())
            if not self.tls:
                self.transport.pauseProducing()  # the attacker never reads
        if self.data:
            self.transport.write(self.data)

    def handshakeCompleted(self) -> None:
        if not self.read:
            self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.until and self.until in self.got and not self.seen.called:
            self.seen.callback(self.got)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def small_buffers(sock: Any) -> None:
    """Small kernel buffers, so that the test's unread bytes fill them quickly."""
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class LoopbackTests(TestCase):
    """A client that never reads, on a real loopback connection: the server's buffer stays bounded."""

    timeout = 20

    def listen(self, make: Any, tls: bool = False) -> Any:
        servers: list[LineServer] = []

        def build(addr: Any) -> LineServer:
            server = make()
            servers.append(server)
            return server

        def abort_all() -> None:
            for server in servers:
                if server.transport is not None and not server.lost.called:
                    server.transport.abortConnection()

        self.addCleanup(abort_all)
        factory = Factory.forProtocol(LineServer)
        factory.buildProtocol = build  # type: ignore[method-assign]
        if tls:
            factory = TLSMemoryBIOFactory(tls_context(self.mktemp()), False, factory)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.servers = servers
        return port.getHost().port

    def connect(self, port: int, client: Sink, tls: bool = False) -> None:
        factory = ClientFactory.forProtocol(lambda: client)
        if tls:
            factory = TLSMemoryBIOFactory(ssl.CertificateOptions(), True, factory)
        connector = reactor.connectTCP("127.0.0.1", port, factory)
        self.addCleanup(connector.disconnect)

    async def check_bounded_then_aborted(self, clock: Clock, client: Sink) -> None:
        await self.servers_paused()
        server = self.servers[0]
        for _ in range(5):
            await turn()  # what the TLS layer aggregates is flushed at the next turn
        self.assertLessEqual(server.most_buffered, bound(server.transport))
        self.assertLessEqual(buffered(server.transport), bound(server.transport))
        self.assertLess(server.received, COMMANDS * 6)  # it stopped reading
        self.assertTrue(server.flow.paused)
        # The kernel's socket buffers may still take a little of what is buffered, so a pause can
        # end and start again: the timeout runs from the last pause.
        for _ in range(50):
            clock.advance(60)
            if client.lost.called:
                break
            await turn()
        self.assertTrue(server.flow.timed_out)
        await client.lost
        await server.lost

    async def servers_paused(self) -> None:
        while not self.servers:
            await turn()
        await self.servers[0].paused

    async def test_unread_output_stays_bounded(self) -> None:
        """
        A client pipelines 40000 commands and never reads: the server stops
        reading once its buffer is over the bound, holds no more than the bound
        and one reply, and aborts the connection after the timeout.
        """
        clock = Clock()
        port = self.listen(lambda: LineServer(clock))
        client = Sink(b"NOOP\r\n" * COMMANDS)
        self.connect(port, client)
        await self.check_bounded_then_aborted(clock, client)

    async def test_reading_client_is_served(self) -> None:
        """A client that reads gets every answer (the bound pauses nobody who keeps up)."""
        clock = Clock()
        port = self.listen(lambda: LineServer(clock))
        client = Sink(b"NOOP\r\n" * 500 + b"LAST\r\n", read=True)
        client.until = REPLY * 501
        self.connect(port, client)
        await client.seen
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_implicit_tls_banner_before_handshake(self) -> None:
        """
        On a TLSMemoryBIOFactory listener a banner written before the handshake
        (the TLS layer pauses its producer until it can send) neither stops the
        handshake nor starts the timer: the client gets the banner and answers.
        """
        clock = Clock()
        port = self.listen(lambda: LineServer(clock, banner=b"220 hello\r\n"), tls=True)
        client = Sink(b"NOOP\r\n", read=True, until=b"220 hello\r\n" + REPLY)
        self.connect(port, client, tls=True)
        await client.seen
        self.assertFalse(self.servers[0].flow.paused)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_implicit_tls_unread_output_stays_bounded(self) -> None:
        """Over implicit TLS, a client that never reads is bounded and aborted the same way."""
        clock = Clock()
        port = self.listen(lambda: LineServer(clock, banner=b"220 hello\r\n"), tls=True)
        client = Sink(b"NOOP\r\n" * COMMANDS, tls=True)
        self.connect(port, client, tls=True)
        await self.check_bounded_then_aborted(clock, client)

    async def test_bound_survives_starttls(self) -> None:
        """
        A producer attached before STARTTLS stays registered after it (Twisted
        moves it into the TLS layer): a client that then never reads is bounded
        and aborted.
        """
        clock = Clock()
        port = self.listen(lambda: LineServer(clock, start_tls=tls_context(self.mktemp())))
        client = StartTLSClient(b"NOOP\r\n" * COMMANDS)
        self.connect(port, client)
        await self.check_bounded_then_aborted(clock, client)


class StartTLSClient(Sink):
    """Asks for STARTTLS, then, over TLS, pipelines C{data} and never reads."""

    def connectionMade(self) -> None:
        small_buffers(_socket_transport(self.transport).getHandle())
        self.transport.write(b"STARTTLS\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if b"220 go ahead\r\n" in self.got and self.data:
            self.transport.startTLS(ssl.CertificateOptions())
            self.transport.write(self.data)
            self.data = b""


def _socket_transport(transport: Any) -> Any:
    """The TCP transport under any TLSMemoryBIOFactory wrapper."""
    while isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    return transport


def turn() -> Deferred:
    """One turn of the reactor."""
    d: Deferred = Deferred()
    reactor.callLater(0, d.callback, None)
    return d
