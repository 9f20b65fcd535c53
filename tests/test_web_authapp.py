"""
The auth_http listener (L{gomail.web.authapp}): what reaches the answerer,
what nginx's contract refuses before it, and the listener's limits (size,
time, unread answers). Raw HTTP through the real site on a StringTransport
and a Clock; the answerer is a stub (tests.test_web_authhttp tests the
answers themselves).
"""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gomail.web.authapp import auth_http_site
from gomail.web.http import PeerAccess
from tests.webtesting import BoundedTransport, flood, parse_response

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
OK = {b"Auth-Status": b"OK", b"Auth-Server": b"192.0.2.10", b"Auth-Port": b"143"}
NGINX = (b"GET /api/auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: alice\r\n"
         b"Auth-Pass: s3cret\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 192.0.2.1\r\n\r\n")
TIMEOUT = 10


def request(target: bytes = b"/api/auth", version: bytes = b"HTTP/1.1", method: bytes = b"GET",
            extra: bytes = b"") -> bytes:
    return method + b" " + target + b" " + version + b"\r\nHost: gomail.test\r\nAuth-User: alice\r\n" + extra + b"\r\n"


class StubAnswerer:
    """Records the headers of every request that reaches it; answers C{OK}, or a pending Deferred's result."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.pending: Deferred | None = None

    async def answer(self, headers):
        self.seen.append(dict(headers))
        if self.pending is not None:
            return await self.pending
        return 200, dict(OK)


class AuthAppTestCase(SynchronousTestCase):
    """The site over a L{StubAnswerer}, and connections to it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.answerer = StubAnswerer()
        self.site = auth_http_site(self.answerer, "/api/auth", PeerAccess(), self.clock, 2048, TIMEOUT)

    def connect(self, peer=LOOPBACK, transport_type=StringTransport):
        protocol = self.site.buildProtocol(peer)
        transport = transport_type(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes, peer=LOOPBACK):
        """Send C{data} on a new connection: (the answer, the transport)."""
        protocol, transport = self.connect(peer)
        protocol.dataReceived(data)
        return parse_response(transport.value()), transport

    def assertRefused(self, data: bytes, code: int, auth_refusal: bool = False) -> None:
        """C{data} is answered C{code} with a JSON error, the connection closes, the answerer never asked."""
        answer, transport = self.exchange(data)
        self.assertEqual(answer.code, code)
        self.assertIn("error", json.loads(answer.body))
        self.assertEqual(answer.header("Auth-Status"), "Invalid authentication request" if auth_refusal else None)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])


class RequestTests(AuthAppTestCase):
    """What reaches the answerer, and how it is answered."""

    def test_nginx_request(self) -> None:
        """nginx's HTTP/1.0 request: its headers reach the answerer, the answer's headers come back, then close."""
        answer, transport = self.exchange(NGINX)
        self.assertEqual((answer.code, answer.header("Auth-Status"), answer.header("Auth-Server")),
                         (200, "OK", "192.0.2.10"))
        self.assertEqual(answer.body, b"")
        self.assertEqual((answer.header("Server"), answer.header("Content-Type")), ("gomail", None))
        self.assertTrue(transport.disconnecting)
        [seen] = self.answerer.seen
        self.assertEqual(seen[b"auth-user"], [b"alice"])
        self.assertEqual(seen[b"client-ip"], [b"192.0.2.1"])

    def test_values_trimmed_and_repeats_kept(self) -> None:
        """Space around a value is not part of it; names are case-insensitive; a repeated header keeps both values."""
        self.exchange(request(extra=b"AUTH-PASS: \t s3 cret \t\r\nauth-pass:other\r\n"))
        self.assertEqual(self.answerer.seen[0][b"auth-pass"], [b"s3 cret", b"other"])

    def test_query_ignored(self) -> None:
        """A query string after the path (auth_http's URI may carry one) is served like the bare path."""
        answer, _ = self.exchange(request(b"/api/auth?a=1"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_head(self) -> None:
        """HEAD is answered like GET, without a body."""
        answer, _ = self.exchange(request(method=b"HEAD"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_arrives_in_pieces(self) -> None:
        """A request written a byte at a time is answered once, when its head is complete."""
        protocol, transport = self.connect()
        data = request()
        for index in range(len(data) - 1):
            protocol.dataReceived(data[index:index + 1])
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(data[-1:])
        self.assertEqual(parse_response(transport.value()).header("Auth-Status"), "OK")

    def test_answer_crash_is_no_ok(self) -> None:
        """An answerer that raises (it never should): 500 with the temporary failure, never OK."""
        async def broken(headers):
            raise RuntimeError("answerer bug")
        self.answerer.answer = broken
        answer, _ = self.exchange(NGINX)
        self.assertEqual((answer.code, answer.header("Auth-Status")), (500, "Temporary authentication failure"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


    def test_nginx_gone_cancels_the_answer(self) -> None:
        """nginx closing its connection while the answer is pending cancels the answerer's work; nothing is written."""
        cancelled: list[bool] = []
        self.answerer.pending = Deferred(lambda _: cancelled.append(True))
        protocol, transport = self.connect()
        protocol.dataReceived(NGINX)
        self.assertEqual(len(self.answerer.seen), 1)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((cancelled, transport.value()), ([True], b""))


class RefusalTests(AuthAppTestCase):
    """Everything but a GET or HEAD of the path, without a body or control characters."""

    def test_other_paths(self) -> None:
        """Another path, a longer one or a prefix of it: 404."""
        for target in (b"/", b"/api", b"/api/auth/x", b"/api/authx", b"/API/AUTH"):
            self.assertRefused(request(target), 404)

    def test_other_methods(self) -> None:
        """POST, PUT, DELETE, OPTIONS: 405 with C{Allow}."""
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            answer, _ = self.exchange(request(method=method, extra=b"Content-Length: 0\r\n"))
            self.assertEqual((answer.code, answer.header("Allow")), (405, "GET, HEAD"))
        self.assertEqual(self.answerer.seen, [])

    def test_body(self) -> None:
        """A body (a length other than 0, or chunked) is refused with 413; C{Content-Length: 0} is fine."""
        self.assertRefused(request(extra=b"Content-Length: 5\r\n") + b"hello", 413)
        self.assertRefused(request(extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 413)
        answer, _ = self.exchange(request(extra=b"Content-Length: 0\r\n"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_malformed(self) -> None:
        """A malformed request line or header line, or an unknown HTTP version: 400 from twisted.web, no answer."""
        for data in (b"GET /api/auth\r\n\r\n", request(version=b"SMTP/1.0"), request(extra=b"Auth-Pass s3cret\r\n")):
            protocol, transport = self.connect()
            protocol.dataReceived(data)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), data)
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])

    def test_control_characters(self) -> None:
        """ESC or DEL in a header value: 400 with a refusal Auth-Status; NUL: twisted.web's own bare 400."""
        for value in (b"a\x1bb", b"a\x7fb"):
            self.assertRefused(request(extra=b"Auth-Pass: " + value + b"\r\n"), 400, auth_refusal=True)
        protocol, transport = self.connect()
        protocol.dataReceived(request(extra=b"Auth-Pass: a\x00b\r\n"))
        self.assertEqual(transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertEqual(self.answerer.seen, [])

    def test_tab_in_value_passes(self) -> None:
        """HTAB is a legal field value character: it reaches the answerer (which decides)."""
        self.exchange(request(extra=b"Auth-Pass: a\tb\r\n"))
        self.assertEqual(self.answerer.seen[0][b"auth-pass"], [b"a\tb"])

    def test_head_too_large(self) -> None:
        """A head over the limit is refused (twisted.web's 400) and the connection closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(request(extra=b"X-Big: " + b"a" * 2100 + b"\r\n"))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])

    def test_nothing_echoed(self) -> None:
        """A refusal names nothing the client sent."""
        answer, _ = self.exchange(request(b"/zqx-secret", extra=b"Auth-Pass: zqx-pass\x00\r\n"))
        self.assertNotIn(b"zqx", answer.body)
        self.assertNotIn(b"zqx", b"".join(value for _, value in answer.raw_headers()))


class PeerTests(AuthAppTestCase):
    """Who may ask: the socket's peer."""

    def test_not_allowed_peer(self) -> None:
        """A non-loopback peer gets 403 for any path (none is revealed), nothing reaches the answerer."""
        for target in (b"/api/auth", b"/nowhere"):
            answer, transport = self.exchange(request(target), IPv4Address("TCP", "203.0.113.9", 4000))
            self.assertEqual((answer.code, answer.auth_headers()), (403, {}))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])

    def test_forwarded_header_is_not_the_peer(self) -> None:
        """X-Forwarded-For naming loopback does not let a foreign peer in."""
        answer, _ = self.exchange(request(extra=b"X-Forwarded-For: 127.0.0.1\r\n"),
                                  IPv4Address("TCP", "203.0.113.9", 4000))
        self.assertEqual(answer.code, 403)

    def test_unix_peer(self) -> None:
        """A UNIX socket peer is allowed (the filesystem decides who connects)."""
        answer, _ = self.exchange(request(), UNIXAddress(None))
        self.assertEqual(answer.header("Auth-Status"), "OK")


class LimitTests(AuthAppTestCase):
    """The listener's time and memory bounds."""

    def test_idle_connection_closed(self) -> None:
        """A connection that sends nothing is closed after the timeout, not before."""
        _, transport = self.connect()
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_unread_answers_stay_bounded(self) -> None:
        """
        Issue 14 item 1: a client pipelining logins and never reading its
        answers stops being read once they are over the transport's buffer
        size; the buffer holds at most that and one answer.
        """
        protocol, transport = self.connect(transport_type=BoundedTransport)
        sent = flood(protocol, transport, request(), 2_000_000)
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(sent, 2_000_000)
        answer = transport.value()[:transport.value().index(b"\r\n\r\n") + 4]
        self.assertLessEqual(transport.most, transport.bufferSize + len(answer))

    def test_client_that_stays_over_is_aborted(self) -> None:
        """A client still not reading its answers after the timeout is aborted."""
        protocol, transport = self.connect(transport_type=BoundedTransport)
        flood(protocol, transport, request(), 2_000_000)
        self.clock.advance(TIMEOUT)
        self.assertTrue(transport.aborted)
