"""no_delay: Nagle off on our TCP connections, TLS-wrapped ones included."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gomail.tcp import no_delay


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
