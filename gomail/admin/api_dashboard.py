# -*- test-case-name: tests.test_admin_dashboard -*-
"""
C{GET /api/dashboard} (role auditor): the last hour or day of logins (from
the audit log's rollups, L{gomail.admin.stats}) and mail (from the running
server's counters, sampled by L{gomail.admin.timeseries}), as series with one
value per step, for the web UI's charts.
"""

from __future__ import annotations

from typing import Any

from gomail.admin import stats
from gomail.admin.routing import Call, api
from gomail.admin.timeseries import COUNTERS, sampler_of

_NUMBERS = {"type": "array", "items": {"type": ["number", "null"]}}
_COUNTS = {"type": "array", "items": {"type": ["integer", "null"]}}
_SERIES = {"logins_per_s": {"type": "array", "items": {"type": "number"}}, "success_ratio": _NUMBERS,
           "latency_p50_ms": _NUMBERS, "latency_p99_ms": _NUMBERS,
           **{f"messages_{name}": _COUNTS for name in COUNTERS}, "queue_depth": _COUNTS}
_TOTALS = {"logins": {"type": "integer"}, "successes": {"type": "integer"}, "failures": {"type": "integer"},
           "success_ratio": {"type": ["number", "null"]}, "latency_p50_ms": {"type": ["number", "null"]},
           "latency_p99_ms": {"type": ["number", "null"]},
           **{f"messages_{name}": {"type": ["integer", "null"]} for name in COUNTERS},
           "queue_depth": {"type": ["integer", "null"]}}


def _top(key: str) -> dict[str, Any]:
    return {"type": "array", "maxItems": stats.TOP,
            "items": {"type": "object", "required": [key, "count"],
                      "properties": {key: {"type": "string"}, "count": {"type": "integer"}}}}


DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["range", "step", "now", "series", "active_users", "top_failing_users", "top_failing_ips",
                 "totals"],
    "properties": {
        "range": {"type": "string", "enum": list(stats.RANGES)},
        "step": {"type": "integer"},
        "now": {"type": "number"},
        "series": {"type": "object", "required": ["time", *_SERIES],
                   "properties": {"time": {"type": "array", "items": {"type": "number"}}, **_SERIES}},
        "active_users": {"type": "integer"},
        "top_failing_users": _top("user"),
        "top_failing_ips": _top("ip"),
        "totals": {"type": "object", "required": list(_TOTALS), "properties": _TOTALS},
    },
}


@api("/api/dashboard", "GET", role="auditor", tag="dashboard", response=DASHBOARD_SCHEMA,
     summary="Logins and mail over the last hour (1-minute steps) or day (15-minute steps)",
     query={"range": {"type": "string", "enum": list(stats.RANGES), "default": "hour"}})
async def dashboard(app: Any, request: Any, call: Call) -> Any:
    ctx = app.ctx
    win = stats.window(call.query["range"], ctx.clock.seconds())
    logins = await ctx.db(stats.audit_statistics, win)
    mail = sampler_of(ctx).series(win)
    return {
        "range": win.range, "step": win.step, "now": win.now,
        "series": {"time": win.times, **logins["series"], **mail["series"]},
        "active_users": logins["active_users"],
        "top_failing_users": logins["top_failing_users"],
        "top_failing_ips": logins["top_failing_ips"],
        "totals": {**logins["totals"], **mail["totals"]},
    }


__all__ = ["DASHBOARD_SCHEMA", "dashboard"]
