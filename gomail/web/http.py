# -*- test-case-name: tests.test_web_http -*-
"""
What every gomail HTTP listener shares: request size and time limits, bounded
unread output, the peer-based access guard, and JSON responses.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
from typing import Any, Iterable

from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.server import Request
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from gomail.flow import OutputBound
from gomail.netaddr import parse_ip

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def json_body(request: Any, data: Any, code: int = 200) -> bytes:
    """Set the status and JSON content type on C{request}; return the encoded body."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(data, sort_keys=True).encode() + b"\n"


class LimitedRequest(Request):
    """A request whose body may not exceed C{max_bytes} (413 beyond, connection closed)."""

    max_bytes = 65536
    log = Logger()
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_bytes:
            self._refuse()
            return
        self._received = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received = getattr(self, "_received", 0) + len(data)
        if self._received > self.max_bytes:
            self._refuse()
            return
        super().handleContentChunk(data)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web announces its name and version; a server tells nobody which software it runs.
            self.responseHeaders.setRawHeaders(b"server", [b"gomail"])
        super().write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # The rest of a refused body can arrive in the same read (a chunked
        # body's last chunk): the request was answered 413 and must not run.
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        if self._refused:
            return
        self._refused = True
        body = b'{"error": "request body too large"}\n'
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.loseConnection()
        self.channel.transport = _Discard()  # whatever the parser does next goes nowhere


class _Discard:
    """Stands in for a closed transport."""

    disconnecting = True

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class BoundedHTTPChannel(HTTPChannel):
    """
    An HTTPChannel whose unsent answers are bounded (issue 14 item 1).

    HTTPChannel is its transport's producer and, when the transport's buffer
    is full, stops reading, but only between requests: a full buffer while a
    request is handled (a synchronous answer is written while it is) only sets
    C{_waitingForTransport}, and C{requestDone} then replays the pipelined
    requests it buffered, whose answers pile up in turn. A client pipelining
    GETs and never reading grew the buffer without bound (20 MB of requests:
    87 MB buffered), and its idle timeout never fired while it kept sending.

    Here a full buffer always stops reading and stops the parsing of what was
    already read (LineReceiver's own C{paused} flag, which HTTPChannel leaves
    unused): requests pipelined behind the answer that filled it wait, in
    order, until the buffer drains; a connection over the bound for
    C{output_timeout} seconds is aborted (L{OutputBound}).
    """

    output_clock: Any = None
    output_timeout: float | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._flow = OutputBound(self.output_clock, self.output_timeout, self._output_full, self._output_drained,
                                 name="HTTP")
        # HTTPChannel registered itself as the transport's producer: the flow only watches.
        self._flow.attach(self.transport, register=False)

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self._flow.pauseProducing()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._flow.resumeProducing()

    def _output_full(self) -> None:
        self.paused = True  # LineReceiver parses nothing more of its buffer
        self.transport.pauseProducing()  # HTTPChannel does not while a request is handled

    def _output_drained(self) -> None:
        self.paused = False
        # HTTPChannel.resumeProducing resumed reading unless a request is handled (then requestDone will).
        self.dataReceived(b"")  # what was read meanwhile, in order

    def connectionLost(self, reason: Any = None) -> None:
        self._flow.detach()
        super().connectionLost(reason)


class LimitedSite(Site):
    """
    A Site with bounded requests: header size and count, body size, an idle
    timeout (a client that stops sending is cut after C{timeout} seconds), and
    bounded unread answers (L{BoundedHTTPChannel}: a client over the bound for
    C{timeout} seconds is aborted).
    """

    def __init__(self, resource: Any, reactor: Any, max_request_bytes: int, timeout: float) -> None:
        super().__init__(resource, reactor=reactor, timeout=timeout)
        self.requestFactory = type("Limited", (LimitedRequest,), {"max_bytes": max_request_bytes})
        self.max_header_bytes = min(16384, max_request_bytes)
        self.noisy = False

    def log(self, request: Any) -> None:
        pass  # no access log line per request: nginx asks once per login; gomail logs what matters

    def protocol(self) -> Any:  # what HTTPFactory.buildProtocol calls, as twisted.web's own factory
        return _GenericHTTPChannelProtocol(BoundedHTTPChannel())

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        # Site.buildProtocol returns a _GenericHTTPChannelProtocol, which proxies
        # only some attributes: the limits must be set on the HTTPChannel inside.
        channel = getattr(protocol, "_channel", protocol)
        channel.totalHeadersSize = self.max_header_bytes
        channel.maxHeaders = 100
        channel.output_clock = self.reactor
        channel.output_timeout = self.timeOut
        return protocol


class PeerAccess:
    """
    Who may use a listener: the real socket peer (never X-Forwarded-For or any
    header) in C{allow_from}, loopback when that is empty, a UNIX socket peer;
    or anyone presenting C{bearer_token} (when one is configured).
    """

    def __init__(self, allow_from: Iterable[str] = (), bearer_token: str = "") -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_from) or LOOPBACK
        self.token = bearer_token.encode()
        # The same few peers ask again and again (nginx: once per login): their answer is kept.
        self._host_allowed = functools.lru_cache(maxsize=1024)(self._in_networks)

    def _in_networks(self, host: str) -> bool:
        ip = parse_ip(host)
        return ip is not None and any(ip in network for network in self.networks)

    def allows_address(self, peer: Any) -> bool:
        """Whether the socket peer C{peer} (an address object) is allowed as it is, without a token."""
        return isinstance(peer, UNIXAddress) or self._host_allowed(str(getattr(peer, "host", "")))

    def allows(self, request: Any) -> bool:
        """Whether C{request} is served: its socket peer is allowed, or it carries the bearer token."""
        if self.allows_address(request.getClientAddress()):
            return True
        if self.token:
            raw = request.getHeader(b"authorization") or b""  # a bytes name gives a bytes value
            header = raw.decode("latin-1") if isinstance(raw, bytes) else raw
            scheme, _, value = header.partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), self.token)
        return False


@implementer(IResource)
class Guarded:
    """A resource tree answered only to peers L{PeerAccess} allows (403 JSON otherwise)."""

    isLeaf = False
    log = Logger()

    def __init__(self, wrapped: Any, access: PeerAccess) -> None:
        self.wrapped = wrapped
        self.access = access

    def render(self, request: Any) -> bytes:
        if not self.access.allows(request):
            return self._forbidden(request)
        return self.wrapped.render(request)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if not self.access.allows(request):
            return _Forbidden(self)
        request.postpath.insert(0, request.prepath.pop())
        return self.wrapped

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError("wrap a complete resource tree")

    def _forbidden(self, request: Any) -> bytes:
        peer = request.getClientAddress()
        self.log.warn("HTTP request refused for {peer}: not an allowed peer", peer=getattr(peer, "host", peer))
        return json_body(request, {"error": "forbidden"}, 403)


class _Forbidden(Resource):
    isLeaf = True

    def __init__(self, guard: Guarded) -> None:
        super().__init__()
        self.guard = guard

    def render(self, request: Any) -> bytes:
        return self.guard._forbidden(request)
