# -*- test-case-name: tests.test_web_http -*-
"""
What every gomail HTTP listener shares: request size and time limits, bounded
unread output, the peer-based access guard, and JSON responses.
"""

from __future__ import annotations

import collections
import functools
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from gomail.flow import OutputBound
from gomail.netaddr import parse_ip
from gomail.web.guard import REQUEST_HEADER, STATE_CHANGING, ForwardedFor, HostNames, origin_matches

#: What a logged client-sent value must not carry (terminal escapes, line breaks).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
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
        channel: Any = self.channel  # its transport is replaced below
        transport = channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        transport.loseConnection()
        channel.transport = _Discard()  # whatever the parser does next goes nowhere


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
        transport: Any = self.transport  # a TCP or TLS transport: IPushProducer too
        transport.pauseProducing()  # HTTPChannel does not while a request is handled

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
        class Limited(LimitedRequest):
            max_bytes = max_request_bytes

        self.requestFactory = Limited
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
    Who may use a listener: a client in C{allow_from} (loopback when that is
    empty) or on a UNIX socket; or anyone presenting C{bearer_token} (when one
    is configured). The client is the socket peer; a forwarded header names
    it only when the socket peer is in C{trusted_proxies}, and a request
    forwarded by any other peer has no known client (L{ForwardedFor}).
    """

    def __init__(self, allow_from: Iterable[str] = (), bearer_token: str = "",
                 trusted_proxies: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in allow_from) or LOOPBACK
        self.token = bearer_token.encode()
        self.forwarded = ForwardedFor(trusted_proxies)
        # The same few peers ask again and again (nginx: once per login): their answer is kept.
        self._host_allowed = functools.lru_cache(maxsize=1024)(self._in_networks)

    def _in_networks(self, host: str) -> bool:
        ip = parse_ip(host)
        return ip is not None and any(ip in network for network in self.networks)

    def allows_address(self, peer: Any) -> bool:
        """Whether the socket peer C{peer} (an address object) is allowed as it is, without a token."""
        return isinstance(peer, UNIXAddress) or self._host_allowed(str(getattr(peer, "host", "")))

    def client_address(self, request: Any) -> Any:
        """The address C{request} is judged by (None: unknown, see L{ForwardedFor.client})."""
        return self.forwarded.client(request)

    def has_token(self, request: Any) -> bool:
        """Whether C{request} carries the configured bearer token (never, when none is configured)."""
        if not self.token:
            return False
        raw = request.getHeader(b"authorization") or b""  # a bytes name gives a bytes value
        header = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), self.token)

    def allows(self, request: Any) -> bool:
        """Whether C{request} is served: its client is allowed, or it carries the bearer token."""
        client = self.client_address(request)
        return (client is not None and self.allows_address(client)) or self.has_token(request)


@implementer(IResource)
class Guarded:
    """
    A resource tree answered only to requests that name this listener in
    C{Host} (421 otherwise), come from a client L{PeerAccess} allows (403),
    and, when they change state, come from no other site's page (403); see
    L{gomail.web.guard}. Refusals are JSON.
    """

    isLeaf = False
    log = Logger()

    def __init__(self, wrapped: Any, access: PeerAccess, hosts: HostNames | None = None,
                 require_request_header: bool = True, origins: Iterable[str] = ()) -> None:
        """
        @param require_request_header: whether a state-changing request needs
            L{REQUEST_HEADER} or the bearer token (the admin app checks its own
            CSRF token instead).
        @param origins: other origins whose pages may send state-changing
            requests (the admin app's C{corsOrigins}).
        """
        self.wrapped = wrapped
        self.access = access
        self.hosts = hosts or HostNames()
        self.require_request_header = require_request_header
        self.origins = frozenset(origin.lower() for origin in origins)

    def render(self, request: Any) -> bytes:
        refusal = self._refusal(request)
        if refusal is not None:
            return self._refuse(request, *refusal)
        return self.wrapped.render(request)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        refusal = self._refusal(request)
        if refusal is not None:
            return _Forbidden(self, *refusal)
        request.postpath.insert(0, request.prepath.pop())
        return self.wrapped

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError("wrap a complete resource tree")

    def _refusal(self, request: Any) -> tuple[int, str] | None:
        """Why C{request} is refused, as (code, error), or None."""
        host = _header(request, b"host")
        if not self.hosts.allows(host, request.getHost()):
            return 421, "misdirected request: this listener does not answer to that Host"
        if not self.access.allows(request):
            return 403, "forbidden"
        if request.method not in STATE_CHANGING:
            return None
        origin = _header(request, b"origin")
        site = (_header(request, b"sec-fetch-site") or "").strip().lower()
        if origin is not None and origin.strip().lower() in self.origins:
            return None  # a listed origin (CORS): its pages may send requests (with a bearer token)
        if site in ("cross-site", "same-site") or (origin is not None and
                                                  not origin_matches(origin, host, request.isSecure())):
            return 403, "cross-origin request refused"
        if not self.require_request_header:
            return None
        if not (_header(request, REQUEST_HEADER) or "").strip() and not self.access.has_token(request):
            return 403, "a state-changing request needs the X-Gomail-Request header or the bearer token"
        return None

    def _refuse(self, request: Any, code: int, error: str) -> bytes:
        peer = request.getClientAddress()
        self.log.warn("HTTP {method} {path} refused for {peer}: {error} (Host {host})",
                      method=request.method.decode("latin-1"), path=request.path[:200].decode("latin-1"),
                      peer=getattr(peer, "host", peer), error=error,
                      host=_CONTROL.sub("?", (_header(request, b"host") or "")[:100]))
        return json_body(request, {"error": error}, code)


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


class _Forbidden(Resource):
    isLeaf = True

    def __init__(self, guard: Guarded, code: int, error: str) -> None:
        super().__init__()
        self.guard, self.code, self.error = guard, code, error

    def render(self, request: Any) -> bytes:
        return self.guard._refuse(request, self.code, self.error)


class ConnectionCap(WrappingFactory):
    """
    At most C{total} connections at once, and C{per_ip} from one address, to
    the wrapped factory (more are closed at once): an HTTP listener's idle
    timeout alone lets a client that drips a header byte now and then hold
    any number of sockets.
    """

    noisy = False

    def __init__(self, wrapped: Any, total: int, per_ip: int) -> None:
        super().__init__(wrapped)
        self.total, self.per_ip = total, per_ip
        self.peers: collections.Counter[str] = collections.Counter()

    def buildProtocol(self, addr: Any) -> Any:
        host = str(getattr(addr, "host", ""))
        if len(self.protocols) >= self.total or self.peers[host] >= self.per_ip:
            return None
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self.peers[host] += 1
            protocol.gomail_peer = host  # type: ignore[attr-defined]  # remembered for unregisterProtocol
        return protocol

    def unregisterProtocol(self, protocol: Any) -> None:
        host = getattr(protocol, "gomail_peer", None)
        if host is not None:
            self.peers[host] -= 1
            if self.peers[host] <= 0:
                del self.peers[host]
        super().unregisterProtocol(protocol)
