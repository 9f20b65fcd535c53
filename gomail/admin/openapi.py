# -*- test-case-name: tests.test_admin_api -*-
"""The OpenAPI 3.1 document of the admin API, made from the routes' declarations (L{gomail.admin.routing})."""

from __future__ import annotations

import re
from typing import Any

import gomail
from gomail.admin.routing import ERROR_CODES, ERROR_SCHEMA, ROUTES, RouteSpec

_PARAMETER = re.compile(r"<(?:(\w+):)?(\w+)>")
_REASONS = {400: "malformed request", 401: "no session", 403: "forbidden (role, CSRF, peer)", 404: "not found",
            409: "conflict", 413: "body too large", 415: "unsupported media type", 422: "invalid field",
            429: "too many requests", 503: "temporarily unavailable"}


def _path(spec: RouteSpec) -> str:
    return _PARAMETER.sub(lambda m: "{" + m.group(2) + "}", spec.path)


def _operation(spec: RouteSpec) -> dict[str, Any]:
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    responses: dict[str, Any] = {
        str(spec.status): {"description": "success", "content": {spec.content_type: {"schema": spec.response}}},
    }
    responses[str(spec.status)]["content"].update(
        {media: {"schema": schema} for media, schema in spec.other_content.items()})
    for code in ERROR_CODES:
        responses.setdefault(str(code), {**error, "description": _REASONS[code]})
    parameters: list[dict[str, Any]] = [
        {"name": m.group(2), "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for m in _PARAMETER.finditer(spec.path)
    ]
    parameters += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in spec.query.items()]
    operation: dict[str, Any] = {
        "operationId": f"{spec.method.lower()}{_path(spec)}".replace("/", "_").replace("{", "").replace("}", "")
        .replace("-", "_").replace(".", "_"),
        "summary": spec.summary,
        "tags": [spec.tag] if spec.tag else [],
        "parameters": parameters,
        "responses": responses,
        "security": [] if spec.role is None else [{"bearer": []}, {"cookie": []}],
        "x-gomail-role": spec.role,
    }
    if spec.body is not None:
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": spec.body}}}
    return operation


def openapi_document() -> dict[str, Any]:
    """The document: every route of L{ROUTES}."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in ROUTES:
        paths.setdefault(_path(spec), {})[spec.method.lower()] = _operation(spec)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gomail admin API", "version": gomail.__version__,
                 "description": "Roles: superadmin > admin > auditor; each operation's x-gomail-role is the "
                                "lowest allowed. Cookie sessions send X-CSRF-Token with every state-changing "
                                "request."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "gomail_session"},
            },
        },
    }
