"""
Test helpers for the HTTP listeners: treq's L{StubTreq} over the real resource
trees, answered synchronously, with a way to pretend the peer is not loopback;
and L{WireBrowser}, raw HTTP through a listener's protocol factory (the
auth_http listener is not a twisted.web Site); L{BoundedTransport}, a
StringTransport whose write buffer pauses its producer as a TCP transport's
does, and L{flood}, a client that pipelines and never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from zope.interface import implementer


@implementer(IResource)
class FromPeer:
    """
    Wraps a resource tree so that every request seems to come from C{host}
    (StubTreq's own fake peer is always 127.0.0.1:31337). Every request seen is
    kept in C{requests}, so tests can check what address the tree was shown.
    """

    isLeaf = False

    def __init__(self, wrapped: Any, host: str | None = None) -> None:
        self.wrapped = wrapped
        self.host = host
        self.requests: list[Any] = []

    def _patch(self, request: Any) -> None:
        if request not in self.requests:
            self.requests.append(request)
        if self.host is not None:
            address_type = IPv6Address if ":" in self.host else IPv4Address
            peer = address_type("TCP", self.host, 40000)
            request.getClientAddress = lambda: peer

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        self._patch(request)
        return self.wrapped.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:
        self._patch(request)
        return self.wrapped.render(request)

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError


@dataclass
class Answer:
    """A response as a test looks at it."""

    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        """The single value of header C{name} (fails when it is repeated), or None."""
        values = self.headers.getRawHeaders(name)
        if values is None:
            return None
        if len(values) != 1:
            raise AssertionError(f"header {name} repeated: {values!r}")
        return values[0]

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """Every header line, as bytes."""
        return [(name, value) for name, values in self.headers.getAllRawHeaders() for value in values]

    def auth_headers(self) -> dict[bytes, list[bytes]]:
        """The C{Auth-*} headers (all nginx reads), lower-cased names."""
        return {name.lower(): list(values) for name, values in self.headers.getAllRawHeaders()
                if name.lower().startswith(b"auth-")}


def settle(d: Deferred, stub: StubTreq) -> Any:
    """Flush C{stub} until C{d} has fired; return its result (raising a failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    for _ in range(10):
        if results:
            break
        stub.flush()
    if not results:
        raise AssertionError("the request did not finish")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Browser:
    """A StubTreq over C{resource}, answering synchronously."""

    def __init__(self, resource: Any, peer: str | None = None) -> None:
        self.root = FromPeer(resource, peer)
        self.stub = StubTreq(self.root)

    def request(self, method: str, url: str, headers: Any = None, data: Any = None) -> Answer:
        response = settle(self.stub.request(method, url, headers=headers, data=data), self.stub)
        body = settle(self.stub.content(response), self.stub)
        return Answer(response.code, response.headers, body)

    def get(self, url: str, headers: Any = None) -> Answer:
        return self.request("GET", url, headers=headers)

    def post(self, url: str, headers: Any = None, data: Any = None) -> Answer:
        return self.request("POST", url, headers=headers, data=data)

    def peers_seen(self) -> list[Any]:
        """The client address every request was shown (C{getClientAddress()})."""
        return [request.getClientAddress() for request in self.root.requests]


def parse_response(data: bytes) -> Answer:
    """The first HTTP response in C{data} (fails when there is none, complete)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"the request did not finish: {data!r}")
    status, *lines = head.split(b"\r\n")
    _version, code, _ = status.split(b" ", 2)
    headers = Headers()
    for line in lines:
        name, _, value = line.partition(b": ")
        headers.addRawHeader(name, value)
    length = int(headers.getRawHeaders(b"content-length", [b"0"])[0])
    return Answer(int(code), headers, rest[:length])


class WireBrowser:
    """
    Requests as raw HTTP/1.1 bytes through C{factory}'s protocol on a
    StringTransport, one connection each, peer C{peer} (loopback by default);
    the same answers as L{Browser}.
    """

    def __init__(self, factory: Any, peer: str | None = None) -> None:
        self.factory = factory
        host = peer or "127.0.0.1"
        self.peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        self.transports: list[StringTransport] = []

    def connect(self) -> tuple[Any, StringTransport]:
        """A new connection: its protocol and transport."""
        protocol = self.factory.buildProtocol(self.peer)
        transport = StringTransport(peerAddress=self.peer)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return protocol, transport

    @staticmethod
    def encode(method: str, url: str, headers: Any = None, data: bytes | None = None) -> bytes:
        """The request's bytes."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: " + parts.netloc.encode()]
        for name, values in (headers or {}).items():
            lines += [name + b": " + value for value in values]
        if data is not None:
            lines.append(b"Content-Length: %d" % len(data))
        return b"\r\n".join(lines) + b"\r\n\r\n" + (data or b"")

    def request(self, method: str, url: str, headers: Any = None, data: bytes | None = None) -> Answer:
        protocol, transport = self.connect()
        protocol.dataReceived(self.encode(method, url, headers, data))
        return parse_response(transport.value())

    def get(self, url: str, headers: Any = None) -> Answer:
        return self.request("GET", url, headers=headers)


class BoundedTransport(StringTransport):
    """
    A StringTransport whose write buffer behaves as a TCP transport's
    (C{twisted.internet.abstract.FileDescriptor}): on every write while more
    than C{bufferSize} bytes are unsent, its streaming producer is paused;
    L{drain} (the client reading) empties it and resumes the producer.
    C{most} is the largest the buffer has been.
    """

    bufferSize = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most = 0
        self.producer_paused = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        size = self.io.tell()
        self.most = max(self.most, size)
        if self.producer is not None and self.streaming and size > self.bufferSize:
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def drain(self) -> bytes:
        """What the client reads: everything written so far; the producer is resumed."""
        data = self.value()
        self.clear()
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resumeProducing()
        return data


def flood(protocol: Any, transport: StringTransport, request: bytes, total: int, read_size: int = 65536) -> int:
    """
    A client pipelining C{request} up to C{total} bytes and never reading:
    delivered to C{protocol} in reads of C{read_size}, as a reactor does, for
    as long as the transport reads (until C{pauseProducing}). Returns the bytes
    delivered.
    """
    chunk = request * max(1, read_size // len(request))
    sent = 0
    while sent < total and transport.producerState == "producing" and not transport.disconnecting:
        protocol.dataReceived(chunk)
        sent += len(chunk)
    return sent
