"""no_delay (Nagle off on our TCP connections, TLS-wrapped ones included) and write_through."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gomail.tcp import no_delay, write_through


class FakeTCP:
    def __init__(self) -> None:
        self.no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class FakeTLS:
    """Like TLSMemoryBIOProtocol: no socket options of its own, the TCP transport below."""

    def __init__(self, transport: FakeTCP) -> None:
        self.transport = transport


class NoDelayTests(SynchronousTestCase):
    """TCP_NODELAY is set where there is a TCP socket and nothing breaks where there is none."""

    def test_plain_tcp(self) -> None:
        """A TCP transport gets TCP_NODELAY."""
        tcp = FakeTCP()
        no_delay(tcp)
        self.assertTrue(tcp.no_delay)

    def test_under_tls(self) -> None:
        """A TLS wrapper passes the option down to its TCP transport."""
        tcp = FakeTCP()
        no_delay(FakeTLS(tcp))
        self.assertTrue(tcp.no_delay)

    def test_no_socket(self) -> None:
        """A transport without TCP options (a UNIX socket, a test transport) is left alone."""
        no_delay(object())
        no_delay(None)


class WriteThroughTests(SynchronousTestCase):
    """
    Replies go straight to the socket of a plain TCP connection with nothing
    buffered, and through the transport's buffer (in order) otherwise; a TLS
    connection or a wrapper in front of the socket is always written normally.
    A real socket pair under a tcp.Server on a MemoryReactor: no network, no waiting.
    """

    def setUp(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.addCleanup(self.ours.close)
        self.addCleanup(self.theirs.close)
        self.reactor = MemoryReactor()
        self.transport = tcp.Server(self.ours, Protocol(), ("127.0.0.1", 2525), None, 1, self.reactor)

    def received(self) -> bytes:
        try:
            return self.theirs.recv(1 << 20)
        except BlockingIOError:
            return b""

    def test_sent_at_once(self) -> None:
        """With an empty buffer the bytes are on the socket before the reactor turns; no writer is registered."""
        write_through(self.transport, b"250 2.0.0 Ok\r\n")
        self.assertEqual(self.received(), b"250 2.0.0 Ok\r\n")
        self.assertNotIn(self.transport, self.reactor.getWriters())

    def test_behind_buffered_data(self) -> None:
        """Data already waiting in the buffer goes first: the new bytes queue behind it."""
        self.transport.write(b"first\r\n")
        write_through(self.transport, b"second\r\n")
        self.assertEqual(self.received(), b"")
        self.transport.doWrite()
        self.assertEqual(self.received(), b"first\r\nsecond\r\n")

    def test_full_socket(self) -> None:
        """What the socket does not take stays in the transport's buffer and is sent when it can be."""
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"x" * (4 << 20)
        write_through(self.transport, data)
        self.assertIn(self.transport, self.reactor.getWriters())
        got = bytearray(self.received())
        while len(got) < len(data):
            self.transport.doWrite()
            got += self.received()
        self.assertEqual(bytes(got), data)

    def test_tls_connection(self) -> None:
        """After STARTTLS (C{TLS} set) the transport's own write is used: the bytes must be encrypted."""
        written = []
        self.transport.TLS = True
        self.transport.write = written.append
        write_through(self.transport, b"250 Ok\r\n")
        self.assertEqual((written, self.received()), ([b"250 Ok\r\n"], b""))

    def test_wrapper_in_front(self) -> None:
        """A wrapper forwarding attributes to the TCP transport (as TLSMemoryBIOProtocol does) is written to itself."""
        class Wrapper:
            def __init__(self, below):
                self.below, self.written = below, []

            def write(self, data):
                self.written.append(data)

            def __getattr__(self, name):
                return getattr(self.below, name)

        wrapper = Wrapper(self.transport)
        write_through(wrapper, b"220 ready\r\n")
        self.assertEqual((wrapper.written, self.received()), ([b"220 ready\r\n"], b""))

    def test_other_transports(self) -> None:
        """A test transport just gets a write."""
        transport = StringTransport()
        write_through(transport, b"221 Bye\r\n")
        self.assertEqual(transport.value(), b"221 Bye\r\n")
