"""
What every gomail HTTP listener shares (L{gomail.web.http}): the request
limits of L{LimitedSite}, driven byte by byte through a real HTTPChannel over
a StringTransport on a MemoryReactorClock, and the peer guard (L{PeerAccess},
L{Guarded}) through treq's StubTreq.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import ClientFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from gomail.web.guard import HostNames, origin_matches, split_host
from gomail.web.http import Guarded, LimitedSite, PeerAccess, json_body
from tests.test_flow import Sink, buffered, small_buffers, turn
from tests.webtesting import BoundedTransport, Browser, flood, parse_response

URL = "http://localhost:8025"
TIMEOUT = 30
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class Recorder(Resource):
    """A leaf that answers with the size of the body it got, and remembers every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, int]] = []

    def render(self, request: Any) -> bytes:
        size = len(request.content.read())
        self.seen.append((request.method, size))
        return json_body(request, {"received": size})


def status_line(data: bytes) -> bytes:
    """The first line of what the server wrote."""
    return data.split(b"\r\n", 1)[0]


class LimitedSiteTestCase(SynchronousTestCase):
    """A LimitedSite over a L{Recorder}, and connections to it over StringTransports."""

    max_request_bytes = 4096

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.recorder = Recorder()
        self.site = LimitedSite(self.recorder, self.reactor, self.max_request_bytes, TIMEOUT)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def exchange(self, data: bytes) -> tuple[bytes, StringTransport]:
        """Send C{data} in one read on a new connection; return what came back and the transport."""
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        return transport.value(), transport


def post(body: bytes, *headers: bytes) -> bytes:
    return (b"POST /x HTTP/1.1\r\nHost: gomail.test\r\nContent-Length: %d\r\n" % len(body)
            + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


def get(*headers: bytes) -> bytes:
    return b"GET /x HTTP/1.1\r\nHost: gomail.test\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def chunked(*chunks: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return b"POST /x HTTP/1.1\r\nHost: gomail.test\r\nTransfer-Encoding: chunked\r\n\r\n" + body


class BodyLimitTests(LimitedSiteTestCase):
    """maxRequestBytes: bodies beyond it get 413 and are never handed to the resource."""

    def test_body_within_the_limit_is_served(self) -> None:
        """A body of exactly maxRequestBytes reaches the resource whole."""
        data, transport = self.exchange(post(b"x" * self.max_request_bytes))
        self.assertEqual(status_line(data), b"HTTP/1.1 200 OK")
        self.assertEqual(self.recorder.seen, [(b"POST", self.max_request_bytes)])
        self.assertFalse(transport.disconnecting)

    def test_declared_length_over_the_limit(self) -> None:
        """A Content-Length one byte over the limit is answered 413 JSON at once and the connection closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: gomail.test\r\n"
                              b"Content-Length: %d\r\n\r\n" % (self.max_request_bytes + 1))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertEqual(status_line(head), b"HTTP/1.1 413 Payload Too Large")
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(json.loads(body), {"error": "request body too large"})
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.seen, [])

    def test_rest_of_a_refused_body_is_ignored(self) -> None:
        """Body bytes arriving after the 413 neither raise nor run the request."""
        protocol, transport = self.connect()
        size = self.max_request_bytes + 100
        protocol.dataReceived(b"POST /x HTTP/1.1\r\nHost: gomail.test\r\nContent-Length: %d\r\n\r\n" % size)
        answered = transport.value()
        protocol.dataReceived(b"x" * 10)
        protocol.dataReceived(b"x" * (size - 10))
        self.assertEqual(transport.value(), answered)
        self.assertEqual(self.recorder.seen, [])

    def test_chunked_body_over_the_limit_in_one_read(self) -> None:
        """
        A chunked body that passes the limit is refused with 413, and the request
        is not processed even when its last chunk comes in the same read (it
        used to run with the body cut at the limit).
        """
        data, transport = self.exchange(chunked(b"x" * self.max_request_bytes, b"y" * 16))
        self.assertEqual(status_line(data), b"HTTP/1.1 413 Payload Too Large")
        self.assertEqual(data.count(b"HTTP/1.1"), 1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.seen, [])

    def test_chunked_body_within_the_limit(self) -> None:
        """A chunked body that stays within the limit is served whole."""
        data, _ = self.exchange(chunked(b"x" * 1000, b"y" * 1000))
        self.assertEqual(status_line(data), b"HTTP/1.1 200 OK")
        self.assertEqual(self.recorder.seen, [(b"POST", 2000)])


class ServerHeaderTests(LimitedSiteTestCase):
    """What a response says about the software behind it."""

    def test_no_version_announced(self) -> None:
        """The Server header names gomail only: no Twisted, no version."""
        data, _ = self.exchange(get())
        headers = data.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"\r\nserver: gomail\r\n", headers)
        self.assertNotIn(b"twisted", headers)


class HeaderLimitTests(LimitedSiteTestCase):
    """The header limits apply to the real HTTPChannel: too many or too large headers get 400."""

    def test_limits_are_set_on_the_inner_channel(self) -> None:
        """
        buildProtocol gives a wrapper around the HTTPChannel; the header limits
        are on the channel that parses (setting them on the wrapper did nothing).
        """
        protocol, _ = self.connect()
        channel = protocol._channel
        self.assertEqual((channel.totalHeadersSize, channel.maxHeaders), (self.max_request_bytes, 100))

    def test_header_bytes_capped_at_16k(self) -> None:
        """With a large maxRequestBytes the header block is still limited to 16 KiB."""
        site = LimitedSite(self.recorder, self.reactor, 1048576, TIMEOUT)
        self.assertEqual(site.buildProtocol(PEER)._channel.totalHeadersSize, 16384)

    def test_hundred_headers_pass(self) -> None:
        """A request with 100 header lines (Host included) is served."""
        data, _ = self.exchange(get(*[b"X-H%d: v" % i for i in range(99)]))
        self.assertEqual(status_line(data), b"HTTP/1.1 200 OK")

    def test_too_many_headers(self) -> None:
        """The 101st header line gets 400 and a closed connection; the resource never runs."""
        data, transport = self.exchange(get(*[b"X-H%d: v" % i for i in range(100)]))
        self.assertEqual(status_line(data), b"HTTP/1.1 400 Bad Request")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.seen, [])

    def test_headers_within_the_size_limit_pass(self) -> None:
        """A 3000-byte header fits a 4096-byte header limit."""
        data, _ = self.exchange(get(b"X-Big: " + b"a" * 3000))
        self.assertEqual(status_line(data), b"HTTP/1.1 200 OK")

    def test_too_large_headers(self) -> None:
        """A header block beyond the limit (below Twisted's own 16 KiB default) gets 400."""
        data, transport = self.exchange(get(b"X-Big: " + b"a" * 5000))
        self.assertEqual(status_line(data), b"HTTP/1.1 400 Bad Request")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.seen, [])


class TimeoutTests(LimitedSiteTestCase):
    """requestTimeout: a connection that sends nothing for that long is closed (on the reactor's clock)."""

    def test_idle_connection_is_closed(self) -> None:
        """A connection that never sends a byte is closed exactly requestTimeout seconds after it opened."""
        _, transport = self.connect()
        self.reactor.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_stalled_request_is_closed(self) -> None:
        """A client that stops in the middle of its headers is cut off after requestTimeout."""
        protocol, transport = self.connect()
        self.reactor.advance(10)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: gom")
        self.reactor.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorder.seen, [])

    def test_idle_after_a_response(self) -> None:
        """A kept-alive connection idle after its answer is closed requestTimeout later."""
        protocol, transport = self.connect()
        protocol.dataReceived(get())
        self.assertEqual(status_line(transport.value()), b"HTTP/1.1 200 OK")
        self.reactor.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)


class UnreadAnswersTests(LimitedSiteTestCase):
    """
    Issue 14 item 1 on twisted.web: a client pipelining requests and never
    reading the answers. twisted.web's HTTPChannel alone let the transport's
    buffer grow without bound (20 MB of GETs: 87 MB buffered).
    """

    def connect_bounded(self) -> tuple[Any, BoundedTransport]:
        protocol = self.site.buildProtocol(PEER)
        transport = BoundedTransport(peerAddress=PEER)
        protocol.makeConnection(transport)
        return protocol, transport

    def answer_size(self, data: bytes) -> int:
        first = parse_response(data)
        return data.index(b"\r\n\r\n") + 4 + len(first.body)

    def test_unread_answers_stay_bounded(self) -> None:
        """Reading stops once the unread answers are over the buffer size; the buffer holds at most one more."""
        protocol, transport = self.connect_bounded()
        sent = flood(protocol, transport, get(), 20_000_000)
        self.assertEqual(transport.producerState, "paused")
        self.assertLessEqual(sent, 65536 * 2)
        self.assertLessEqual(transport.most, transport.bufferSize + self.answer_size(transport.value()))
        self.assertLessEqual(len(self.recorder.seen), transport.bufferSize // self.answer_size(transport.value()) + 1)

    def test_client_over_the_bound_is_aborted(self) -> None:
        """A client still over the bound requestTimeout seconds later is aborted, not before."""
        protocol, transport = self.connect_bounded()
        flood(protocol, transport, get(), 20_000_000)
        self.reactor.advance(TIMEOUT - 0.1)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.aborted)

    def test_client_reading_late_gets_every_answer(self) -> None:
        """A client that reads late gets an answer to every request, in order, and is not cut off."""
        protocol, transport = self.connect_bounded()
        requests = [b"GET /x?%d HTTP/1.1\r\nHost: gomail.test\r\n\r\n" % n for n in range(3000)]
        protocol.dataReceived(b"".join(requests))
        self.assertEqual(transport.producerState, "paused")
        received = b""
        for _ in range(100):
            received += transport.drain()
            if len(self.recorder.seen) == len(requests):
                break
        received += transport.drain()
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), len(requests))
        self.assertEqual(len(self.recorder.seen), len(requests))
        self.assertFalse(transport.disconnecting)

    def test_slow_answer_then_unread_output(self) -> None:
        """
        An answer written later, asynchronously, that fills the buffer stops
        reading too (HTTPChannel alone does not while a request is handled):
        the requests pipelined behind it wait until the client reads.
        """
        slow = Slow()
        self.site.resource = slow
        protocol, transport = self.connect_bounded()
        protocol.dataReceived(get() * 100)
        slow.pending[0].write(b"x" * 100_000)
        slow.pending[0].finish()
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(slow.pending), 1)  # nothing pipelined was parsed
        transport.drain()
        self.assertEqual(len(slow.pending), 2)
        self.assertEqual(transport.producerState, "producing")  # HTTPChannel reads ahead up to 16 KiB


class Slow(Resource):
    """A leaf whose answers wait in C{pending} until the test writes them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Any] = []

    def render(self, request: Any) -> Any:
        self.pending.append(request)
        return NOT_DONE_YET


class UnreadAnswersLoopbackTests(TestCase):
    """The same attack on a real loopback listener."""

    timeout = 30

    async def test_unread_answers_on_a_real_listener(self) -> None:
        """
        A client pipelines 10 MB of GETs and never reads: the server stops
        reading with its write buffer under the bound and one answer, and
        aborts the connection once requestTimeout passes.
        """
        clock = Clock()
        site = LimitedSite(Recorder(), clock, 4096, TIMEOUT)
        channels: list[Any] = []
        build = site.buildProtocol
        site.buildProtocol = lambda addr: channels.append(build(addr)) or channels[-1]  # type: ignore[method-assign]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        small_buffers(port.socket)
        client = Sink(get() * (10_000_000 // len(get())))
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, ClientFactory.forProtocol(lambda: client))
        self.addCleanup(connector.disconnect)
        for _ in range(100_000):
            if channels and channels[0]._channel._flow.paused:
                break
            await turn()
        channel = channels[0]._channel
        self.assertTrue(channel._flow.paused)
        for _ in range(5):
            await turn()
        self.assertLessEqual(buffered(channel.transport), channel.transport.bufferSize + 1024)
        for _ in range(50):  # the kernel may take a little more: the timeout runs from the last pause
            clock.advance(TIMEOUT)
            if client.lost.called:
                break
            await turn()
        await client.lost


class Tree(Resource):
    """A small tree: C{/} and C{/child} answer JSON naming themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []
        child = Resource()
        child.isLeaf = True
        child.render = lambda request: self._answer(request, b"child")
        self.putChild(b"child", child)

    def render(self, request: Any) -> bytes:
        return self._answer(request, b"root")

    def _answer(self, request: Any, name: bytes) -> bytes:
        self.rendered.append(name)
        return json_body(request, {"at": name.decode()})


class GuardedTests(SynchronousTestCase):
    """Guarded + PeerAccess: who may use a listener, judged by the socket peer only."""

    def browse(self, peer: str | None, access: PeerAccess | None = None) -> tuple[Browser, Tree]:
        tree = Tree()
        return Browser(Guarded(tree, access or PeerAccess()), peer), tree

    def assertForbidden(self, answer: Any) -> None:
        self.assertEqual(answer.code, 403)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertEqual(json.loads(answer.body), {"error": "forbidden"})

    def test_loopback_is_allowed(self) -> None:
        """With no allowFrom, 127.0.0.1, another 127/8 address, ::1 and IPv4-mapped loopback are served."""
        for peer in (None, "127.0.0.2", "::1", "::ffff:127.0.0.1"):
            browser, _tree = self.browse(peer)
            answer = browser.get(URL + "/child")
            self.assertEqual((peer, answer.code, json.loads(answer.body)), (peer, 200, {"at": "child"}))

    def test_remote_peer_is_refused(self) -> None:
        """A non-loopback peer gets 403 JSON, at the root and below it, and nothing is rendered."""
        browser, tree = self.browse("203.0.113.9")
        self.assertForbidden(browser.get(URL + "/child"))
        self.assertForbidden(browser.get(URL + "/"))
        self.assertForbidden(browser.post(URL + "/child", data=b"x"))
        self.assertEqual(tree.rendered, [])

    def test_allow_from_cidr(self) -> None:
        """allowFrom admits peers in its networks (IPv4 and IPv6) and refuses others."""
        access = PeerAccess(["203.0.113.0/24", "2001:db8::/32"])
        for peer, code in (("203.0.113.9", 200), ("2001:db8::7", 200), ("203.0.114.1", 403),
                           ("198.51.100.1", 403)):
            browser, _ = self.browse(peer, access)
            self.assertEqual((peer, browser.get(URL + "/child").code), (peer, code))

    def test_allow_from_replaces_loopback(self) -> None:
        """As documented, a non-empty allowFrom is the whole list: loopback must be named to stay allowed."""
        browser, _ = self.browse("127.0.0.1", PeerAccess(["10.0.0.0/8"]))
        self.assertForbidden(browser.get(URL + "/child"))
        browser, _ = self.browse("127.0.0.1", PeerAccess(["10.0.0.0/8", "127.0.0.0/8"]))
        self.assertEqual(browser.get(URL + "/child").code, 200)

    def test_bearer_token_admits_a_remote_peer(self) -> None:
        """With a bearer token configured, a remote peer presenting it is served (scheme in any case)."""
        access = PeerAccess(bearer_token="s3cret-token")
        for header in ("Bearer s3cret-token", "bearer s3cret-token"):
            browser, tree = self.browse("203.0.113.9", access)
            answer = browser.get(URL + "/child", headers={"Authorization": header})
            self.assertEqual(answer.code, 200)
            self.assertEqual(tree.rendered, [b"child"])

    def test_wrong_token_is_refused(self) -> None:
        """A wrong, truncated, missing token or another scheme is refused 403."""
        access = PeerAccess(bearer_token="s3cret-token")
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"},
                        {"Authorization": "Basic s3cret-token"}, {"Authorization": "s3cret-token"}, None):
            browser, tree = self.browse("203.0.113.9", access)
            self.assertForbidden(browser.get(URL + "/child", headers=headers))
            self.assertEqual(tree.rendered, [])

    def test_no_token_configured_admits_no_bearer(self) -> None:
        """Without a configured token, an empty bearer value does not open the door."""
        browser, _ = self.browse("203.0.113.9")
        self.assertForbidden(browser.get(URL + "/child", headers={"Authorization": "Bearer "}))
        self.assertForbidden(browser.get(URL + "/child", headers={"Authorization": "Bearer"}))

    def test_forwarded_headers_are_never_trusted(self) -> None:
        """X-Forwarded-For, X-Real-IP and Forwarded naming loopback do not admit a remote peer."""
        browser, tree = self.browse("203.0.113.9")
        answer = browser.get(URL + "/child", headers={"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                                                       "Forwarded": "for=127.0.0.1"})
        self.assertForbidden(answer)
        self.assertEqual(tree.rendered, [])
        self.assertEqual({p.host for p in browser.peers_seen()}, {"203.0.113.9"})

    def test_forwarded_by_an_untrusted_local_proxy(self) -> None:
        """A loopback peer forwarding for someone (a local proxy nobody trusts) is not local: 403."""
        for headers in ({"X-Forwarded-For": "203.0.113.9"}, {"Forwarded": "for=203.0.113.9"},
                        {"X-Real-IP": "127.0.0.1"}):
            browser, tree = self.browse(None)
            self.assertForbidden(browser.get(URL + "/child", headers=headers))
            self.assertEqual(tree.rendered, [])

    def test_forwarded_by_a_trusted_proxy(self) -> None:
        """From a trusted proxy, the nearest untrusted address its headers name is the client."""
        access = PeerAccess(["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32", "192.0.2.0/24"])
        for headers, code in (({"X-Forwarded-For": "10.1.2.3"}, 200),
                              ({"X-Forwarded-For": "10.9.9.9, 203.0.113.9"}, 403),  # the client lied first
                              ({"X-Forwarded-For": "203.0.113.9, 10.1.2.3, 192.0.2.5"}, 200),
                              ({"Forwarded": 'for="[2001:db8::1]:4711", for=10.1.2.3;proto=http'}, 200),
                              ({"Forwarded": "for=unknown"}, 403),
                              ({"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "203.0.113.9"}, 403),  # disagree
                              ({"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3"}, 200),
                              ({}, 403)):  # the proxy itself is not in allowFrom
            browser, _ = self.browse(None, access)
            self.assertEqual((headers, browser.get(URL + "/child", headers=headers).code), (headers, code))

    def test_wrong_host_is_misdirected(self) -> None:
        """A Host naming neither a configured name nor the listener's address gets 421 JSON."""
        browser, tree = self.browse(None)
        answer = browser.get(URL + "/child", headers={"Host": "evil.example"})
        self.assertEqual(answer.code, 421)
        self.assertIn("Host", json.loads(answer.body)["error"])
        self.assertEqual(tree.rendered, [])

    def test_state_changing_needs_the_header(self) -> None:
        """POST, PUT, PATCH and DELETE need X-Gomail-Request; GET does not."""
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            browser, _ = self.browse(None)
            self.assertEqual(browser.request(method, URL + "/child").code, 403)
            self.assertEqual(browser.request(method, URL + "/child", headers={"X-Gomail-Request": "1"}).code, 200)
        browser, _ = self.browse(None)
        self.assertEqual(browser.get(URL + "/child").code, 200)

    def test_unix_socket_peer_is_allowed(self) -> None:
        """A peer on a UNIX socket (only local users can connect) is allowed, even with allowFrom set."""
        request = DummyRequest([b""])
        request.getClientAddress = lambda: UNIXAddress(b"/run/gomail/monitor.sock")
        self.assertTrue(PeerAccess(["10.0.0.0/8"]).allows(request))


class HostNamesTests(SynchronousTestCase):
    """L{HostNames} and L{split_host}: what a Host header may say."""

    def test_split(self) -> None:
        """Names and IP literals with or without a port; malformed values are None."""
        self.assertEqual(split_host("LocalHost.:8025"), ("localhost", 8025))
        self.assertEqual(split_host("[::1]:80"), ("[::1]", 80))
        self.assertEqual(split_host("::1"), ("[::1]", None))
        for bad in ("", "a:b", "[::1", "[::1]x", "a b", "evil.example@localhost", "a:123456"):
            self.assertIsNone(split_host(bad), bad)

    def test_own_address(self) -> None:
        """The listener's own address passes (IPv4 or IPv6), another address does not."""
        hosts = HostNames()
        self.assertTrue(hosts.allows("192.0.2.5:8025", IPv4Address("TCP", "192.0.2.5", 8025)))
        self.assertTrue(hosts.allows("[2001:db8::5]", IPv6Address("TCP", "2001:db8::5", 8025)))
        self.assertFalse(hosts.allows("192.0.2.6", IPv4Address("TCP", "192.0.2.5", 8025)))
        self.assertFalse(hosts.allows("192.0.2.5", UNIXAddress(b"/run/monitor.sock")))

    def test_origin(self) -> None:
        """An Origin matches only the request's own scheme, name and port (default ports filled in)."""
        self.assertTrue(origin_matches("http://localhost:8025", "localhost:8025", False))
        self.assertTrue(origin_matches("http://localhost", "localhost:80", False))
        self.assertTrue(origin_matches("https://localhost", "localhost", True))
        for origin in ("http://localhost:3000", "https://localhost:8025", "null", "http://evil.example:8025",
                       "http://localhost:8025/x"):
            self.assertFalse(origin_matches(origin, "localhost:8025", False), origin)


class JsonBodyTests(SynchronousTestCase):
    """json_body: the one way HTTP answers are written."""

    def test_sets_status_type_and_cache(self) -> None:
        """It sets the code, a JSON content type and no-store, and returns sorted JSON with a newline."""
        request = DummyRequest([b""])
        body = json_body(request, {"b": 1, "a": [True, None]}, 418)
        self.assertEqual(body, b'{"a": [true, null], "b": 1}\n')
        self.assertEqual(request.responseCode, 418)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
