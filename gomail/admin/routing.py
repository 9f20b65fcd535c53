# -*- test-case-name: tests.test_admin_api -*-
"""
How an admin API route is declared and served.

Every route is a Klein route declared with L{api}, which also records its
contract (L{RouteSpec}): the role it needs, its query parameters and body as
JSON Schema, its answer. The same record serves three purposes:

  - serving: L{AdminBase.serve} authenticates (bearer token or session
    cookie), enforces the role (401 without a session, 403 below the role),
    the CSRF token of cookie sessions on state-changing requests, parses and
    validates the query and the JSON body (errors name the field), and turns
    L{ApiError} into C{{"error": ...}} with its status;
  - the OpenAPI 3.1 document (L{gomail.admin.openapi});
  - the test proving every route refuses the roles below its own.

Route modules define mixin classes whose methods are decorated with L{api};
L{gomail.admin.app.AdminApp} inherits them all.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jsonschema import Draft202012Validator
from klein import Klein
from twisted.logger import Logger

from gomail.admin.sessions import Session
from gomail.admin.store import ROLES, rank
from gomail.netaddr import ip_text
from gomail.web.guard import STATE_CHANGING
from gomail.web.http import json_body

_INTEGER = re.compile(r"-?[0-9]{1,18}")
#: What a validation error may say about the value itself (never the value: it may be a password).
_DESCRIBED = {
    "maxLength": lambda e: f"is longer than {e.validator_value} characters",
    "minLength": lambda e: f"is shorter than {e.validator_value} characters",
    "pattern": lambda e: "has the wrong form",
    "type": lambda e: f"must be of type {e.validator_value}",
    "enum": lambda e: f"must be one of {', '.join(map(str, e.validator_value))}",
    "minimum": lambda e: f"must be at least {e.validator_value}",
    "maximum": lambda e: f"must be at most {e.validator_value}",
    "exclusiveMinimum": lambda e: f"must be more than {e.validator_value}",
    "exclusiveMaximum": lambda e: f"must be less than {e.validator_value}",
    "maxItems": lambda e: f"has more than {e.validator_value} items",
    "minItems": lambda e: f"has fewer than {e.validator_value} items",
    "minProperties": lambda e: f"needs at least {e.validator_value} fields",
    "uniqueItems": lambda e: "has repeated items",
}

#: The one Klein router of the admin app: every route module adds to it.
router = Klein()
#: Every route's contract, in declaration order.
ROUTES: list[RouteSpec] = []

SESSION_COOKIE = b"gomail_session"
REFRESH_COOKIE = b"gomail_refresh"
CSRF_HEADER = b"X-CSRF-Token"
#: The status codes any route may answer with an error body (documented for each).
ERROR_CODES = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)

ERROR_SCHEMA: dict[str, Any] = {"type": "object", "required": ["error"],
                                "properties": {"error": {"type": "string"}}}
#: Schemas shared by route modules.
PAGE_QUERY: dict[str, dict[str, Any]] = {
    "page": {"type": "integer", "minimum": 1, "default": 1},
    "per_page": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
}


class ApiError(Exception):
    """An answer other than success: C{status} and the text of C{{"error": ...}}."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


@dataclass(frozen=True)
class RouteSpec:
    """One route's contract (see the module docstring)."""

    path: str  # Klein's form: /api/users/<name>
    method: str
    role: str | None  # the lowest role allowed; None: no session needed
    summary: str
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    response: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    status: int = 200
    content_type: str = "application/json"
    tag: str = ""
    #: Other media types the success answer may have (a query parameter's choice): type -> schema.
    other_content: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Call:
    """What a handler gets besides the request: who asks, and the validated input."""

    session: Session | None
    query: dict[str, Any]
    body: Any
    client_ip: str

    @property
    def actor(self) -> str:
        """The name recorded in the operation log."""
        return self.session.admin.name if self.session is not None else "-"


def api(path: str, method: str, *, role: str | None, summary: str, query: dict[str, dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, response: dict[str, Any] | None = None, status: int = 200,
        content_type: str = "application/json", tag: str = "",
        other_content: dict[str, dict[str, Any]] | None = None) -> Callable[[Any], Any]:
    """
    Declare an admin API route. The handler is C{async def h(self, request,
    call, **path_arguments)} and returns the JSON-able body (or bytes, for
    another C{content_type}); it raises L{ApiError} for any other answer.
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"no role {role!r}")
    spec = RouteSpec(path, method.upper(), role, summary, dict(query or {}), body,
                     response or {"type": "object"}, status, content_type, tag, dict(other_content or {}))
    ROUTES.append(spec)

    def decorate(handler: Any) -> Any:
        @functools.wraps(handler)
        async def endpoint(self: AdminBase, request: Any, **kwargs: Any) -> bytes:
            return await self.serve(spec, handler, request, kwargs)

        router.route(path, methods=[spec.method], endpoint=f"{spec.method} {path}")(endpoint)
        return handler

    return decorate


def _bearer(request: Any) -> str | None:
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _query_value(name: str, raw: list[bytes], schema: dict[str, Any]) -> Any:
    kind = schema.get("type", "string")
    if len(raw) > 1:
        raise ApiError(400, f"query parameter {name!r}: give it once")
    try:
        text = raw[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"query parameter {name!r}: not UTF-8") from None
    if kind == "integer":
        if not _INTEGER.fullmatch(text):  # ASCII digits only: str.isdigit() takes "²", which int() refuses
            raise ApiError(400, f"query parameter {name!r}: must be an integer")
        value: Any = int(text)
    elif kind == "number":
        try:
            value = float(text)
        except ValueError:
            raise ApiError(400, f"query parameter {name!r}: must be a number") from None
        if not math.isfinite(value):
            raise ApiError(400, f"query parameter {name!r}: must be a finite number")
    elif kind == "boolean":
        if text not in ("true", "false"):
            raise ApiError(400, f"query parameter {name!r}: must be true or false")
        value = text == "true"
    else:
        value = text
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        raise ApiError(400, f"query parameter {name!r}: {error.message}")
    return value


def parse_query(spec: RouteSpec, request: Any) -> dict[str, Any]:
    """The route's query parameters, typed and checked (defaults filled in); unknown ones refused."""
    # From the URL only: twisted.web also puts a form-encoded POST body in
    # request.args (curl -d sends JSON labelled as a form).
    # Parsed as latin-1 text, which maps every byte to one character and back:
    # parse_qs on bytes re-encodes its results as ASCII, failing on any
    # non-ASCII value; the values' UTF-8 is checked by _query_value.
    query = urlsplit(request.uri).query.decode("latin-1")
    args = {k.encode("latin-1").decode("utf-8", "replace"): [value.encode("latin-1") for value in v]
            for k, v in parse_qs(query, keep_blank_values=True, encoding="latin-1").items()}
    unknown = sorted(set(args) - set(spec.query))
    if unknown:
        raise ApiError(400, f"unknown query parameter {unknown[0]!r}")
    values = {}
    for name, schema in spec.query.items():
        if name in args:
            values[name] = _query_value(name, args[name], schema)
        elif "default" in schema:
            values[name] = schema["default"]
    return values


def field_error(error: Any) -> str:
    """A jsonschema error as text naming the field (C{field 'a.b': ...})."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        where = f"{where}.{missing}" if where else missing
        return f"field {where!r}: is required"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unknown field {'.'.join([*where.split('.'), extra[0]]).strip('.')!r}" if extra else "unknown field"
    describe = _DESCRIBED.get(error.validator)
    text = describe(error) if describe is not None else "is not valid"
    return f"field {where!r}: {text}" if where else f"body: {text}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"name": "a", "name": "b"}: which one a reader takes differs; refuse rather than guess.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a field is given twice")
    return result


def _no_constant(name: str) -> Any:
    # NaN passes every JSON Schema bound (comparisons with it are false) and SQLite stores it as NULL.
    raise ValueError(f"{name} is not a number JSON allows")


def parse_body(spec: RouteSpec, request: Any) -> Any:
    """The JSON body, checked against the route's schema."""
    if spec.body is None:
        return None
    raw = b""
    if request.content is not None:
        request.content.seek(0)
        raw = request.content.read()
    if not raw.strip():
        raw = b"{}"
    try:
        body = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
        # Lone surrogates ("\ud800") are valid JSON escapes but no text: SQLite and UTF-8 refuse them.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError):
        raise ApiError(400, "the body is not JSON text (UTF-8, no NaN or Infinity)") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None
    errors = sorted(Draft202012Validator(spec.body).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        raise ApiError(422, field_error(errors[0]))
    return body


class AdminBase:
    """
    The serving pipeline every route goes through (L{serve}); route modules'
    mixins and L{gomail.admin.app.AdminApp} build on it.

    Subclasses provide C{sessions} (with C{find(token)}: Deferred[Session |
    None]) and C{client_ip(request)}.
    """

    log = Logger()
    sessions: Any

    def client_ip(self, request: Any) -> str:
        peer = request.getClientAddress()
        return ip_text(getattr(peer, "host", None)) or ""

    async def authenticate(self, request: Any) -> Session | None:
        """The session a request presents (bearer token first, else the cookie), or None."""
        token = _bearer(request)
        kind = "bearer"
        if token is None:
            cookie = request.getCookie(SESSION_COOKIE)
            token, kind = (cookie.decode("latin-1"), "cookie") if cookie else (None, "")
        if not token or len(token) > 200:
            return None
        session: Session | None = await self.sessions.find(token)
        # A cookie names a cookie session and a bearer token a bearer one: a
        # script holding a cookie session's token still needs the CSRF token.
        if session is None or session.kind != kind:
            return None
        return session

    async def serve(self, spec: RouteSpec, handler: Any, request: Any, kwargs: dict[str, Any]) -> bytes:
        """Run one route (see the module docstring); every answer is JSON but a handler's own bytes."""
        try:
            session = None
            if spec.role is not None:
                session = await self.authenticate(request)
                if session is None:
                    request.setHeader(b"WWW-Authenticate", b'Bearer realm="gomail admin"')
                    raise ApiError(401, "authentication required")
                if rank(session.admin.role) < rank(spec.role):
                    raise ApiError(403, f"forbidden: this needs the {spec.role} role")
                if session.kind == "cookie" and request.method in STATE_CHANGING:
                    sent = (request.getHeader(CSRF_HEADER) or b"").decode("latin-1")
                    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                        raise ApiError(403, "CSRF token missing or wrong (send X-CSRF-Token)")
            call = Call(session, parse_query(spec, request), parse_body(spec, request), self.client_ip(request))
            result = await handler(self, request, call, **kwargs)
        except ApiError as e:
            return json_body(request, {"error": e.message, **e.extra}, e.status)
        if isinstance(result, bytes):
            return result
        return json_body(request, result, spec.status)


__all__ = ["ERROR_CODES", "ERROR_SCHEMA", "PAGE_QUERY", "ROUTES", "AdminBase", "ApiError", "Call", "RouteSpec",
           "api", "field_error", "parse_body", "parse_query", "router"]
