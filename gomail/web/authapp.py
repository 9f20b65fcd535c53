# -*- test-case-name: tests.test_web_authapp -*-
"""
The nginx mail proxy's C{auth_http} endpoint as a Klein app, on a listener of
its own (PROTOCOLS.md).

HTTP itself is twisted.web's, bounded as every gomail listener is
(L{gomail.web.http.LimitedSite}: head and body size, request timeout, unread
answers). What nginx's contract needs beyond HTTP are checks here, in this
order, each answered with a JSON error and the connection closed as
twisted.web does:

  - the peer must be one C{nginxAuth.allowFrom} allows (the socket's peer:
    forwarded headers mean nothing here), else 403;
  - the path must be C{nginxAuth.path} (its query string ignored), else 404;
  - the method must be C{GET} or C{HEAD}, else 405 with C{Allow};
  - a login request has no body: 413;
  - no header value may hold a control character (but HTAB): 400 with the
    refusal C{Auth-Status}, so nginx ends the client's session.

Then the request's headers are answered by L{AuthHTTPAnswerer} (the shared
secret, the C{Auth-*} headers, the login through the portal, the backend),
whose status and headers are the response. The one error handler answers
anything unexpected with a 500 and the temporary failure: never C{OK}.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure

from gomail.web.authhttp import REFUSAL_TEXT, AuthHTTPAnswerer, RequestHeaders
from gomail.web.http import LimitedSite, PeerAccess, json_body

#: The bytes a header value may not hold: control characters other than HTAB, and DEL.
_CONTROL = bytes(range(9)) + bytes(range(10, 32)) + b"\x7f"
_TEMPORARY = b"Temporary authentication failure"


class AuthHTTPApp:
    """
    The auth_http route, holding its dependencies.

    @param answerer: works out the answer from the request's headers.
    @param path: the one path served (C{nginxAuth.path}).
    @param access: which peers may ask (C{nginxAuth.allowFrom}).
    """

    app = Klein()
    log = Logger()

    def __init__(self, answerer: AuthHTTPAnswerer, path: str, access: PeerAccess) -> None:
        self.answerer = answerer
        self.path = path.encode()
        self.access = access

    def resource(self) -> Any:
        return self.app.resource()

    @app.route("/", branch=True)
    async def auth(self, request: Any) -> bytes:
        """One login attempt from nginx: the C{Auth-*} answer in the response headers, no body."""
        request.defaultContentType = None
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        code, headers = await self.answerer.answer(request_headers(request))
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"Content-Length", b"0")  # not chunked: the answer is in the headers
        return b""

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Failure) -> bytes:
        """Whatever went wrong (the answerer never raises): no C{OK}, the temporary failure."""
        self.log.failure("auth_http request failed", failure)
        request.setHeader(b"Auth-Status", _TEMPORARY)
        return _refuse(request, 500, "internal error")

    def _refusal(self, request: Any) -> bytes | None:
        """The JSON error answering a request nginx would not send, or None."""
        if not self.access.allows_address(request.getClientAddress()):
            peer = request.getClientAddress()
            self.log.warn("HTTP request refused for {peer}: not an allowed peer", peer=getattr(peer, "host", peer))
            return _refuse(request, 403, "forbidden")
        if request.path != self.path:
            return _refuse(request, 404, "not found")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            return _refuse(request, 405, "method not allowed")
        headers = request.requestHeaders
        if headers.hasHeader(b"transfer-encoding") or headers.getRawHeaders(b"content-length", [b"0"]) != [b"0"]:
            return _refuse(request, 413, "a login request has no body")
        for _, values in headers.getAllRawHeaders():
            if any(value.translate(None, _CONTROL) != value for value in values):
                request.setHeader(b"Auth-Status", REFUSAL_TEXT.encode())
                return _refuse(request, 400, "control character in the request")
        return None


def request_headers(request: Any) -> RequestHeaders:
    """The request's headers as the answerer reads them: lower-case names, every value in order."""
    return {name.lower(): values for name, values in request.requestHeaders.getAllRawHeaders()}


def _refuse(request: Any, code: int, error: str) -> bytes:
    # twisted.web keeps an HTTP/1.1 connection after a 4xx: a refused peer or request gets no second
    # request on it (HTTPChannel closes once this answer is written when it is not persistent).
    request.setHeader(b"Connection", b"close")
    if request.channel is not None:
        request.channel.persistent = False
    body = json_body(request, {"error": error}, code)
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def auth_http_site(answerer: AuthHTTPAnswerer, path: str, access: PeerAccess, reactor: Any,
                   max_request_bytes: int, timeout: float) -> LimitedSite:
    """The site serving the auth_http app on an auth_http listener."""
    return LimitedSite(AuthHTTPApp(answerer, path, access).resource(), reactor, max_request_bytes, timeout)


__all__ = ["AuthHTTPApp", "auth_http_site", "request_headers"]
