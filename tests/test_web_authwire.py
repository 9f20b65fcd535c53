"""
The auth_http listener's HTTP (L{gomail.web.authwire}): what reaches the
answerer and what every other request is answered, byte for byte over a
StringTransport, on a Clock. What the answers say is tested in
test_web_authhttp; here the answerer is a stub that records the headers.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.web.authwire import AuthHTTPFactory
from gomail.web.http import PeerAccess
from tests.test_flow import Sink, buffered, small_buffers, turn
from tests.webtesting import BoundedTransport, flood, parse_response

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 40000)
OK = {b"Auth-Status": b"OK", b"Auth-Server": b"192.0.2.10", b"Auth-Port": b"143"}
NGINX = (b"GET /api/auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: alice\r\n"
         b"Auth-Pass: s3cret\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 192.0.2.1\r\n\r\n")
TIMEOUT = 10


def request(target: bytes = b"/api/auth", version: bytes = b"HTTP/1.1", method: bytes = b"GET",
            extra: bytes = b"") -> bytes:
    return method + b" " + target + b" " + version + b"\r\nHost: gomail.test\r\nAuth-User: alice\r\n" + extra + b"\r\n"


def responses(data: bytes) -> list:
    """Every response in C{data}, in order."""
    answers = []
    while data:
        answer = parse_response(data)
        answers.append(answer)
        head_length = data.index(b"\r\n\r\n") + 4
        data = data[head_length + len(answer.body):]
    return answers


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


class WireTestCase(SynchronousTestCase):
    """A factory over a L{StubAnswerer}, and connections to it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.answerer = StubAnswerer()
        self.factory = AuthHTTPFactory(self.answerer, "/api/auth", PeerAccess(), self.clock, 2048, TIMEOUT)

    def connect(self, peer=LOOPBACK):
        protocol = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes, peer=LOOPBACK):
        """Send C{data} on a new connection: (responses, transport)."""
        protocol, transport = self.connect(peer)
        protocol.dataReceived(data)
        return responses(transport.value()), transport

    def assertRefused(self, data: bytes, code: int, auth_refusal: bool = False) -> None:
        """C{data} is answered C{code} with a JSON error, the connection closes, the answerer never asked."""
        [answer], transport = self.exchange(data)
        self.assertEqual(answer.code, code)
        self.assertEqual(answer.header("Connection"), "close")
        self.assertIn("error", json.loads(answer.body))
        self.assertEqual(answer.header("Auth-Status"), "Invalid authentication request" if auth_refusal else None)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])


class RequestTests(WireTestCase):
    """What reaches the answerer, and how it is answered."""

    def test_nginx_request(self) -> None:
        """nginx's HTTP/1.0 request: its headers reach the answerer, the answer's headers come back, then close."""
        [answer], transport = self.exchange(NGINX)
        self.assertEqual((answer.code, answer.header("Auth-Status"), answer.header("Auth-Server")),
                         (200, "OK", "192.0.2.10"))
        self.assertEqual(answer.body, b"")
        self.assertEqual((answer.header("Server"), answer.header("Content-Length")), ("gomail", "0"))
        self.assertEqual(answer.header("Date"), "Tue, 14 Nov 2023 22:13:20 GMT")
        self.assertTrue(transport.value().startswith(b"HTTP/1.0 200 OK\r\n"))
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
        [answer], _ = self.exchange(request(b"/api/auth?a=1"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_head(self) -> None:
        """HEAD is answered like GET."""
        [answer], _ = self.exchange(request(method=b"HEAD"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_bare_lf_and_leading_empty_lines(self) -> None:
        """Lines ended by a bare LF are accepted, and empty lines before a request skipped (RFC 9112 2.2)."""
        [answer], _ = self.exchange(b"\r\n\r\n" + request().replace(b"\r\n", b"\n"))
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual(self.answerer.seen[0][b"auth-user"], [b"alice"])

    def test_arrives_in_pieces(self) -> None:
        """A request written a byte at a time is answered once, when its head is complete."""
        protocol, transport = self.connect()
        data = request()
        for index in range(len(data) - 1):
            protocol.dataReceived(data[index:index + 1])
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(data[-1:])
        self.assertEqual([a.header("Auth-Status") for a in responses(transport.value())], ["OK"])


class KeepAliveTests(WireTestCase):
    """Persistent connections (RFC 9112 9.3) and pipelining."""

    def test_http11_stays_open(self) -> None:
        """HTTP/1.1 keeps the connection: a second request on it is answered too."""
        protocol, transport = self.connect()
        protocol.dataReceived(request())
        protocol.dataReceived(request())
        self.assertEqual(len(responses(transport.value())), 2)
        self.assertFalse(transport.disconnecting)
        self.assertNotIn(b"Connection:", transport.value())

    def test_connection_close(self) -> None:
        """C{Connection: close} on HTTP/1.1 is answered, then the connection closes."""
        [answer], transport = self.exchange(request(extra=b"Connection: close\r\n"))
        self.assertEqual(answer.header("Connection"), "close")
        self.assertTrue(transport.disconnecting)

    def test_http10_keep_alive(self) -> None:
        """HTTP/1.0 with C{Connection: keep-alive} stays open and says so."""
        [answer], transport = self.exchange(request(version=b"HTTP/1.0", extra=b"Connection: Keep-Alive\r\n"))
        self.assertEqual(answer.header("Connection"), "keep-alive")
        self.assertFalse(transport.disconnecting)

    def test_pipelined_in_order(self) -> None:
        """Requests in one write are answered in order; nothing after a closing one is answered."""
        data = request(b"/api/auth?1") + request(b"/nowhere") + request()
        answers, transport = self.exchange(data)
        self.assertEqual([a.code for a in answers], [200, 404])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.answerer.seen), 1)

    def test_pipelined_behind_a_pending_answer(self) -> None:
        """A request pipelined behind one whose answer waits is answered after it, not before."""
        self.answerer.pending = Deferred()
        protocol, transport = self.connect()
        protocol.dataReceived(request() + request())
        self.assertEqual((transport.value(), len(self.answerer.seen)), (b"", 1))
        pending, self.answerer.pending = self.answerer.pending, None
        pending.callback((200, {b"Auth-Status": b"first"}))
        self.assertEqual([a.header("Auth-Status") for a in responses(transport.value())], ["first", "OK"])

    def test_reading_paused_while_answering(self) -> None:
        """More than a head's worth of data behind a pending answer stops reading until it is answered."""
        self.answerer.pending = Deferred()
        protocol, transport = self.connect()
        protocol.dataReceived(request())
        protocol.dataReceived(b"x" * 3000)
        self.assertEqual(transport.producerState, "paused")
        pending, self.answerer.pending = self.answerer.pending, None
        pending.callback((200, dict(OK)))
        self.assertEqual(transport.producerState, "producing")
        [first, refused] = responses(transport.value())
        self.assertEqual((first.code, refused.code), (200, 431))

    def test_gone_before_the_answer(self) -> None:
        """A connection lost while its answer waits gets nothing written, and nothing breaks."""
        self.answerer.pending = Deferred()
        protocol, transport = self.connect()
        protocol.dataReceived(request())
        protocol.connectionLost(None)
        self.answerer.pending.callback((200, dict(OK)))
        self.assertEqual(transport.value(), b"")

    def test_answer_crash_is_no_ok(self) -> None:
        """An answer that fails (it never should) is a 500 temporary failure that closes, never an OK."""
        self.answerer.pending = Deferred()
        protocol, transport = self.connect()
        protocol.dataReceived(request())
        self.answerer.pending.errback(RuntimeError("bug"))
        [answer] = responses(transport.value())
        self.assertEqual((answer.code, answer.header("Auth-Status")), (500, "Temporary authentication failure"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RefusalTests(WireTestCase):
    """Everything but a GET or HEAD of the path, with a well-formed head and no body."""

    def test_other_paths(self) -> None:
        """Another path, a longer one or a prefix of it: 404."""
        for target in (b"/", b"/api", b"/api/auth/x", b"/api/authx", b"/API/AUTH"):
            self.assertRefused(request(target), 404)

    def test_other_methods(self) -> None:
        """POST, PUT, DELETE, OPTIONS: 405 with C{Allow}."""
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
            [answer], _ = self.exchange(request(method=method))
            self.assertEqual((answer.code, answer.header("Allow")), (405, "GET, HEAD"))

    def test_body(self) -> None:
        """A body (a length other than 0, or chunked) is refused with 413; C{Content-Length: 0} is fine."""
        self.assertRefused(request(extra=b"Content-Length: 5\r\n") + b"hello", 413)
        self.assertRefused(request(extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", 413)
        [answer], _ = self.exchange(request(extra=b"Content-Length: 0\r\n"))
        self.assertEqual(answer.header("Auth-Status"), "OK")

    def test_versions(self) -> None:
        """HTTP/2.0 or HTTP/0.9-style request lines: 505; something else in the version's place: 400."""
        self.assertRefused(request(version=b"HTTP/2.0"), 505)
        self.assertRefused(b"GET /api/auth\r\n\r\n", 400)
        self.assertRefused(request(version=b"SMTP/1.0"), 400)

    def test_malformed_request_line(self) -> None:
        """Extra spaces, a missing part or an absolute URL in the request line: 400."""
        for line in (b"GET  /api/auth HTTP/1.1", b"GET /api/auth  HTTP/1.1", b"GET HTTP/1.1",
                     b"GET http://gomail.test/api/auth HTTP/1.1", b"GET * HTTP/1.1"):
            self.assertRefused(line + b"\r\nHost: x\r\n\r\n", 400)

    def test_malformed_header_lines(self) -> None:
        """A line without a colon, space before the colon, an obs-fold continuation, an empty name: 400."""
        for line in (b"Auth-Pass s3cret", b"Auth-Pass : s3cret", b" folded", b"\tfolded", b": empty",
                     b"Auth(Pass): x"):
            self.assertRefused(request(extra=line + b"\r\n"), 400, auth_refusal=True)

    def test_control_characters(self) -> None:
        """NUL, ESC, DEL or a CR not before LF anywhere in the head: 400 with a refusal Auth-Status."""
        for value in (b"a\x00b", b"a\x1bb", b"a\x7fb", b"a\rb"):
            self.assertRefused(request(extra=b"Auth-Pass: " + value + b"\r\n"), 400, auth_refusal=True)

    def test_tab_in_value_passes(self) -> None:
        """HTAB is a legal field value character: it reaches the answerer (which decides)."""
        self.exchange(request(extra=b"Auth-Pass: a\tb\r\n"))
        self.assertEqual(self.answerer.seen[0][b"auth-pass"], [b"a\tb"])

    def test_head_too_large(self) -> None:
        """A head beyond the limit is refused with 431 once the limit is passed, complete or not."""
        protocol, transport = self.connect()
        protocol.dataReceived(request(extra=b"X-Big: " + b"a" * 2100 + b"\r\n")[:2060])
        [answer] = responses(transport.value())
        self.assertEqual(answer.code, 431)
        self.assertTrue(transport.disconnecting)

    def test_too_many_headers(self) -> None:
        """More than 100 header lines: 431."""
        self.factory.max_head_bytes = 65536
        self.assertRefused(request(extra=b"X-A: 1\r\n" * 100), 431)

    def test_refused_head_has_no_body(self) -> None:
        """A refused HEAD gets the refusal's headers (and length) but no body."""
        protocol, transport = self.connect()
        protocol.dataReceived(request(b"/nowhere", method=b"HEAD"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))
        self.assertIn(b"404 Not Found", transport.value())

    def test_nothing_echoed(self) -> None:
        """A refusal names nothing the client sent."""
        [answer], _ = self.exchange(request(b"/zqx-secret", extra=b"Auth-Pass: zqx-pass\x00\r\n"))
        self.assertNotIn(b"zqx", answer.body)
        self.assertNotIn(b"zqx", b"".join(value for _, value in answer.raw_headers()))


class PeerTests(WireTestCase):
    """Who may ask: the socket's peer, decided when it connects."""

    def test_not_allowed_peer(self) -> None:
        """A non-loopback peer gets 403 for any path (none is revealed), nothing reaches the answerer."""
        for target in (b"/api/auth", b"/nowhere"):
            [answer], transport = self.exchange(request(target), IPv4Address("TCP", "203.0.113.9", 4000))
            self.assertEqual((answer.code, answer.auth_headers()), (403, {}))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.answerer.seen, [])
        self.flushLoggedErrors()

    def test_unix_peer(self) -> None:
        """A UNIX socket peer is allowed (the filesystem decides who connects)."""
        [answer], _ = self.exchange(request(), UNIXAddress(None))
        self.assertEqual(answer.header("Auth-Status"), "OK")


class TimeoutTests(WireTestCase):
    """A request must be complete within the timeout of the connection opening or of its last answer."""

    def test_idle_connection_closed(self) -> None:
        """A connection that sends nothing is closed after the timeout, not before."""
        protocol, transport = self.connect()
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_trickling_does_not_extend(self) -> None:
        """Bytes trickled in without completing a request do not buy more time."""
        protocol, transport = self.connect()
        for byte in request()[:20]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(1)
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_answer_restarts_the_clock(self) -> None:
        """After an answer the connection has a full timeout again for its next request."""
        protocol, transport = self.connect()
        self.clock.advance(TIMEOUT - 1)
        protocol.dataReceived(request())
        self.clock.advance(TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_pending_answer_not_timed_out(self) -> None:
        """An answer still being worked out when the timer fires does not get its connection cut."""
        self.answerer.pending = Deferred()
        protocol, transport = self.connect()
        protocol.dataReceived(request())
        self.clock.advance(TIMEOUT * 3)
        self.assertFalse(transport.disconnecting)
        self.answerer.pending.callback((200, dict(OK)))
        self.assertEqual(responses(transport.value())[0].code, 200)

    def test_timer_cancelled_on_close(self) -> None:
        """A closed connection leaves no timer behind."""
        protocol, transport = self.connect()
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


ATTACK = 53_600_000  # what the tester pipelined without reading an answer
#: nginx's login request, kept alive so that it can be pipelined.
PIPELINED = NGINX.replace(b"HTTP/1.0", b"HTTP/1.1")


class UnreadAnswersTests(WireTestCase):
    """
    Issue 14 item 1: a client pipelining logins and never reading the answers
    (53.6 MB of them grew the server by 81 MB) is held to a bounded buffer
    and cut off after the timeout.
    """

    def connect_bounded(self):
        protocol = self.factory.buildProtocol(LOOPBACK)
        transport = BoundedTransport(peerAddress=LOOPBACK)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_unread_answers_stay_bounded(self) -> None:
        """
        Reading stops once the unread answers are over the transport's buffer
        size: the buffer holds at most that and one answer, and what the
        server holds of the client's input at most one read more than a head.
        """
        protocol, transport = self.connect_bounded()
        sent = flood(protocol, transport, PIPELINED, ATTACK)
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(sent, 1_000_000)
        self.assertFalse(transport.disconnecting)
        answer_size = len(responses(transport.value())[0].body) + transport.value().index(b"\r\n\r\n") + 4
        self.assertLessEqual(transport.most, transport.bufferSize + answer_size)
        self.assertLessEqual(len(protocol._buffer), 65536 + 2048)
        self.assertLessEqual(len(self.answerer.seen), transport.bufferSize // answer_size + 1)

    def test_input_while_paused_is_not_served(self) -> None:
        """A read already in flight when reading stopped is kept, not served, and reading stays paused."""
        protocol, transport = self.connect_bounded()
        flood(protocol, transport, PIPELINED, ATTACK)
        asked, written = len(self.answerer.seen), len(transport.value())
        protocol.dataReceived(PIPELINED * 200)
        self.assertEqual((len(self.answerer.seen), len(transport.value())), (asked, written))
        self.assertEqual(transport.producerState, "paused")
        self.assertLessEqual(len(protocol._buffer), 2 * 65536 + 2048)

    def test_client_that_stays_over_is_aborted(self) -> None:
        """A client still not reading its answers after the timeout is aborted, not before."""
        protocol, transport = self.connect_bounded()
        flood(protocol, transport, PIPELINED, ATTACK)
        self.clock.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.aborted)

    def test_client_reading_late_gets_every_answer(self) -> None:
        """A client that reads its answers late gets every one, in order, and is not cut off."""
        protocol, transport = self.connect_bounded()
        sent = flood(protocol, transport, request(b"/api/auth?n"), 400_000)
        received = b""
        for _ in range(100):
            received += transport.drain()
            if transport.producerState == "paused":
                continue
            if sent < 400_000:
                sent += flood(protocol, transport, request(b"/api/auth?n"), 400_000 - sent)
            else:
                break
        received += transport.drain()
        self.assertEqual(len(responses(received)), len(self.answerer.seen))
        self.assertEqual(len(self.answerer.seen), sent // len(request(b"/api/auth?n")))
        self.assertFalse(transport.disconnecting)

    def test_pending_answer_and_unread_output(self) -> None:
        """Reading stays paused until both the pending answer is done and the output has drained."""
        protocol, transport = self.connect_bounded()
        flood(protocol, transport, PIPELINED, ATTACK)
        self.answerer.pending = Deferred()
        transport.drain()  # resumes: serves until the request whose answer waits
        self.assertEqual(transport.producerState, "producing")
        flood(protocol, transport, PIPELINED, 10 * 65536)
        self.assertEqual(transport.producerState, "paused")
        pending, self.answerer.pending = self.answerer.pending, None
        pending.callback((200, dict(OK)))
        self.assertEqual(transport.producerState, "paused")  # answers over the bound again
        transport.drain()
        self.assertEqual(transport.producerState, "producing")

    def test_refused_and_unread_is_aborted(self) -> None:
        """A closing connection whose last answer is not taken within the timeout is aborted."""
        protocol, transport = self.connect_bounded()
        protocol.dataReceived(request(b"/nowhere"))
        self.assertIsNone(transport.producer)  # unregistered: the transport may close
        self.assertTrue(transport.disconnecting)
        self.clock.advance(TIMEOUT)
        self.assertTrue(transport.aborted)


class UnreadAnswersLoopbackTests(TestCase):
    """The same attack on a real loopback listener: the server's transport buffer stays bounded."""

    timeout = 30

    async def test_unread_answers_on_a_real_listener(self) -> None:
        """
        A client pipelines 20 MB of logins and never reads: the server stops
        reading with its write buffer under the bound and one answer, and
        aborts the connection once the timeout passes.
        """
        clock = Clock()
        factory = AuthHTTPFactory(StubAnswerer(), "/api/auth", PeerAccess(), clock, 2048, TIMEOUT)
        channels: list = []
        build = factory.buildProtocol
        factory.buildProtocol = lambda addr: channels.append(build(addr)) or channels[-1]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        small_buffers(port.socket)  # inherited by the accepted socket: the kernel takes little of the answers
        client = Sink(PIPELINED * (20_000_000 // len(PIPELINED)))
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: client))
        self.addCleanup(connector.disconnect)
        for _ in range(100_000):
            if channels and channels[0]._flow.paused:
                break
            await turn()
        channel = channels[0]
        self.assertTrue(channel._flow.paused)
        for _ in range(5):
            await turn()
        transport = channel.transport
        self.assertLessEqual(buffered(transport), transport.bufferSize + 1024)
        for _ in range(50):  # the kernel may take a little more: the timeout runs from the last pause
            clock.advance(TIMEOUT)
            if client.lost.called:
                break
            await turn()
        await client.lost
