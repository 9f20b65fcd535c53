"""
The auth_http listener's HTTP: the small, fixed part of HTTP/1.x that nginx's
mail proxy speaks (PROTOCOLS.md), parsed strictly, answered by an
L{AuthHTTPAnswerer}.

Why not twisted.web here: nginx asks once per login, and twisted.web's general
request machinery (line-by-line parsing, C{Request}, resource traversal, the
response's header canonicalisation) costs several times the rest of a cached
login (bench/README.md). A request here is one GET or HEAD of one path with
headers and no body; everything else gets a precise refusal, so the surface
is small: no bodies, no chunked encoding, no query arguments parsed, no
absolute URLs. The monitor and admin listeners stay on twisted.web and Klein.

What is served:
  - C{GET}/C{HEAD} of the configured path (its query string ignored);
    another path 404, another method 405, a body 413, a head over the limit 431,
    an HTTP version other than 1.0/1.1 505, anything malformed 400; each
    refusal closes the connection;
  - HTTP/1.1 keep-alive (and HTTP/1.0 with C{Connection: keep-alive}), and
    pipelined requests, answered one after another in order;
  - peers the L{PeerAccess} allows (403 otherwise), decided once per
    connection from the socket's peer address;
  - a request timeout: a connection must complete a request within
    C{timeout} seconds of opening or of its last answer, or it is closed
    (however slowly it trickles bytes; an answer being worked out does not
    count against it);
  - bounded memory for a client that pipelines and does not read its answers
    (issue 14 item 1): once the answers it has not read are over the
    transport's buffer size (64 KiB), the connection is not read and the
    requests already buffered wait (L{gomail.flow.OutputBound}); one still
    over the bound after C{timeout} seconds is aborted. Input waiting to be
    served is bounded as well: more than a head's worth of it (C{max_head_bytes})
    stops reading until it can be served. A closing connection that does not
    take its last answer within C{timeout} is aborted too.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from email.utils import formatdate
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gomail.flow import OutputBound, ReadPauses
from gomail.web.authhttp import REFUSAL_TEXT, Answer, AuthHTTPAnswerer, RequestHeaders
from gomail.web.http import PeerAccess

# The parsing below uses bytes methods (find, translate, partition), not regular expressions: on a
# ~250-byte head each regex search costs about as much as the rest of the parse.
#: The bytes a head may hold: no control characters but HTAB, CR and LF (and CR only before LF, checked apart).
HEAD_BYTES = bytes([9, 10, 13]) + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
#: The bytes of an HTTP field name (RFC 9110 5.1: a token).
TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
MAX_HEADERS = 100
VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
REASONS = {200: b"OK", 400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
           413: b"Content Too Large", 431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
           505: b"HTTP Version Not Supported"}
REFUSAL = REFUSAL_TEXT.encode()


class HTTPError(Exception):
    """A request answered at the HTTP level: C{code} and a JSON error C{message}; the connection closes."""

    def __init__(self, code: int, message: str, auth_refusal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Whether the answer carries a refusal C{Auth-Status} (a malformed login request).
        self.auth_refusal = auth_refusal


class AuthHTTPFactory(Factory):
    """Builds L{AuthHTTPChannel}s for one auth_http listener."""

    noisy = False

    def __init__(self, answerer: AuthHTTPAnswerer, path: str, access: PeerAccess, clock: Any,
                 max_head_bytes: int, timeout: float) -> None:
        self.answerer = answerer
        self.path = path.encode()
        self.access = access
        self.clock = clock
        self.max_head_bytes = max_head_bytes
        self.timeout = timeout
        self._date_second = -1
        self._date = b""

    def buildProtocol(self, addr: Any) -> AuthHTTPChannel:
        channel = AuthHTTPChannel()
        channel.factory = self
        return channel

    def date(self, now: float) -> bytes:
        """The C{Date} header's value at C{now} (worked out once a second)."""
        second = int(now)
        if second != self._date_second:
            self._date_second, self._date = second, formatdate(second, usegmt=True).encode()
        return self._date


class AuthHTTPChannel(Protocol):
    """One connection from nginx (or anyone the peer access lets in): requests answered in order."""

    factory: AuthHTTPFactory
    log = Logger()

    def __init__(self) -> None:
        self._buffer = b""
        self._busy = False  # an answer is being worked out: later requests wait in the buffer
        self._closing = False
        self._lost = False
        self._allowed = False
        self._idle_since = 0.0
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._allowed = self.factory.access.allows_address(self.transport.getPeer())
        clock = self.factory.clock
        self._idle_since = clock.seconds()
        # One timer per connection, looking at _idle_since when it fires: no timer work per request.
        self._timer = clock.callLater(self.factory.timeout, self._check_timeout)
        # Reading stops for either of two reasons: "output" (answers not read, over the bound) and
        # "backlog" (requests piled up behind one that cannot be served yet).
        self._pauses = ReadPauses(self.transport)
        self._flow = OutputBound(clock, self.factory.timeout, self._output_full, self._output_drained,
                                 name="nginx auth_http")
        self._flow.attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if self._busy or self._flow.paused:
            if len(self._buffer) > self.factory.max_head_bytes and "backlog" not in self._pauses:
                # Pipelined requests pile up while one is answered, or while answers are not read.
                self._pauses.pause("backlog")
            return
        self._serve()

    def connectionLost(self, reason: Any = None) -> None:
        self._closing = self._lost = True
        self._flow.detach()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _output_full(self) -> None:
        """The answers not read are over the bound: read nothing, serve nothing buffered."""
        self._pauses.pause("output")

    def _output_drained(self) -> None:
        self._pauses.resume("output")
        self._resume()

    def _check_timeout(self) -> None:
        self._timer = None
        if self._lost:
            return
        if self._closing:
            # The last answer was not taken within the timeout (a client that does not read).
            self.log.debug("auth_http connection not closed {timeout} s after its last answer: aborted",
                           timeout=self.factory.timeout)
            self.transport.abortConnection()
            return
        clock, timeout = self.factory.clock, self.factory.timeout
        waited = clock.seconds() - self._idle_since
        if self._busy or waited < timeout:
            self._timer = clock.callLater(timeout if self._busy else timeout - waited, self._check_timeout)
            return
        self.log.debug("auth_http connection without a request for {timeout} s: closed", timeout=timeout)
        self._closing = True
        self.transport.abortConnection()

    # -- requests -----------------------------------------------------------------

    def _serve(self) -> None:
        """Answer every complete request in the buffer, until one has to wait."""
        limit = self.factory.max_head_bytes
        while not self._busy and not self._closing and not self._flow.paused:
            if self._buffer[:1] in (b"\r", b"\n"):
                self._buffer = self._buffer.lstrip(b"\r\n")  # RFC 9112 2.2: empty lines before a request
            head = self._take_head()
            if head is None:
                if len(self._buffer) > limit:
                    self._refuse(b"HTTP/1.1", HTTPError(431, "request head too large", auth_refusal=True))
                return
            version, head_only = b"HTTP/1.1", head.startswith(b"HEAD ")
            try:
                method, target, version, headers = self._parse(head)
                keep_alive = _keep_alive(version, headers)
                self._check(method, target, headers)
            except HTTPError as error:
                self._refuse(version, error, head_only)
                return
            self._busy = True
            self._answer(self.factory.answerer.answer(headers), version, keep_alive)

    def _take_head(self) -> bytes | None:
        """The next complete request head (CRLF line ends) out of the buffer, or None."""
        buffer, limit = self._buffer, self.factory.max_head_bytes
        end = buffer.find(b"\r\n\r\n", 0, limit + 4)
        bare = buffer.find(b"\n\n", 0, end if end >= 0 else limit + 2)
        if bare >= 0:
            # Lines ended by a bare LF, which RFC 9112 2.2 lets a server accept: made CRLF for the parser.
            head, self._buffer = buffer[:bare], buffer[bare + 2:]
            if head.endswith(b"\r"):
                head = head[:-1]
            return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if end < 0:
            return None
        head, self._buffer = buffer[:end], buffer[end + 4:]
        return head

    @staticmethod
    def _parse(head: bytes) -> tuple[bytes, bytes, bytes, RequestHeaders]:
        """The method, target, version and headers of a request head; raises L{HTTPError}."""
        request_line, _, fields = head.partition(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise HTTPError(400, "malformed request line")
        method, target, version = parts
        if version not in VERSIONS:
            if version.startswith(b"HTTP/"):
                raise HTTPError(505, "HTTP version not supported")
            raise HTTPError(400, "malformed request line")
        if head.translate(None, HEAD_BYTES) or head.count(b"\r") != head.count(b"\r\n"):
            raise HTTPError(400, "control character in the request", auth_refusal=True)
        lines = fields.split(b"\r\n") if fields else []
        if len(lines) > MAX_HEADERS:
            raise HTTPError(431, "too many header lines")
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, colon, value = line.partition(b":")
            # A name with space around it, an obs-fold continuation, a line without a colon: refused, not guessed at.
            if not colon or not name or name.translate(None, TOKEN_BYTES):
                raise HTTPError(400, "malformed header line", auth_refusal=True)
            headers.setdefault(name.lower(), []).append(value.strip(b" \t"))
        if not target.startswith(b"/"):
            raise HTTPError(400, "malformed request target")  # nginx sends a path, never an absolute URL
        return method, target, version, headers

    def _check(self, method: bytes, target: bytes, headers: RequestHeaders) -> None:
        """What a well-formed request must also be here, in this order; raises L{HTTPError}."""
        if not self._allowed:
            peer = self.transport.getPeer()
            self.log.warn("HTTP request refused for {peer}: not an allowed peer", peer=getattr(peer, "host", peer))
            raise HTTPError(403, "forbidden")
        if target.partition(b"?")[0] != self.factory.path:
            raise HTTPError(404, "not found")
        if method not in (b"GET", b"HEAD"):
            raise HTTPError(405, "method not allowed")
        if b"transfer-encoding" in headers or headers.get(b"content-length", [b"0"]) != [b"0"]:
            raise HTTPError(413, "a login request has no body")

    def _answer(self, coroutine: Coroutine[Any, Any, Answer], version: bytes, keep_alive: bool) -> None:
        """
        Run the answer's coroutine: at once when nothing it waits for is
        pending (a cached login: no Deferred, no trampoline), or else by
        Twisted once the first pending Deferred fires.
        """
        try:
            coroutine.send(None)  # what it yields is the Deferred it waits for; Twisted takes over below
        except StopIteration as done:
            self._respond(done.value, version, keep_alive)
            return
        except Exception:
            self._crashed(Failure(), version)
            return
        # Deferred.__await__ looks again whether it fired: resuming the coroutine with None is safe.
        d = Deferred.fromCoroutine(coroutine)
        d.addCallback(self._respond, version, keep_alive)
        d.addErrback(self._crashed, version)
        d.addCallback(lambda _: self._resume())

    def _crashed(self, failure: Failure, version: bytes) -> None:
        # answer() never raises; if it ever does: no OK, and no connection left hanging
        self.log.failure("auth_http answer failed", failure)
        self._respond((500, {b"Auth-Status": b"Temporary authentication failure"}), version, False)

    def _resume(self) -> None:
        """After an answer that had to wait, or drained output: read again, answer what was pipelined meanwhile."""
        if self._closing or self._busy:
            return
        self._pauses.resume("backlog")
        self._serve()

    # -- responses ----------------------------------------------------------------

    def _respond(self, answer: Answer, version: bytes, keep_alive: bool, body: bytes = b"",
                 head_only: bool = False) -> None:
        """Write one response (nothing once the connection is gone); close it unless kept alive."""
        self._busy = False
        if self._closing:
            return
        code, headers = answer
        now = self.factory.clock.seconds()
        lines = [b"%s %d %s" % (version, code, REASONS.get(code, b"Error")), b"Server: gomail",
                 b"Date: " + self.factory.date(now), b"Content-Length: %d" % len(body)]
        if body:
            lines += [b"Content-Type: application/json", b"Cache-Control: no-store"]
        if not keep_alive:
            lines.append(b"Connection: close")
        elif version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive")
        lines += [name + b": " + value for name, value in headers.items()]
        lines += [b"", b"" if head_only else body]
        self.transport.write(b"\r\n".join(lines))
        if keep_alive:
            self._idle_since = now
        else:
            self._close()

    def _close(self) -> None:
        """Close once the last answer is sent; abort if it is not taken within the timeout."""
        self._closing = True
        # A transport does not close while a producer is registered (flow.py's contract).
        self._flow.detach()
        self.transport.loseConnection()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._check_timeout)

    def _refuse(self, version: bytes, error: HTTPError, head_only: bool = False) -> None:
        headers = {b"Auth-Status": REFUSAL} if error.auth_refusal else {}
        if error.code == 405:
            headers[b"Allow"] = b"GET, HEAD"
        body = json.dumps({"error": error.message}).encode() + b"\n"
        self._respond((error.code, headers), version, False, body, head_only)


def _keep_alive(version: bytes, headers: RequestHeaders) -> bool:
    """Whether the connection stays open after the answer (RFC 9112 9.3)."""
    values = headers.get(b"connection")
    if not values:
        return version == b"HTTP/1.1"
    options = {option.strip().lower() for value in values for option in value.split(b",")}
    if b"close" in options:
        return False
    return version == b"HTTP/1.1" or b"keep-alive" in options
