# -*- test-case-name: tests.test_admin_system -*-
"""
The admin API's queue routes: list and show messages (role auditor), retry,
flush and delete them (role admin): what C{gomail queue} does, on the
running server's own queue (L{gomail.control.server.QueueControl}).

Reading works on the spool's files in the spool's I/O pool, never on the
reactor, and in bounded work per request: the directory names are listed and
sorted (ids sort by arrival), then only the page's envelopes are read. A
message that leaves the spool while it is read (delivered meanwhile) is left
out of the page. Every change writes an operation-log entry once made (the
queue is not in the database, so not in the change's transaction).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from gomail.admin import oplog
from gomail.admin.routing import ApiError, Call, api
from gomail.control.commands import UnknownMessages, valid_id
from gomail.spool.envelope import Envelope, EnvelopeError
from gomail.spool.fs import read_queued

QUEUED, FAILED = "queued", "failed"
#: Where each state's entries are in the spool.
_DIRECTORY = {QUEUED: "queue", FAILED: "failed"}

RECIPIENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["address", "status", "reply"],
    "properties": {"address": {"type": "string"}, "status": {"type": "string"},
                   "reply": {"type": ["string", "null"]}},
}
ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "state", "sender", "recipients", "recipient_status", "size", "attempts", "next_attempt",
                 "last_error", "queued_at"],
    "properties": {
        "id": {"type": "string"}, "state": {"type": "string", "enum": [QUEUED, FAILED]},
        "sender": {"type": "string"}, "recipients": {"type": "array", "items": {"type": "string"}},
        # each recipient's delivery: pending, delivered or failed, and the last reply
        "recipient_status": {"type": "array", "items": RECIPIENT_SCHEMA},
        "size": {"type": "integer"}, "attempts": {"type": "integer"},
        "next_attempt": {"type": ["number", "null"]}, "last_error": {"type": ["string", "null"]},
        "queued_at": {"type": ["number", "null"]},
        # failed messages only: why, and when, they were given up on
        "reason": {"type": ["string", "null"]}, "failed_at": {"type": ["number", "null"]},
        # an entry that cannot be read: why (the other fields are then empty)
        "error": {"type": "string"},
    },
}
LIST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["items", "total", "queued", "failed", "page", "per_page"],
    "properties": {"items": {"type": "array", "items": ITEM_SCHEMA}, "total": {"type": "integer"},
                   "queued": {"type": "integer"}, "failed": {"type": "integer"}, "page": {"type": "integer"},
                   "per_page": {"type": "integer"}},
}
COUNT = {"type": "integer"}
PROBLEMS = {"type": "array", "items": {"type": "string"}}

# -- reading (blocking: run in the spool's I/O pool) ------------------------------------


def _ids(directory: str) -> list[str]:
    """The ids of the entries in C{directory}, oldest first (names only: no file is read)."""
    return sorted(name[:-5] for name in os.listdir(directory) if name.endswith(".json") and valid_id(name[:-5]))


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _unreadable(queue_id: str, state: str, error: str) -> dict[str, Any]:
    return {"id": queue_id, "state": state, "sender": "", "recipients": [], "recipient_status": [], "size": 0,
            "attempts": 0,
            "next_attempt": None, "last_error": None, "queued_at": None, "error": error}


def _envelope_item(envelope: Envelope, state: str) -> dict[str, Any]:
    return {"id": envelope.id, "state": state, "sender": str(envelope.sender),
            "recipients": [str(r.address) for r in envelope.recipients],
            "recipient_status": [{"address": str(r.address), "status": str(r.status),
                                  "reply": r.reply if isinstance(r.reply, str) else None}
                                 for r in envelope.recipients],
            "size": envelope.size if isinstance(envelope.size, int) else 0,
            "attempts": envelope.attempts if isinstance(envelope.attempts, int) else 0,
            "next_attempt": _number(envelope.next_attempt),
            "last_error": envelope.last_error if isinstance(envelope.last_error, str) else None,
            "queued_at": _number(envelope.received)}


def _item(spool_path: Any, queue_id: str, state: str) -> dict[str, Any]:
    """
    One entry as the API shows it.
    @raise FileNotFoundError: when it left the spool meanwhile.
    """
    raw = read_queued(spool_path(_DIRECTORY[state], queue_id + ".json"))
    try:
        if state == QUEUED:
            return _envelope_item(Envelope.from_json(raw), state)
        # A failed record: the envelope's fields, why and when it failed, and the content (left out).
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise EnvelopeError("unreadable failed record: not a JSON object")
        reason, failed_at = record.get("reason"), record.get("failed_at")
        fields = {k: v for k, v in record.items() if k not in ("content", "content_encoding", "reason", "failed_at")}
        item = _envelope_item(Envelope.from_json(json.dumps(fields).encode()), state)
    except (ValueError, TypeError) as e:  # EnvelopeError is a ValueError
        return _unreadable(queue_id, state, str(e) or type(e).__name__)
    item.update(reason=reason if isinstance(reason, str) else None, failed_at=_number(failed_at))
    return item


def list_page(spool_path: Any, state: str, offset: int, limit: int) -> dict[str, Any]:
    """(blocking) One page of the entries in C{state} (C{all}: queued, then failed), and the counts."""
    ids = {QUEUED: _ids(spool_path("queue")), FAILED: _ids(spool_path("failed"))}
    selected = [(s, i) for s in (QUEUED, FAILED) if state in (s, "all") for i in ids[s]]
    items = []
    for entry_state, queue_id in selected[offset:offset + limit]:
        try:
            items.append(_item(spool_path, queue_id, entry_state))
        except FileNotFoundError:
            continue  # delivered, moved or deleted while the page was read
    return {"items": items, "total": len(selected), "queued": len(ids[QUEUED]), "failed": len(ids[FAILED])}


def find_item(spool_path: Any, queue_id: str) -> dict[str, Any] | None:
    """(blocking) The message C{queue_id} (queued first), or None."""
    for state in (QUEUED, FAILED):
        try:
            return _item(spool_path, queue_id, state)
        except FileNotFoundError:
            continue
    return None


# -- the routes ----------------------------------------------------------------------


def _control(app: Any) -> Any:
    """The running server's queue control. @raise ApiError: 503 when this server has none."""
    control = app.ctx.server.queue
    if control is None:
        raise ApiError(503, "the queue is not available")
    return control


def _checked_id(queue_id: str) -> str:
    if not valid_id(queue_id):
        raise ApiError(400, "not a queue id (letters, digits, - and _)")
    return queue_id


async def _record(app: Any, call: Call, action: str, target: str, before: Any, after: Any) -> None:
    await app.ctx.db(oplog.record, app.ctx.clock.seconds(), call.actor, action, target, before, after,
                     call.client_ip)


async def _find(app: Any, queue_id: str) -> dict[str, Any]:
    control = _control(app)
    item: dict[str, Any] | None = await control.spool.run(find_item, control.spool.path, _checked_id(queue_id))
    if item is None:
        raise ApiError(404, f"no message {queue_id} in the queue or failed/")
    return item


@api("/api/queue", "GET", role="auditor", tag="queue", response=LIST_SCHEMA,
     summary="One page of the queued and failed messages, oldest first, and how many there are",
     query={"state": {"type": "string", "enum": [QUEUED, FAILED, "all"], "default": "all"},
            "page": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "default": 1},
            "per_page": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}})
async def list_queue(app: Any, request: Any, call: Call) -> Any:
    control = _control(app)
    page, per_page = call.query["page"], call.query["per_page"]
    listed: dict[str, Any] = await control.spool.run(list_page, control.spool.path, call.query["state"],
                                                     (page - 1) * per_page, per_page)
    return {**listed, "page": page, "per_page": per_page}


@api("/api/queue/<queue_id>", "GET", role="auditor", tag="queue", response=ITEM_SCHEMA,
     summary="One queued or failed message's envelope")
async def show_message(app: Any, request: Any, call: Call, queue_id: str) -> Any:
    return await _find(app, queue_id)


@api("/api/queue/<queue_id>/retry", "POST", role="admin", tag="queue",
     summary="Put a failed message back in the queue, with fresh attempt counters",
     response={"type": "object", "required": ["requeued"], "properties": {"requeued": COUNT}})
async def retry_message(app: Any, request: Any, call: Call, queue_id: str) -> Any:
    control = _control(app)
    item = await _find(app, queue_id)
    if item["state"] != FAILED:
        raise ApiError(409, f"message {queue_id} is queued, not failed (POST /api/queue/flush makes the queue due "
                            f"now)")
    try:
        result = await control.retry([queue_id], False)
    except UnknownMessages:
        raise ApiError(404, f"no message {queue_id} in failed/") from None
    if result["problems"] and not result["requeued"]:
        raise ApiError(409, result["problems"][0])
    await _record(app, call, "queue.retry", queue_id, item, {"requeued": result["requeued"]})
    return {"requeued": result["requeued"]}


@api("/api/queue/retry-failed", "POST", role="admin", tag="queue",
     summary="Put every failed message back in the queue",
     response={"type": "object", "required": ["requeued", "problems"],
               "properties": {"requeued": COUNT, "problems": PROBLEMS}})
async def retry_failed(app: Any, request: Any, call: Call) -> Any:
    result = await _control(app).retry([], True)
    answer = {"requeued": result["requeued"], "problems": list(result["problems"])}
    await _record(app, call, "queue.retry", "failed/", None, answer)
    return answer


@api("/api/queue/flush", "POST", role="admin", tag="queue",
     summary="Make every queued message due now (those being delivered finish their attempt)",
     response={"type": "object", "required": ["flushed", "active"],
               "properties": {"flushed": COUNT, "active": COUNT}})
async def flush_queue(app: Any, request: Any, call: Call) -> Any:
    result = _control(app).flush()
    answer = {"flushed": result["flushed"], "active": result["active"]}
    await _record(app, call, "queue.flush", "queue/", None, answer)
    return answer


@api("/api/queue/<queue_id>", "DELETE", role="admin", tag="queue",
     summary="Delete a queued or failed message for good",
     response={"type": "object", "required": ["deleted"], "properties": {"deleted": COUNT}})
async def delete_message(app: Any, request: Any, call: Call, queue_id: str) -> Any:
    control = _control(app)
    item = await _find(app, queue_id)
    try:
        result = await control.delete([queue_id], False, False)
    except UnknownMessages:
        raise ApiError(404, f"no message {queue_id} in the queue or failed/") from None
    if result["busy"]:
        raise ApiError(409, f"message {queue_id} is being delivered or moved right now: try again")
    await _record(app, call, "queue.delete", queue_id, item, {"deleted": result["deleted"]})
    return {"deleted": result["deleted"]}
