# -*- test-case-name: tests.test_admin_system,tests.test_admin_config -*-
"""
The admin API's blacklist and system configuration routes (role admin).

The blacklist lives in the user database: each change is one transaction
with its operation-log entry, then the running server's blacklist reloads at
once (it would otherwise notice within C{auth.blacklistRefresh}).

C{GET /api/config} shows the live keys (L{gomail.admin.sysconfig}) and every
setting of the loaded configuration file, secrets redacted; C{PUT
/api/config} changes live keys, all or none (L{SystemConfig.change} stores
them with their operation-log entry and applies them).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

from twisted.logger import Logger

from gomail.admin import oplog
from gomail.admin.routing import ApiError, Call, api
from gomail.admin.store import rank
from gomail.admin.sysconfig import LIVE_KEYS, ConfigChangeError
from gomail.auth import userdb
from gomail.auth.records import BlacklistEntry
from gomail.extension.wiring import _SECRET_KEY as PLUGIN_SECRET_KEY

log = Logger()
REDACTED = "[redacted]"

# -- the blacklist --------------------------------------------------------------------

#: The latest expiry accepted (epoch seconds, year 5138): far enough for "for good" and any float.
_LATEST = 1e11
ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["network", "reason", "expires_at", "created"],
    "properties": {"network": {"type": "string"}, "reason": {"type": "string"},
                   "expires_at": {"type": ["number", "null"]}, "created": {"type": "number"}},
}
#: An address or a CIDR network, checked by userdb.canonical_network (its error names what is wrong).
NETWORK = {"type": "string", "minLength": 1, "maxLength": 100}


def entry_json(entry: BlacklistEntry) -> dict[str, Any]:
    """One blacklist entry as the API shows it."""
    return {"network": entry.network, "reason": entry.reason, "expires_at": entry.expires, "created": entry.created}


def _network(text: str, where: str) -> str:
    try:
        return userdb.canonical_network(text)
    except ValueError as e:
        raise ApiError(422, f"{where} 'network': {e}") from None


def _entry(cursor: Any, network: str) -> dict[str, Any] | None:
    """The entry for C{network} (canonical), expired or not."""
    row = cursor.execute("SELECT network, expires, reason, created FROM blacklist WHERE network = ?",
                         (network,)).fetchone()
    return entry_json(BlacklistEntry(*row)) if row is not None else None


def _add(cursor: Any, network: str, expires: float | None, reason: str, now: float, call: Call) -> dict[str, Any]:
    before = _entry(cursor, network)
    userdb.add_blacklist(cursor, network, expires, reason, now)
    after = _entry(cursor, network)
    oplog.record(cursor, now, call.actor, "blacklist.add", network, before, after, call.client_ip)
    assert after is not None
    return after


def _remove(cursor: Any, network: str, now: float, call: Call) -> bool:
    before = _entry(cursor, network)
    if before is None:
        return False
    userdb.remove_blacklist(cursor, network)
    oplog.record(cursor, now, call.actor, "blacklist.remove", network, before, None, call.client_ip)
    return True


async def _reload_blacklist(app: Any) -> None:
    """Make the running server's blacklist read the entries now (the change applies at once)."""
    auth = getattr(app.ctx.server, "auth", None)
    blacklist = getattr(getattr(auth, "authenticator", None), "blacklist", None)
    if blacklist is None:
        return
    try:
        await blacklist.reload()
    except Exception as e:  # noqa: BLE001 -- the change is made: it applies at the next refresh anyway
        log.warn("blacklist: could not reload after a change (applies within auth.blacklistRefresh): {error}",
                 error=str(e) or type(e).__name__)


@api("/api/blacklist", "GET", role="admin", tag="blacklist", summary="The blacklisted networks not expired",
     response={"type": "object", "required": ["items"],
               "properties": {"items": {"type": "array", "items": ENTRY_SCHEMA}}})
async def list_blacklist(app: Any, request: Any, call: Call) -> Any:
    entries = await app.ctx.db(userdb.list_blacklist, app.ctx.clock.seconds())
    return {"items": [entry_json(entry) for entry in entries]}


@api("/api/blacklist", "POST", role="admin", tag="blacklist", status=201,
     summary="Blacklist a network (an existing entry for it is replaced)",
     body={"type": "object", "required": ["network"], "additionalProperties": False,
           "properties": {"network": NETWORK, "reason": {"type": "string", "maxLength": 500},
                          "expires_at": {"type": "number", "maximum": _LATEST},
                          "expires_in": {"type": "number", "exclusiveMinimum": 0, "maximum": _LATEST}}},
     response=ENTRY_SCHEMA)
async def add_blacklist(app: Any, request: Any, call: Call) -> Any:
    body = call.body
    network = _network(body["network"], "field")
    now = app.ctx.clock.seconds()
    if "expires_at" in body and "expires_in" in body:
        raise ApiError(422, "field 'expires_in': give expires_at or expires_in, not both")
    expires = body.get("expires_at")
    if expires is not None and expires <= now:
        raise ApiError(422, "field 'expires_at': must be in the future (epoch seconds)")
    if "expires_in" in body:
        expires = now + body["expires_in"]
    entry = await app.ctx.write(_add, network, expires, body.get("reason", ""), now, call)
    await _reload_blacklist(app)
    return entry


@api("/api/blacklist", "DELETE", role="admin", tag="blacklist", summary="Remove a network's entry",
     query={"network": NETWORK},
     response={"type": "object", "required": ["removed"], "properties": {"removed": {"type": "string"}}})
async def remove_blacklist(app: Any, request: Any, call: Call) -> Any:
    if "network" not in call.query:
        raise ApiError(400, "query parameter 'network' is required")
    network = _network(call.query["network"], "query parameter")
    if not await app.ctx.write(_remove, network, app.ctx.clock.seconds(), call):
        raise ApiError(404, f"network {network} is not blacklisted")
    await _reload_blacklist(app)
    return {"removed": network}


# -- the system configuration -------------------------------------------------------


def _plain(value: Any) -> Any:
    """A setting's value as JSON (TOML dates as text, a float JSON cannot hold as text)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def plugin_settings(value: Any) -> Any:
    """
    A plugin's settings table, values of keys that look secret (password,
    secret, token, key, URL... as the plugin log lines leave out) redacted, at any depth.
    """
    if isinstance(value, dict):
        return {str(k): REDACTED if PLUGIN_SECRET_KEY.search(str(k)) and v not in ("", None)
                else plugin_settings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plugin_settings(v) for v in value]
    return _plain(value)


def _value(field: dataclasses.Field, value: Any) -> Any:
    if field.metadata.get("secret") and value:
        return REDACTED
    if field.metadata.get("tables"):
        return {str(name): plugin_settings(table) for name, table in value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _value(f, getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_value(field, item) if dataclasses.is_dataclass(item) else _plain(item) for item in value]
    return _plain(value)


def settings_json(config: Any, prefix: str = "") -> dict[str, Any]:
    """
    Every setting of C{config} by dotted name (C{smtp.maxMessageSize}):
    sections flattened, lists as lists, list entries (providers, backends,
    routes) and plugin tables as objects, secrets C{"[redacted]"} when set.
    """
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            flat.update(settings_json(value, f"{prefix}{field.name}."))
        else:
            flat[prefix + field.name] = _value(field, value)
    return flat


LIVE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["value", "default", "description", "schema", "stored"],
    "properties": {"value": {}, "default": {}, "description": {"type": "string"}, "schema": {"type": "object"},
                   "stored": {"type": "boolean"}},
}
CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["live", "settings"],
    "properties": {"live": {"type": "object", "additionalProperties": LIVE_SCHEMA},
                   "settings": {"type": "object"}},
}


def config_json(app: Any) -> dict[str, Any]:
    """What GET /api/config answers."""
    sysconfig = app.ctx.sysconfig
    live = {name: {"value": sysconfig.get(name), "default": sysconfig.default(name),
                   "description": key.description, "schema": key.schema, "stored": name in sysconfig.stored}
            for name, key in LIVE_KEYS.items()}
    return {"live": live, "settings": settings_json(app.ctx.sysconfig.config)}  # as last (re)loaded


@api("/api/config", "GET", role="admin", tag="config", response=CONFIG_SCHEMA,
     summary="The live keys (value, default, schema) and every setting of the configuration file")
async def get_config(app: Any, request: Any, call: Call) -> Any:
    return config_json(app)


@api("/api/config", "PUT", role="admin", tag="config", response=CONFIG_SCHEMA,
     summary="Change live keys, all or none: applied at once and kept over the file's values",
     body={"type": "object", "minProperties": 1,
           "properties": {name: key.schema for name, key in LIVE_KEYS.items()}})
async def put_config(app: Any, request: Any, call: Call) -> Any:
    unknown = [name for name in call.body if name not in LIVE_KEYS]
    if unknown:
        raise ApiError(422, f"field {unknown[0]!r}: cannot be changed live (the live keys: GET /api/config)")
    assert call.session is not None
    above = [name for name in call.body if rank(LIVE_KEYS[name].role) > rank(call.session.admin.role)]
    if above:
        raise ApiError(403, f"forbidden: {above[0]} needs the {LIVE_KEYS[above[0]].role} role")
    try:
        await app.ctx.sysconfig.change(call.body, call.actor, call.client_ip)
    except ConfigChangeError as e:
        raise ApiError(422, f"field {e.key!r}: {str(e).removeprefix(e.key + ': ')}") from None
    return config_json(app)
