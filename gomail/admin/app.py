# -*- test-case-name: tests.test_admin_api -*-
"""
The admin app (Klein): the session routes (login, refresh, logout, who am
I), the OpenAPI document, the web UI's files, and, through the route
modules' mixins, the rest of the API. L{admin_resource} wraps it with the
security headers and CORS every answer carries.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect
from zope.interface import implementer

from gomail.admin import (
    oplog,
    routes,  # noqa: F401 - the route modules join the app
)
from gomail.admin.context import AdminContext
from gomail.admin.login import LOGIN_FAILED, LoginFailed, LoginUnavailable
from gomail.admin.openapi import openapi_document
from gomail.admin.routing import (
    REFRESH_COOKIE,
    SESSION_COOKIE,
    AdminBase,
    ApiError,
    Call,
    api,
    router,
)
from gomail.admin.sessions import NewSession
from gomail.auth.authlog import printable
from gomail.web.http import json_body

STATIC = os.path.join(os.path.dirname(__file__), "static")
ADMIN_SCHEMA = {"type": "object", "required": ["name", "role", "totp_enabled"],
                "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["superadmin", "admin", "auditor"]},
                               "totp_enabled": {"type": "boolean"}}}
SESSION_SCHEMA = {
    "type": "object", "required": ["admin", "kind", "expires_at", "refresh_expires_at"],
    "properties": {"admin": ADMIN_SCHEMA, "kind": {"type": "string", "enum": ["cookie", "bearer"]},
                   "expires_at": {"type": "number"}, "refresh_expires_at": {"type": "number"},
                   "token": {"type": "string"}, "refresh_token": {"type": "string"},
                   "csrf_token": {"type": "string"}},
}
LOGIN_BODY = {
    "type": "object", "required": ["username", "password"], "additionalProperties": False,
    "properties": {"username": {"type": "string", "minLength": 1, "maxLength": 254},
                   "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                   "totp_code": {"type": "string", "maxLength": 16},
                   "session": {"type": "string", "enum": ["bearer", "cookie"], "default": "bearer"}},
}


def admin_json(admin: Any) -> dict[str, Any]:
    return {"name": admin.name, "role": admin.role, "totp_enabled": admin.totp_enabled}


class SessionRoutes(AdminBase):
    """C{/api/login}, C{/api/refresh}, C{/api/logout}, C{/api/session}."""

    ctx: AdminContext
    log = Logger()

    def _opened(self, request: Any, session: NewSession) -> dict[str, Any]:
        body: dict[str, Any] = {"admin": admin_json(session.admin), "kind": session.kind,
                                "expires_at": session.expires, "refresh_expires_at": session.refresh_expires}
        if session.kind == "bearer":
            body.update(token=session.token, refresh_token=session.refresh_token)
        else:
            # The tokens go in HttpOnly cookies, out of the page's reach; the page keeps the CSRF token.
            now = self.ctx.clock.seconds()
            self._cookie(request, SESSION_COOKIE, session.token, b"/", session.expires - now)
            self._cookie(request, REFRESH_COOKIE, session.refresh_token, b"/api/refresh", session.refresh_expires - now)
            body["csrf_token"] = session.csrf_token
        return body

    def _cookie(self, request: Any, name: bytes, value: str, path: bytes, max_age: float) -> None:
        request.addCookie(name, value.encode(), path=path, max_age=str(max(0, int(max_age))).encode(),
                          httpOnly=True, secure=self.ctx.config.admin.secureCookie, sameSite="strict")

    @api("/api/login", "POST", role=None, summary="Log in (password, and the TOTP code once the admin has TOTP)",
         body=LOGIN_BODY, response=SESSION_SCHEMA, tag="session")
    async def login(self, request: Any, call: Call) -> Any:
        wait = self.ctx.rate_limit.allow(call.client_ip)
        if wait:
            request.setHeader(b"Retry-After", str(int(wait + 0.999)).encode())
            raise ApiError(429, "too many login attempts: try again later")
        body = call.body
        name = body["username"]
        try:
            admin = await self.ctx.login.login(name, body["password"], body.get("totp_code"), call.client_ip)
        except LoginFailed:
            # Nobody is authenticated: the actor is "-" (the typed name is only the target,
            # so no one can make entries appear under another admin's name).
            await self.ctx.db(oplog.record, self.ctx.clock.seconds(), "-", "login.failed",
                              printable(name, 254), None, None, call.client_ip)
            raise ApiError(401, LOGIN_FAILED) from None
        except LoginUnavailable:
            raise ApiError(503, "login temporarily unavailable: try again later") from None
        session = await self.ctx.sessions.open(admin, body.get("session", "bearer"), call.client_ip)
        await self.ctx.db(oplog.record, self.ctx.clock.seconds(), admin.name, "login", admin.name, None,
                          {"session": session.kind}, call.client_ip)
        return self._opened(request, session)

    @api("/api/refresh", "POST", role=None, summary="Trade a refresh token (body or cookie) for a new session",
         body={"type": "object", "additionalProperties": False,
               "properties": {"refresh_token": {"type": "string", "maxLength": 200}}},
         response=SESSION_SCHEMA, tag="session")
    async def refresh(self, request: Any, call: Call) -> Any:
        token = call.body.get("refresh_token")
        if token is None:
            cookie = request.getCookie(REFRESH_COOKIE)
            token = cookie.decode("latin-1") if cookie else None
        session = await self.ctx.sessions.refresh(token, call.client_ip) if token else None
        if session is None:
            raise ApiError(401, "refresh failed: log in again")
        return self._opened(request, session)

    @api("/api/logout", "POST", role="auditor", summary="End this session", tag="session",
         response={"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}})
    async def logout(self, request: Any, call: Call) -> Any:
        assert call.session is not None
        await self.ctx.sessions.end(call.session)
        if call.session.kind == "cookie":
            self._cookie(request, SESSION_COOKIE, "", b"/", 0)
            self._cookie(request, REFRESH_COOKIE, "", b"/api/refresh", 0)
        return {"ok": True}

    @api("/api/session", "GET", role="auditor", summary="This session: its admin, expiry and CSRF token",
         tag="session", response={"type": "object", "required": ["admin", "kind", "expires_at"],
                                  "properties": {"admin": ADMIN_SCHEMA, "kind": {"type": "string"},
                                                 "expires_at": {"type": "number"},
                                                 "csrf_token": {"type": "string"}}})
    async def whoami(self, request: Any, call: Call) -> Any:
        session = call.session
        assert session is not None
        body = {"admin": admin_json(session.admin), "kind": session.kind, "expires_at": session.expires}
        if session.kind == "cookie":
            body["csrf_token"] = session.csrf_token
        return body

    @api("/api/openapi.json", "GET", role=None, summary="This API's OpenAPI 3.1 document", tag="session")
    async def openapi(self, request: Any, call: Call) -> Any:
        return openapi_document()


class AdminApp(SessionRoutes):
    """The whole admin app: L{SessionRoutes} and the route modules' mixins, over one L{AdminContext}."""

    router = router

    def __init__(self, ctx: AdminContext, access: Any = None) -> None:
        self.ctx = ctx
        self.sessions = ctx.sessions
        self.access = access
        self.static_files = load_static(STATIC)

    def client_ip(self, request: Any) -> str:
        if self.access is not None:
            client = self.access.client_address(request)
            return str(getattr(client, "host", "")) if client is not None else ""
        return super().client_ip(request)

    def resource(self) -> Any:
        return self.router.resource()

    @router.route("/", methods=["GET", "HEAD"])
    def index(self, request: Any) -> bytes:
        return self._static_file(request, "index.html")

    @router.route("/static/<path:name>", methods=["GET", "HEAD"])
    def static(self, request: Any, name: str) -> bytes:
        return self._static_file(request, name)

    def _static_file(self, request: Any, name: str) -> bytes:
        found = self.static_files.get(name)
        if found is None:
            return json_body(request, {"error": "not found"}, 404)
        body, content_type = found
        request.setHeader(b"Content-Type", content_type.encode())
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    @router.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return json_body(request, {"error": "not found"}, 404)

    @router.handle_errors(RequestRedirect)
    def redirected(self, request: Any, failure: Any) -> bytes:
        # werkzeug would redirect "/api//session" or "/static" to a canonical URL: no such URL is served.
        return json_body(request, {"error": "not found"}, 404)

    @router.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: Any, failure: Any) -> bytes:
        allowed = ", ".join(getattr(failure.value, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"Allow", allowed.encode())
        return json_body(request, {"error": "method not allowed"}, 405)

    @router.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("admin request failed", failure)
        return json_body(request, {"error": "internal error"}, 500)


_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon"}


def load_static(directory: str) -> dict[str, tuple[bytes, str]]:
    """
    The web UI's files, read once at start (a few tens of KB): served from
    memory, so no request reads the disk on the reactor thread, and no name a
    client sends can reach any other file.
    """
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        content_type = _TYPES.get(os.path.splitext(name)[1])
        if content_type is not None and os.path.isfile(path):
            with open(path, "rb") as f:
                files[name] = (f.read(), content_type)
    return files


CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       b"font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@implementer(IResource)
class SecureHeaders:
    """
    Adds the security headers to every answer of C{wrapped}, and answers
    CORS for the listed C{origins} (bearer tokens only: no credentials).
    """

    isLeaf = False

    def __init__(self, wrapped: Any, origins: tuple[str, ...] = ()) -> None:
        self.wrapped = wrapped
        self.origins = frozenset(o.lower() for o in origins)

    def _headers(self, request: Any) -> bool:
        """Set the headers; True when the request was a CORS preflight (answered here)."""
        for name, value in ((b"Content-Security-Policy", CSP), (b"X-Frame-Options", b"DENY"),
                            (b"X-Content-Type-Options", b"nosniff"), (b"Referrer-Policy", b"no-referrer"),
                            (b"Cross-Origin-Opener-Policy", b"same-origin"),
                            (b"Cross-Origin-Resource-Policy", b"same-origin"),
                            (b"Permissions-Policy", b"camera=(), microphone=(), geolocation=()")):
            request.setHeader(name, value)
        if request.isSecure():
            request.setHeader(b"Strict-Transport-Security", b"max-age=31536000")
        origin = (request.getHeader(b"origin") or b"").decode("latin-1").strip().lower()
        if origin and origin in self.origins:
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode())
            request.setHeader(b"Vary", b"Origin")
            if request.method == b"OPTIONS":
                request.setHeader(b"Access-Control-Allow-Methods", b"GET, POST, PUT, PATCH, DELETE")
                request.setHeader(b"Access-Control-Allow-Headers", b"Authorization, Content-Type")
                request.setHeader(b"Access-Control-Max-Age", b"600")
                return True
        return False

    def render(self, request: Any) -> bytes:
        if self._headers(request):
            request.setResponseCode(204)
            return b""
        return self.wrapped.render(request)

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if self._headers(request):
            return _Preflight()
        request.postpath.insert(0, request.prepath.pop())
        return self.wrapped

    def putChild(self, path: bytes, child: Any) -> None:
        raise NotImplementedError("wrap a complete resource tree")


class _Preflight:
    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(204)
        return b""
