# -*- test-case-name: tests.test_admin_logs -*-
"""
The admin API's log routes (role auditor): the login audit log
(C{GET /api/logs/auth}, table C{auth_log}, L{gomail.auth.authlog}) and the
operation log (C{GET /api/logs/operations}, table C{op_log},
L{gomail.admin.oplog}).

Both filter by exact values and a time range (C{since} <= time < C{until}),
answer newest first, one page at a time with the total, or as CSV
(C{format=csv}): every matching entry, newest first, at most
L{CSV_MAX_ROWS} (the C{X-Total-Count} header says how many matched). CSV
cells that a spreadsheet would take for a formula are quoted (L{csv_cell}):
the logs hold what clients sent.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from gomail.admin.routing import PAGE_QUERY, ApiError, Call, api
from gomail.netaddr import ip_text

#: The most entries one CSV export holds (the newest of them).
CSV_MAX_ROWS = 100_000
#: Entries read and written per database interaction of an export.
CSV_CHUNK = 2_000
#: Counts stop here ("total" is then MAX_COUNT + 1: more than this many; "total_capped" says so).
MAX_COUNT = 10_000
#: The first characters that make a spreadsheet cell a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Log:
    """One log table: its columns (as the JSON and CSV name them) and those holding JSON text."""

    table: str
    columns: tuple[str, ...]
    json_columns: tuple[str, ...] = ()
    filename: str = "log.csv"


AUTH_LOG = Log("auth_log", ("time", "user", "protocol", "client_ip", "result", "reason", "latency_ms", "backend"),
               filename="auth-log.csv")
OP_LOG = Log("op_log", ("time", "actor", "action", "target", "before", "after", "client_ip"), ("before", "after"),
             filename="operations-log.csv")


def csv_cell(value: Any) -> Any:
    """C{value} for a CSV cell: text a spreadsheet would run as a formula gets a leading C{'}."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _decoded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text  # written by something else than oplog.record: shown as it is


def _where(filters: dict[str, Any], since: float | None, until: float | None) -> tuple[str, tuple]:
    conditions = [f"{column} = ?" for column in filters]
    args: list[Any] = list(filters.values())
    if since is not None:
        conditions.append("time >= ?")
        args.append(since)
    if until is not None:
        conditions.append("time < ?")
        args.append(until)
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), tuple(args)


def _select(log: Log, where: str) -> str:
    # time and id order the same way (entries are written in time order); id breaks ties, so pages never overlap.
    return f"SELECT {', '.join(log.columns)} FROM {log.table} {where} ORDER BY time DESC, id DESC LIMIT ? OFFSET ?"


def _count(cursor: Any, log: Log, where: str, args: tuple) -> int:
    """The matching entries, counted up to L{MAX_COUNT} + 1: a count of millions would hold the database thread."""
    cursor.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM {log.table} {where} LIMIT ?)", (*args, MAX_COUNT + 1))
    return int(cursor.fetchone()[0])


def _page(cursor: Any, log: Log, where: str, args: tuple, limit: int, offset: int) -> tuple[int, list]:
    total = _count(cursor, log, where, args)
    if offset >= total:  # a page past the end (and an offset past int64 never reaches SQLite)
        return total, []
    cursor.execute(_select(log, where), (*args, limit, offset))
    items = []
    for row in cursor.fetchall():
        item = dict(zip(log.columns, row, strict=True))
        for column in log.json_columns:
            item[column] = _decoded(item[column])
        items.append(item)
    return total, items


def _csv_chunk(cursor: Any, log: Log, where: str, args: tuple, after: tuple[float, int] | None,
               header: bool, limit: int = 0) -> tuple[bytes, tuple[float, int] | None, int]:
    """
    The next L{CSV_CHUNK} entries older than C{after} (time, id) as CSV, the
    position of the last, and how many: an export is many short
    interactions, so logins waiting for the database thread are not held up.
    """
    keyset = "(time < ? OR (time = ? AND id < ?))"
    condition = f"{where} AND {keyset}" if where and after else (f"WHERE {keyset}" if after else where)
    values = (*args, after[0], after[0], after[1]) if after else args
    cursor.execute(f"SELECT {', '.join(log.columns)}, id FROM {log.table} {condition} "
                   "ORDER BY time DESC, id DESC LIMIT ?", (*values, limit or CSV_CHUNK))
    rows = cursor.fetchall()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(log.columns)
    writer.writerows([csv_cell(value) for value in row[:-1]] for row in rows)
    last = (rows[-1][0], rows[-1][-1]) if rows else None
    return out.getvalue().encode("utf-8"), last, len(rows)


async def _answer(app: Any, request: Any, call: Call, log: Log, filters: dict[str, Any]) -> Any:
    query = call.query
    where, args = _where(filters, query.get("since"), query.get("until"))
    if query["format"] == "csv":
        total = await app.ctx.db(_count, log, where, args)
        parts: list[bytes] = []
        after, written = None, 0
        while written < CSV_MAX_ROWS:
            limit = min(CSV_CHUNK, CSV_MAX_ROWS - written)
            chunk, after, count = await app.ctx.db(_csv_chunk, log, where, args, after, not parts, limit)
            parts.append(chunk)
            written += count
            if count < limit:
                break
        body = b"".join(parts)
        request.setHeader(b"Content-Type", b"text/csv; charset=utf-8")
        request.setHeader(b"Content-Disposition", f'attachment; filename="{log.filename}"'.encode())
        request.setHeader(b"X-Total-Count", str(total).encode())
        return body
    page, per_page = query["page"], query["per_page"]
    if (page - 1) * per_page > MAX_COUNT:
        raise ApiError(400, f"query parameter 'page': beyond the first {MAX_COUNT} entries; narrow with since/until")
    total, items = await app.ctx.db(_page, log, where, args, per_page, (page - 1) * per_page)
    return {"items": items, "total": total, "total_capped": total > MAX_COUNT, "page": page, "per_page": per_page}


def _listing(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "total", "page", "per_page"],
            "properties": {"items": {"type": "array", "items": item}, "total": {"type": "integer"},
                           "total_capped": {"type": "boolean"},
                           "page": {"type": "integer"}, "per_page": {"type": "integer"}}}


TEXT = {"type": "string", "maxLength": 254}
TIME_QUERY: dict[str, dict[str, Any]] = {"since": {"type": "number"}, "until": {"type": "number"}}
FORMAT_QUERY: dict[str, dict[str, Any]] = {"format": {"type": "string", "enum": ["json", "csv"], "default": "json"}}
CSV_CONTENT: dict[str, dict[str, Any]] = {"text/csv": {"type": "string"}}
RESULTS = ["success", "failure", "tempfail", "refused"]
AUTH_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": list(AUTH_LOG.columns),
    "properties": {"time": {"type": "number"}, "user": {"type": "string"}, "protocol": {"type": "string"},
                   "client_ip": {"type": "string"}, "result": {"type": "string"}, "reason": {"type": "string"},
                   "latency_ms": {"type": "number"}, "backend": {"type": ["string", "null"]}},
}
OP_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": list(OP_LOG.columns),
    "properties": {"time": {"type": "number"}, "actor": {"type": "string"}, "action": {"type": "string"},
                   "target": {"type": "string"}, "before": {}, "after": {}, "client_ip": {"type": "string"}},
}


@api("/api/logs/auth", "GET", role="auditor", tag="logs", response=_listing(AUTH_ENTRY_SCHEMA),
     other_content=CSV_CONTENT,
     summary="The login audit log, newest first: filter by user, ip, protocol, result, time; JSON pages or CSV",
     query={"user": TEXT, "ip": {"type": "string", "maxLength": 64}, "protocol": {"type": "string", "maxLength": 32},
            "result": {"type": "string", "enum": RESULTS}, **TIME_QUERY, **PAGE_QUERY, **FORMAT_QUERY})
async def auth_log(app: Any, request: Any, call: Call) -> Any:
    query = call.query
    filters = {column: query[name] for name, column in (("user", "user"), ("protocol", "protocol"),
                                                           ("result", "result")) if name in query}
    if "ip" in query:
        # Stored in canonical form (gomail.netaddr.ip_text): 2001:DB8::0001 finds 2001:db8::1.
        address = ip_text(query["ip"].strip())
        if address is None:
            raise ApiError(422, "query parameter 'ip': not an IP address")
        filters["client_ip"] = address
    return await _answer(app, request, call, AUTH_LOG, filters)


@api("/api/logs/operations", "GET", role="auditor", tag="logs", response=_listing(OP_ENTRY_SCHEMA),
     other_content=CSV_CONTENT,
     summary="The operation log (changes through the API and the command line), newest first; JSON pages or CSV",
     query={"actor": TEXT, "action": {"type": "string", "maxLength": 64}, "target": {"type": "string",
                                                                                      "maxLength": 1024},
            **TIME_QUERY, **PAGE_QUERY, **FORMAT_QUERY})
async def operations_log(app: Any, request: Any, call: Call) -> Any:
    query = call.query
    filters: dict[str, Any] = {name: query[name] for name in ("actor", "action", "target") if name in query}
    return await _answer(app, request, call, OP_LOG, filters)


__all__ = ["AUTH_LOG", "CSV_MAX_ROWS", "OP_LOG", "auth_log", "csv_cell", "operations_log"]
