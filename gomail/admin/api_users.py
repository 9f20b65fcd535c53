# -*- test-case-name: tests.test_admin_users -*-
"""
The admin API's user routes (role admin): list and search, create, show,
update, delete, set the password. TOTP enrolment, app passwords and unlocking
are in L{gomail.admin.api_usercreds}, which builds on the helpers here.

Every change runs as one cursor function through C{ctx.write} (one
transaction, and the server forgets its cached user records) that also writes
the operation-log entry, so a change is never recorded without happening or
the other way round. The user JSON never holds a password hash, a TOTP secret
or an app password digest.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from gomail.admin import oplog
from gomail.admin.routing import PAGE_QUERY, ApiError, Call, api
from gomail.auth import passwords, userdb
from gomail.auth.backends import parse_assignment
from gomail.auth.names import canonical_sender, canonical_username

# -- the user as JSON ---------------------------------------------------------------

APP_PASSWORD_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["label", "created", "last_used"],
    "properties": {"label": {"type": "string"}, "created": {"type": "number"},
                   "last_used": {"type": ["number", "null"]}},
}
USER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "enabled", "totp_enabled", "totp_pending", "allowed_senders", "backend", "app_passwords",
                 "created", "updated"],
    "properties": {
        "name": {"type": "string"}, "enabled": {"type": "boolean"}, "totp_enabled": {"type": "boolean"},
        "totp_pending": {"type": "boolean"}, "allowed_senders": {"type": "array", "items": {"type": "string"}},
        "backend": {"type": ["string", "null"]}, "app_passwords": {"type": "array", "items": APP_PASSWORD_SCHEMA},
        "created": {"type": "number"}, "updated": {"type": "number"},
    },
}
OK_SCHEMA: dict[str, Any] = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}

# The secret itself is never selected: only whether there is one.
_COLUMNS = ("u.name, u.enabled, u.totp_enabled, COALESCE(u.totp_secret, '') != '', u.allowed_senders, u.backend, "
            "u.created, u.updated, a.label, a.created, a.last_used")
#: The sort orders of GET /api/users; the name breaks ties, so pages never overlap.
SORTS = {"name": "name", "-name": "name DESC", "created": "created, name", "-created": "created DESC, name",
         "updated": "updated, name", "-updated": "updated DESC, name"}


def _users(cursor: Any, where: str = "", args: tuple = (), order: str = "name", limit: int = -1,
           offset: int = 0) -> list[dict[str, Any]]:
    """The users selected by C{where} (SQL on the users table), as JSON, in C{order}, one page of them."""
    outer = ", ".join(f"u.{term}" for term in order.split(", "))
    cursor.execute(f"SELECT {_COLUMNS} FROM (SELECT * FROM users {where} ORDER BY {order} LIMIT ? OFFSET ?) u "
                   f"LEFT JOIN app_passwords a ON a.user = u.name ORDER BY {outer}, a.label",
                   (*args, limit, offset))
    users: dict[str, dict[str, Any]] = {}
    for name, enabled, totp_enabled, has_secret, senders, backend, created, updated, *app in cursor.fetchall():
        user = users.get(name)
        if user is None:
            user = users[name] = {
                "name": name, "enabled": bool(enabled), "totp_enabled": bool(totp_enabled),
                "totp_pending": bool(has_secret) and not totp_enabled, "allowed_senders": json.loads(senders),
                "backend": backend, "app_passwords": [], "created": created, "updated": updated}
        if app[0] is not None:
            user["app_passwords"].append({"label": app[0], "created": app[1], "last_used": app[2]})
    return list(users.values())


def find_user(cursor: Any, name: str) -> dict[str, Any] | None:
    """The user C{name} (canonical) as JSON, or None."""
    found = _users(cursor, "WHERE name = ?", (name,))
    return found[0] if found else None


def existing_user(cursor: Any, name: str) -> dict[str, Any]:
    """The user C{name} (canonical) as JSON. @raise ApiError: 404, no such user."""
    user = find_user(cursor, name)
    if user is None:
        raise ApiError(404, f"no user {name}")
    return user


def user_name(raw: str) -> str:
    """A user name from a path, canonical. @raise ApiError: 404, for a name no user can have."""
    try:
        return canonical_username(raw)
    except ValueError:
        raise ApiError(404, "no such user") from None


def logged(cursor: Any, call: Call, now: float, action: str, name: str, change: Any, *args: Any) -> dict[str, Any]:
    """
    Run C{change(cursor, name, *args)} on the existing user C{name} and log it
    as C{action}, with the user before and after; returns the user after.
    """
    before = existing_user(cursor, name)
    change(cursor, name, *args)
    after = existing_user(cursor, name)
    oplog.record(cursor, now, call.actor, action, name, before, after, call.client_ip)
    return after


# -- checking input (each error names its field) --------------------------------------


def _checked(field: str, check: Any, value: Any) -> Any:
    try:
        return check(value)
    except ValueError as e:
        raise ApiError(422, f"field {field!r}: {e}") from None


def _new_name(raw: str) -> str:
    name = canonical_username(raw)
    if "/" in name:
        # twisted.web decodes %2F before routing: /api/users/<name>/... could never reach this user.
        raise ValueError("the user name contains '/', which the admin API's paths cannot carry")
    return name


def checked_password(password: str) -> str:
    """C{password} if bcrypt can use it all. @raise ApiError: 422 naming the field."""
    _checked("password", passwords.check_password, password)
    return password


def _senders(senders: list[str]) -> list[str]:
    canonical = [_checked(f"allowed_senders.{i}", canonical_sender, sender) for i, sender in enumerate(senders)]
    return list(dict.fromkeys(canonical))  # as userdb stores them: ordered, no duplicates


def _backend(backend: str | None) -> str | None:
    if backend is None:
        return None
    address, port = _checked("backend", parse_assignment, backend.strip())
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def hashed(app: Any, password: str) -> bytes:
    """C{password} hashed at the configured cost, in the CPU pool (bcrypt would stall the reactor)."""
    ctx = app.ctx
    result: bytes = await ctx.server.auth.cpu.run(passwords.hash_password, password, ctx.config.auth.bcryptRounds)
    return result


# -- the routes --------------------------------------------------------------------

NAME = {"type": "string", "minLength": 1, "maxLength": 1024}
PASSWORD = {"type": "string", "minLength": 1, "maxLength": 1024}
SENDERS = {"type": "array", "maxItems": 1000, "items": {"type": "string", "maxLength": 1024}}
BACKEND = {"type": ["string", "null"], "maxLength": 300}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["items", "total", "page", "per_page"],
    "properties": {"items": {"type": "array", "items": USER_SCHEMA}, "total": {"type": "integer"},
                   "page": {"type": "integer"}, "per_page": {"type": "integer"}},
}


def _like(text: str) -> str:
    """A LIKE pattern matching C{text} anywhere, its wildcards taken literally (ESCAPE '\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _list(cursor: Any, where: str, args: tuple, order: str, per_page: int, offset: int) -> tuple[int, list]:
    cursor.execute(f"SELECT COUNT(*) FROM users {where}", args)
    total = int(cursor.fetchone()[0])
    # A page past the end asks nothing more (and an offset past int64 never reaches SQLite).
    return total, _users(cursor, where, args, order, per_page, offset) if offset < total else []


@api("/api/users", "GET", role="admin", tag="users", summary="List users: search, filter, sort, one page",
     query={"search": {"type": "string", "maxLength": 254}, "enabled": {"type": "boolean"},
            "totp": {"type": "boolean"}, "sort": {"type": "string", "enum": list(SORTS), "default": "name"},
            **PAGE_QUERY},
     response=LIST_SCHEMA)
async def list_users(app: Any, request: Any, call: Call) -> Any:
    query = call.query
    conditions: list[str] = []
    args: list[Any] = []
    search = query.get("search", "")
    if search.strip():
        # Names are stored NFKC-casefolded: fold the search the same way, so case never matters.
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", search.strip()).casefold())
        conditions.append("name LIKE ? ESCAPE '\\'")
        args.append(_like(folded))
    if "enabled" in query:
        conditions.append("enabled = ?")
        args.append(int(query["enabled"]))
    if "totp" in query:
        conditions.append("totp_enabled = ?")
        args.append(int(query["totp"]))
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    page, per_page = query["page"], query["per_page"]
    total, items = await app.ctx.db(_list, where, tuple(args), SORTS[query["sort"]], per_page,
                                    (page - 1) * per_page)
    return {"items": items, "total": total, "page": page, "per_page": per_page}


def _create(cursor: Any, call: Call, now: float, name: str, password_hash: bytes, enabled: bool,
            senders: list[str], backend: str | None) -> dict[str, Any]:
    try:
        userdb.add_user(cursor, name, password_hash, now, senders)
    except userdb.UserExists:
        raise ApiError(409, f"user {name} already exists") from None
    if not enabled:
        userdb.set_enabled(cursor, name, False, now)
    if backend is not None:
        userdb.set_backend(cursor, name, backend, now)
    user = existing_user(cursor, name)
    oplog.record(cursor, now, call.actor, "user.create", name, None, user, call.client_ip)
    return user


@api("/api/users", "POST", role="admin", tag="users", summary="Create a user", status=201, response=USER_SCHEMA,
     body={"type": "object", "required": ["name", "password"], "additionalProperties": False,
           "properties": {"name": NAME, "password": PASSWORD, "enabled": {"type": "boolean"},
                          "allowed_senders": SENDERS, "backend": BACKEND}})
async def create_user(app: Any, request: Any, call: Call) -> Any:
    body = call.body
    name = _checked("name", _new_name, body["name"])
    password = checked_password(body["password"])
    senders = _senders(body.get("allowed_senders", []))
    backend = _backend(body.get("backend"))
    # Refuse a taken name before spending a bcrypt hash on it (the insert checks again).
    if await app.ctx.db(find_user, name) is not None:
        raise ApiError(409, f"user {name} already exists")
    password_hash = await hashed(app, password)
    return await app.ctx.write(_create, call, app.ctx.clock.seconds(), name, password_hash,
                               body.get("enabled", True), senders, backend)


@api("/api/users/<name>", "GET", role="admin", tag="users", summary="One user", response=USER_SCHEMA)
async def show_user(app: Any, request: Any, call: Call, name: str) -> Any:
    return await app.ctx.db(existing_user, user_name(name))


def _update(cursor: Any, call: Call, now: float, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    before = existing_user(cursor, name)
    # Only what differs is written: the enabled flag bumps the credential version (ends cached logins).
    if "enabled" in changes and changes["enabled"] != before["enabled"]:
        userdb.set_enabled(cursor, name, changes["enabled"], now)
    if "allowed_senders" in changes and changes["allowed_senders"] != before["allowed_senders"]:
        userdb.set_allowed_senders(cursor, name, changes["allowed_senders"], now)
    if "backend" in changes and changes["backend"] != before["backend"]:
        userdb.set_backend(cursor, name, changes["backend"], now)
    after = existing_user(cursor, name)
    if after != before:
        oplog.record(cursor, now, call.actor, "user.update", name, before, after, call.client_ip)
    return after


@api("/api/users/<name>", "PATCH", role="admin", tag="users", response=USER_SCHEMA,
     summary="Change a user: enabled, allowed senders, backend (null: none)",
     body={"type": "object", "additionalProperties": False,
           "properties": {"enabled": {"type": "boolean"}, "allowed_senders": SENDERS, "backend": BACKEND}})
async def update_user(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    changes = dict(call.body)
    if "allowed_senders" in changes:
        changes["allowed_senders"] = _senders(changes["allowed_senders"])
    if "backend" in changes:
        changes["backend"] = _backend(changes["backend"])
    return await app.ctx.write(_update, call, app.ctx.clock.seconds(), name, changes)


def _delete(cursor: Any, call: Call, now: float, name: str) -> dict[str, Any]:
    before = existing_user(cursor, name)
    userdb.delete_user(cursor, name)
    oplog.record(cursor, now, call.actor, "user.delete", name, before, None, call.client_ip)
    return {"deleted": name}


@api("/api/users/<name>", "DELETE", role="admin", tag="users", summary="Delete a user and its app passwords",
     response={"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}})
async def delete_user(app: Any, request: Any, call: Call, name: str) -> Any:
    return await app.ctx.write(_delete, call, app.ctx.clock.seconds(), user_name(name))


@api("/api/users/<name>/password", "PUT", role="admin", tag="users", summary="Set a user's password",
     body={"type": "object", "required": ["password"], "additionalProperties": False,
           "properties": {"password": PASSWORD}},
     response=OK_SCHEMA)
async def set_password(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    password = checked_password(call.body["password"])
    await app.ctx.db(existing_user, name)  # 404 before spending a bcrypt hash
    password_hash = await hashed(app, password)
    now = app.ctx.clock.seconds()
    await app.ctx.write(logged, call, now, "user.password", name, userdb.set_password, password_hash, now)
    return {"ok": True}


__all__ = ["OK_SCHEMA", "USER_SCHEMA", "existing_user", "find_user", "hashed", "logged", "user_name"]
