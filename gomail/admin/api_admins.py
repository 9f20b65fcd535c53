# -*- test-case-name: tests.test_admin_admins -*-
"""
The admin API's routes for admin accounts (role superadmin) and for each
admin's own profile (any role): password and TOTP.

The store's rules (L{gomail.admin.store}) hold here as at the command line,
with the acting admin as C{actor}: nobody acts on a higher admin or raises a
role above their own (403), the last enabled superadmin stays (409). Every
change is one cursor function through C{ctx.db} that also writes its
operation-log entry, so a change is never recorded without happening or the
other way round. Changes of an admin's own credentials need their current
password (checked with bcrypt in the CPU pool, each try counted by the login
rate limit: a stolen session must not become a password oracle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyotp

from gomail.admin import oplog, store
from gomail.admin.api_usercreds import ENROLMENT_SCHEMA
from gomail.admin.api_users import OK_SCHEMA, hashed
from gomail.admin.login import ADMIN_TOTP_MARK
from gomail.admin.routing import ApiError, Call, api
from gomail.auth import passwords
from gomail.auth.names import canonical_username
from gomail.auth.totp import TOTP_DIGITS, accept_step, matching_step
from gomail.cli.user import TOTP_ISSUER
from gomail.qrimage import qr_svg
from gomail.state.interface import StateStoreError

ADMIN_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "role", "enabled", "totp_enabled", "created", "updated"],
    "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": list(store.ROLES)},
                   "enabled": {"type": "boolean"}, "totp_enabled": {"type": "boolean"},
                   "created": {"type": "number"}, "updated": {"type": "number"}},
}
NAME = {"type": "string", "minLength": 1, "maxLength": 254}
PASSWORD = {"type": "string", "minLength": 1, "maxLength": 1024}
ROLE = {"type": "string", "enum": list(store.ROLES)}
#: The issuer an admin's authenticator app shows (as C{gomail admin totp NAME enable}'s).
ADMIN_TOTP_ISSUER = f"{TOTP_ISSUER} admin"


# -- helpers ------------------------------------------------------------------------


def refusal(error: store.AdminError) -> ApiError:
    """The answer to a change the store refused: 404 nobody, 409 a conflict, 403 above one's role."""
    if isinstance(error, store.NoSuchAdmin):
        return ApiError(404, str(error))
    if isinstance(error, (store.AdminExists, store.LastSuperadmin)):
        return ApiError(409, str(error))
    if isinstance(error, store.RankViolation):
        return ApiError(403, str(error))
    return ApiError(422, str(error))


def _store(change: Callable[..., Any], cursor: Any, *args: Any) -> Any:
    """C{change(cursor, *args)}, the store's refusals turned into answers."""
    try:
        return change(cursor, *args)
    except store.AdminError as e:
        raise refusal(e) from None


def admin_name(raw: str) -> str:
    """An admin name from a path, canonical. @raise ApiError: 404, for a name no admin can have."""
    try:
        return canonical_username(raw)
    except ValueError:
        raise ApiError(404, "no such admin") from None


def existing_admin(cursor: Any, name: str) -> store.Admin:
    """The admin C{name}. @raise ApiError: 404, no such admin."""
    admin = store.get_admin(cursor, name)
    if admin is None:
        raise ApiError(404, f"no admin {name}")
    return admin


def _actor(call: Call) -> store.Admin:
    assert call.session is not None  # every route here needs a session
    return call.session.admin


def _log(cursor: Any, call: Call, now: float, action: str, target: str, before: store.Admin | None,
         after: store.Admin | None) -> None:
    oplog.record(cursor, now, call.actor, action, target, before and before.as_json(), after and after.as_json(),
                 call.client_ip)


def _checked_password(field: str, password: str) -> str:
    try:
        passwords.check_password(password)
    except ValueError as e:
        raise ApiError(422, f"field {field!r}: {e}") from None
    if len(password) < store.MIN_ADMIN_PASSWORD:
        raise ApiError(422, f"field {field!r}: an admin password has at least {store.MIN_ADMIN_PASSWORD} characters")
    return password


# -- admins (superadmin) ---------------------------------------------------------------

LIST_SCHEMA: dict[str, Any] = {"type": "object", "required": ["items"],
                               "properties": {"items": {"type": "array", "items": ADMIN_SCHEMA}}}


@api("/api/admins", "GET", role="superadmin", tag="admins", summary="Every admin", response=LIST_SCHEMA)
async def list_admins(app: Any, request: Any, call: Call) -> Any:
    admins = await app.ctx.db(store.list_admins)
    return {"items": [admin.as_json() for admin in admins]}


def _create(cursor: Any, call: Call, now: float, name: str, password_hash: bytes, role: str) -> dict[str, Any]:
    admin = _store(store.add_admin, cursor, name, password_hash, role, now, _actor(call))
    _log(cursor, call, now, "admin.create", admin.name, None, admin)
    return admin.as_json()


@api("/api/admins", "POST", role="superadmin", tag="admins", summary="Create an admin", status=201,
     body={"type": "object", "required": ["name", "password", "role"], "additionalProperties": False,
           "properties": {"name": NAME, "password": PASSWORD, "role": ROLE}},
     response=ADMIN_SCHEMA)
async def create_admin(app: Any, request: Any, call: Call) -> Any:
    body = call.body
    try:
        name = canonical_username(body["name"])
    except ValueError as e:
        raise ApiError(422, f"field 'name': {e}") from None
    password = _checked_password("password", body["password"])
    # Refuse a taken name before spending a bcrypt hash on it (the insert checks again).
    if await app.ctx.db(store.get_admin, name) is not None:
        raise ApiError(409, f"admin {name} already exists")
    password_hash = await hashed(app, password)
    return await app.ctx.db(_create, call, app.ctx.clock.seconds(), name, password_hash, body["role"])


@api("/api/admins/<name>", "GET", role="superadmin", tag="admins", summary="One admin", response=ADMIN_SCHEMA)
async def show_admin(app: Any, request: Any, call: Call, name: str) -> Any:
    admin = await app.ctx.db(existing_admin, admin_name(name))
    return admin.as_json()


def _update(cursor: Any, call: Call, now: float, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    admin = existing_admin(cursor, name)
    # Only what differs is changed (and logged): each change ends the admin's sessions.
    if "role" in changes and changes["role"] != admin.role:
        after = _store(store.set_role, cursor, name, changes["role"], now, _actor(call))
        _log(cursor, call, now, "admin.role", name, admin, after)
        admin = after
    if "enabled" in changes and changes["enabled"] != admin.enabled:
        _store(store.set_enabled, cursor, name, changes["enabled"], now, _actor(call))
        after = existing_admin(cursor, name)
        _log(cursor, call, now, "admin.enable" if changes["enabled"] else "admin.disable", name, admin, after)
        admin = after
    return admin.as_json()


@api("/api/admins/<name>", "PATCH", role="superadmin", tag="admins", response=ADMIN_SCHEMA,
     summary="Change an admin's role or enabled state (ends their sessions; 409 for the last superadmin)",
     body={"type": "object", "additionalProperties": False,
           "properties": {"role": ROLE, "enabled": {"type": "boolean"}}})
async def update_admin(app: Any, request: Any, call: Call, name: str) -> Any:
    return await app.ctx.db(_update, call, app.ctx.clock.seconds(), admin_name(name), dict(call.body))


def _delete(cursor: Any, call: Call, now: float, name: str) -> dict[str, Any]:
    before = existing_admin(cursor, name)
    _store(store.delete_admin, cursor, name, _actor(call))
    _log(cursor, call, now, "admin.delete", name, before, None)
    return {"deleted": name}


@api("/api/admins/<name>", "DELETE", role="superadmin", tag="admins",
     summary="Delete an admin (409 for the last superadmin)",
     response={"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "string"}}})
async def delete_admin(app: Any, request: Any, call: Call, name: str) -> Any:
    return await app.ctx.db(_delete, call, app.ctx.clock.seconds(), admin_name(name))


def _set_password(cursor: Any, call: Call, now: float, name: str, password_hash: bytes, action: str) -> None:
    before = existing_admin(cursor, name)
    _store(store.set_password, cursor, name, password_hash, now, _actor(call))
    _log(cursor, call, now, action, name, before, existing_admin(cursor, name))


@api("/api/admins/<name>/password", "PUT", role="superadmin", tag="admins", response=OK_SCHEMA,
     summary="Set an admin's password (ends their sessions)",
     body={"type": "object", "required": ["password"], "additionalProperties": False,
           "properties": {"password": PASSWORD}})
async def set_admin_password(app: Any, request: Any, call: Call, name: str) -> Any:
    _not_yourself(call, name, "password")
    name = admin_name(name)
    password = _checked_password("password", call.body["password"])
    await app.ctx.db(existing_admin, name)  # 404 before spending a bcrypt hash
    password_hash = await hashed(app, password)
    await app.ctx.db(_set_password, call, app.ctx.clock.seconds(), name, password_hash, "admin.password")
    return {"ok": True}


def _remove_totp(cursor: Any, call: Call, now: float, name: str, action: str,
                 remove: Callable[..., None]) -> dict[str, Any]:
    """Forget C{name}'s TOTP secret (required or pending) with C{remove}, a store function; logged as C{action}."""
    before = existing_admin(cursor, name)
    if not before.totp_enabled and store.totp_secret(cursor, name) is None:
        return before.as_json()  # nothing to remove, nothing to log
    _store(remove, cursor, name, None, now, _actor(call))
    after = existing_admin(cursor, name)
    _log(cursor, call, now, action, name, before, after)
    return after.as_json()


@api("/api/admins/<name>/totp", "DELETE", role="superadmin", tag="admins", response=ADMIN_SCHEMA,
     summary="Stop requiring TOTP codes of an admin and forget the secret (ends their sessions)")
async def remove_admin_totp(app: Any, request: Any, call: Call, name: str) -> Any:
    # Another admin takes the second factor away: a credential change (set_totp), the admin logs in again.
    _not_yourself(call, name, "TOTP")
    return await app.ctx.db(_remove_totp, call, app.ctx.clock.seconds(), admin_name(name), "admin.totp.remove",
                            store.set_totp)


# -- your own profile (any role) --------------------------------------------------------

CURRENT_PASSWORD: dict[str, Any] = {"type": "object", "required": ["current_password"], "additionalProperties": False,
                                    "properties": {"current_password": PASSWORD}}


async def _current_password(app: Any, request: Any, call: Call, password: str) -> str:
    """The acting admin's name once C{password} is theirs. @raise ApiError: 403 wrong, 429 too many tries."""
    wait = app.ctx.rate_limit.allow(call.client_ip)
    if wait:
        request.setHeader(b"Retry-After", str(int(wait + 0.999)).encode())
        raise ApiError(429, "too many password attempts: try again later")
    name = _actor(call).name
    password_hash = await app.ctx.db(store.password_hash, name)
    if password_hash is None or not await app.ctx.server.auth.cpu.run(passwords.verify_password, password,
                                                                      password_hash):
        raise ApiError(403, "current password is wrong")
    return name


@api("/api/profile", "GET", role="auditor", tag="profile", summary="Your own admin account", response=ADMIN_SCHEMA)
async def show_profile(app: Any, request: Any, call: Call) -> Any:
    admin = await app.ctx.db(existing_admin, _actor(call).name)
    return admin.as_json()


@api("/api/profile/password", "PUT", role="auditor", tag="profile", response=OK_SCHEMA,
     summary="Change your password (every session of yours ends: log in again)",
     body={"type": "object", "required": ["current_password", "new_password"], "additionalProperties": False,
           "properties": {"current_password": PASSWORD, "new_password": PASSWORD}})
async def change_own_password(app: Any, request: Any, call: Call) -> Any:
    new = _checked_password("new_password", call.body["new_password"])
    name = await _current_password(app, request, call, call.body["current_password"])
    password_hash = await hashed(app, new)
    await app.ctx.db(_set_password, call, app.ctx.clock.seconds(), name, password_hash, "profile.password")
    return {"ok": True}


def _enrol(cursor: Any, call: Call, now: float, name: str, secret: str) -> None:
    before = existing_admin(cursor, name)
    if before.totp_enabled:
        # A pending secret replaces the working one: refused, it would lock the admin out until confirmed.
        raise ApiError(409, "TOTP is already enabled: remove it first to enrol a new device")
    _store(store.set_totp_secret, cursor, name, secret, now, _actor(call))
    _log(cursor, call, now, "profile.totp.enrol", name, before, existing_admin(cursor, name))


@api("/api/profile/totp", "POST", role="auditor", tag="profile", body=CURRENT_PASSWORD, response=ENROLMENT_SCHEMA,
     summary="Start a TOTP enrolment: a new secret (shown once), pending until a code is confirmed")
async def enrol_own_totp(app: Any, request: Any, call: Call) -> Any:
    name = await _current_password(app, request, call, call.body["current_password"])
    secret = passwords.new_totp_secret()
    await app.ctx.db(_enrol, call, app.ctx.clock.seconds(), name, secret)
    uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ADMIN_TOTP_ISSUER)
    svg = await app.ctx.server.auth.cpu.run(qr_svg, uri)  # some milliseconds of CPU: not on the reactor
    return {"uri": uri, "qr_svg": svg, "secret": secret}


def _confirm(cursor: Any, call: Call, now: float, name: str, code: str) -> tuple[dict[str, Any], int]:
    before = existing_admin(cursor, name)
    if before.totp_enabled:
        raise ApiError(409, "TOTP is already enabled")
    secret = store.totp_secret(cursor, name)
    if secret is None:
        raise ApiError(409, "no TOTP enrolment is pending: enrol first")
    # Checked here, in the transaction, so the code is one of the secret being enabled.
    step = matching_step(secret, code, now) if len(code) == TOTP_DIGITS else None
    if step is None:
        raise ApiError(422, "field 'code': wrong code")
    _store(store.set_totp, cursor, name, secret, now, _actor(call))  # ends the sessions
    after = existing_admin(cursor, name)
    _log(cursor, call, now, "profile.totp.confirm", name, before, after)
    return after.as_json(), step


@api("/api/profile/totp/confirm", "POST", role="auditor", tag="profile", response=ADMIN_SCHEMA,
     summary="Confirm your pending TOTP enrolment with a current code (sessions end: log in again with a code)",
     body={"type": "object", "required": ["code"], "additionalProperties": False,
           "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 16}}})
async def confirm_own_totp(app: Any, request: Any, call: Call) -> Any:
    code = call.body["code"].strip()
    if not (code.isascii() and code.isdigit()):  # compare_digest takes ASCII only
        raise ApiError(422, "field 'code': wrong code")
    name = _actor(call).name
    admin, step = await app.ctx.db(_confirm, call, app.ctx.clock.seconds(), name, code)
    try:
        # The code has been seen: it must not log in as well (the login's own mark).
        await accept_step(app.ctx.server.auth.state, name, step, kind=ADMIN_TOTP_MARK)
    except StateStoreError:
        pass  # the code expires within a minute anyway; the enrolment is done
    return admin


@api("/api/profile/totp", "DELETE", role="auditor", tag="profile", body=CURRENT_PASSWORD, response=ADMIN_SCHEMA,
     summary="Stop requiring your TOTP codes and forget the secret (or a pending enrolment)")
async def remove_own_totp(app: Any, request: Any, call: Call) -> Any:
    name = await _current_password(app, request, call, call.body["current_password"])
    # Losing a working second factor is a credential change: every session ends (set_totp);
    # dropping a pending enrolment changes nothing that logs in (set_totp_secret).
    return await app.ctx.db(_remove_totp, call, app.ctx.clock.seconds(), name, "profile.totp.remove",
                            _drop_own_totp)


def _drop_own_totp(cursor: Any, name: str, secret: None, now: float, actor: Any) -> None:
    admin = existing_admin(cursor, name)
    (store.set_totp if admin.totp_enabled else store.set_totp_secret)(cursor, name, None, now, actor)


def _not_yourself(call: Call, name: str, what: str) -> None:
    """A superadmin changes their own credentials through /api/profile, which asks for the current password."""
    if call.session is not None and admin_name(name) == call.session.admin.name:
        raise ApiError(403, f"change your own {what} through /api/profile (it asks for your current password)")


__all__ = ["ADMIN_SCHEMA", "admin_name", "existing_admin", "refusal"]


@api("/api/admins/<name>/unlock", "POST", role="superadmin", tag="admins", response=OK_SCHEMA,
     summary="Lift the login lock and failure count of an admin name (LOCK_ERRORS)")
async def unlock_admin(app: Any, request: Any, call: Call, name: str) -> Any:
    name = admin_name(name)
    await app.ctx.db(existing_admin, name)  # 404 for nobody
    try:
        await app.ctx.login.unlock(name=name)
    except StateStoreError:
        raise ApiError(503, "the state store does not answer: try again later") from None
    await app.ctx.db(oplog.record, app.ctx.clock.seconds(), call.actor, "admin.unlock", name, None, None,
                     call.client_ip)
    return {"ok": True}
