# -*- test-case-name: tests.test_admin_users -*-
"""
The admin API's routes for a user's second factors and lockouts (role
admin): TOTP enrolment (a new secret stays pending, not required at login,
until a code from it is confirmed), app passwords (the clear password is
answered once; only its digest is stored), and unlocking after failed logins.

Changes are logged in the same transaction as they are made (see
L{gomail.admin.api_users}); secrets never reach the log.
"""

from __future__ import annotations

from typing import Any

import pyotp

from gomail.admin import oplog
from gomail.admin.api_users import (
    APP_PASSWORD_SCHEMA,
    OK_SCHEMA,
    USER_SCHEMA,
    existing_user,
    logged,
    user_name,
)
from gomail.admin.routing import ApiError, Call, api
from gomail.auth import passwords, userdb
from gomail.auth.lockout import unlock_keys
from gomail.auth.totp import TOTP_DIGITS, accept_step, matching_step
from gomail.cli.user import TOTP_ISSUER
from gomail.netaddr import ip_text
from gomail.qrimage import qr_svg
from gomail.state.interface import StateStoreError

# -- TOTP -------------------------------------------------------------------------

ENROLMENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["uri", "qr_svg", "secret"],
    "properties": {"uri": {"type": "string"}, "qr_svg": {"type": "string"}, "secret": {"type": "string"}},
}


def _enrol(cursor: Any, call: Call, now: float, name: str, secret: str) -> None:
    user = userdb.get_user(cursor, name)
    if user is not None and user.totp_enabled:
        # Replacing a working secret would lock the user out until the new one is confirmed.
        raise ApiError(409, f"TOTP is already enabled for {name}: remove it first to enrol a new device")
    logged(cursor, call, now, "user.totp.enrol", name, userdb.set_totp, secret, False, now)


@api("/api/users/<name>/totp", "POST", role="admin", tag="users", response=ENROLMENT_SCHEMA,
     summary="Give a user a new TOTP secret, pending until a code is confirmed (the secret is shown once)")
async def enrol_totp(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    secret = passwords.new_totp_secret()
    await app.ctx.write(_enrol, call, app.ctx.clock.seconds(), name, secret)
    uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=TOTP_ISSUER)
    svg = await app.ctx.server.auth.cpu.run(qr_svg, uri)  # some milliseconds of CPU: not on the reactor
    return {"uri": uri, "qr_svg": svg, "secret": secret}


def _confirm(cursor: Any, call: Call, now: float, name: str, code: str) -> tuple[dict[str, Any], int]:
    user = userdb.get_user(cursor, name)
    if user is None:
        raise ApiError(404, f"no user {name}")
    if user.totp_enabled:
        raise ApiError(409, f"TOTP is already enabled for {name}")
    if not user.totp_secret:
        raise ApiError(409, f"no TOTP enrolment is pending for {name}: enrol first")
    # Checked here, in the transaction, so the code is one of the secret being enabled.
    step = matching_step(user.totp_secret, code, now) if len(code) == TOTP_DIGITS else None
    if step is None:
        raise ApiError(422, "field 'code': wrong code")
    after = logged(cursor, call, now, "user.totp.confirm", name, userdb.set_totp, user.totp_secret, True, now)
    return after, step


@api("/api/users/<name>/totp/confirm", "POST", role="admin", tag="users", response=USER_SCHEMA,
     summary="Confirm a pending TOTP enrolment with a current code: TOTP is then required",
     body={"type": "object", "required": ["code"], "additionalProperties": False,
           "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 16}}})
async def confirm_totp(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    code = call.body["code"].strip()
    if not (code.isascii() and code.isdigit()):  # compare_digest takes ASCII only
        raise ApiError(422, "field 'code': wrong code")
    user, step = await app.ctx.write(_confirm, call, app.ctx.clock.seconds(), name, code)
    try:
        # The code has been seen: it must not log the user in as well.
        await accept_step(app.ctx.server.auth.state, name, step)
    except StateStoreError:
        pass  # the code expires within a minute anyway; the enrolment is done
    return user


def _remove(cursor: Any, call: Call, now: float, name: str) -> dict[str, Any]:
    user = existing_user(cursor, name)
    if not (user["totp_enabled"] or user["totp_pending"]):
        return user  # nothing to remove, nothing to log
    return logged(cursor, call, now, "user.totp.remove", name, userdb.set_totp, None, False, now)


@api("/api/users/<name>/totp", "DELETE", role="admin", tag="users", response=USER_SCHEMA,
     summary="Stop requiring TOTP codes from a user and forget the secret (or a pending enrolment)")
async def remove_totp(app: Any, request: Any, call: Call, name: str) -> Any:
    return await app.ctx.write(_remove, call, app.ctx.clock.seconds(), user_name(name))


# -- app passwords ------------------------------------------------------------------


@api("/api/users/<name>/app-passwords", "GET", role="admin", tag="users", summary="A user's app passwords",
     response={"type": "object", "required": ["items"],
               "properties": {"items": {"type": "array", "items": APP_PASSWORD_SCHEMA}}})
async def list_app_passwords(app: Any, request: Any, call: Call, name: str) -> Any:
    user = await app.ctx.db(existing_user, user_name(name))
    return {"items": user["app_passwords"]}


def _add_app_password(cursor: Any, call: Call, now: float, name: str, label: str, digest: str) -> None:
    try:
        logged(cursor, call, now, "user.app-password.add", name, userdb.add_app_password, label, digest, now)
    except userdb.AppPasswordExists:
        raise ApiError(409, f"user {name} already has an app password labelled {label!r}") from None
    except ValueError as e:  # the digest is ours: only the label can be wrong
        raise ApiError(422, f"field 'label': {e}") from None


@api("/api/users/<name>/app-passwords", "POST", role="admin", tag="users", status=201,
     summary="Generate an app password (the password is shown once)",
     body={"type": "object", "required": ["label"], "additionalProperties": False,
           "properties": {"label": {"type": "string", "minLength": 1, "maxLength": userdb.MAX_LABEL_LENGTH}}},
     response={"type": "object", "required": ["label", "password"],
               "properties": {"label": {"type": "string"}, "password": {"type": "string"}}})
async def add_app_password(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    label = call.body["label"].strip()
    password = passwords.new_app_password()
    await app.ctx.write(_add_app_password, call, app.ctx.clock.seconds(), name, label,
                        passwords.app_password_digest(password))
    return {"label": label, "password": password}


def _revoke(cursor: Any, call: Call, now: float, name: str, label: str) -> None:
    try:
        logged(cursor, call, now, "user.app-password.revoke", name, userdb.revoke_app_password, label, now)
    except userdb.NoSuchAppPassword:
        raise ApiError(404, f"user {name} has no app password labelled {label!r}") from None


@api("/api/users/<name>/app-passwords/<path:label>", "DELETE", role="admin", tag="users",
     summary="Revoke an app password",
     response={"type": "object", "required": ["revoked"], "properties": {"revoked": {"type": "string"}}})
async def revoke_app_password(app: Any, request: Any, call: Call, name: str, label: str) -> Any:
    # <path:...>: twisted.web decodes %2F before routing, so a label with a "/" spans segments.
    name, label = user_name(name), label.strip()
    await app.ctx.write(_revoke, call, app.ctx.clock.seconds(), name, label)
    return {"revoked": label}


# -- lockouts ---------------------------------------------------------------------


@api("/api/users/<name>/unlock", "POST", role="admin", tag="users", response=OK_SCHEMA,
     summary="Lift a user's login slowdown, and its lockout on the client IP given",
     body={"type": "object", "additionalProperties": False,
           "properties": {"ip": {"type": "string", "minLength": 1, "maxLength": 64}}})
async def unlock_user(app: Any, request: Any, call: Call, name: str) -> Any:
    name = user_name(name)
    address = None
    if "ip" in call.body:
        address = ip_text(call.body["ip"].strip())
        if address is None:
            raise ApiError(422, "field 'ip': not an IP address")
    await app.ctx.db(existing_user, name)
    # The state store can only delete keys it is told: without an IP, the
    # user's (user, IP) locks cannot be found (unlock_keys' patterns) and end
    # by themselves after auth.lockTTL; the slowdown across IPs is lifted.
    keys, _patterns = unlock_keys(name, address)
    try:
        await app.ctx.server.auth.state.delete(*keys)
    except StateStoreError:
        raise ApiError(503, "the state store is unavailable: try again later") from None
    await app.ctx.db(oplog.record, app.ctx.clock.seconds(), call.actor, "user.unlock", name, None, {"ip": address},
                     call.client_ip)
    return {"ok": True}


__all__ = ["qr_svg"]
