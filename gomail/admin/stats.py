# -*- test-case-name: tests.test_admin_dashboard -*-
"""
The dashboard's login statistics (C{GET /api/dashboard}), from the audit
log's rollups (L{gomail.auth.authrollup}).

A range is cut into steps: C{hour} into 60 steps of a minute, C{day} into
96 steps of 15 minutes. Steps are aligned to their size (a day's start at
:00, :15, :30 or :45) and the last one is the step in progress, so the
window runs from the first step's start to now: a little less than the whole
range (at most one step less). Active users, the top failing users and IPs
and the totals are about that window.

L{audit_statistics} is one cursor function (run through C{ctx.db}, off the
reactor; for the day it also moves the running failure totals on, see
L{gomail.auth.authrollup.advance_failure_totals}); C{bench/admin_dashboard.py}
times the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gomail.auth.authrollup import advance_failure_totals, bucket_value

#: range name: (seconds, step seconds); each step is one of authrollup.RESOLUTIONS.
RANGES: dict[str, tuple[int, int]] = {"hour": (3600, 60), "day": (86400, 900)}
#: How many users and IPs the top failing lists hold.
TOP = 10


@dataclass(frozen=True)
class Window:
    """The steps of one dashboard range ending at C{now}: C{points} steps of C{step} s from C{start}."""

    range: str
    step: int
    points: int
    start: float
    now: float

    @property
    def times(self) -> list[float]:
        """Each step's start (epoch s)."""
        return [self.start + i * self.step for i in range(self.points)]

    def index(self, when: float) -> int | None:
        """The step C{when} falls in, or None outside the window."""
        if when < self.start or when > self.now:
            return None
        return min(int((when - self.start) // self.step), self.points - 1)


def window(range_name: str, now: float) -> Window:
    """The window of C{range_name} (C{hour} or C{day}) ending at C{now}."""
    seconds, step = RANGES[range_name]
    points = seconds // step
    start = (math.floor(now / step) - (points - 1)) * step
    return Window(range_name, step, points, float(start), now)


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """
    The nearest-rank percentile of a latency histogram (bucket: count), as
    the bucket's middle in ms (rounded to µs); None when empty.
    """
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round(bucket_value(bucket), 3)
    raise AssertionError("unreachable: the ranks add up to the total")


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _top(cursor: Any, kind: str, win: Window) -> list[tuple[str, int]]:
    if win.range == "day":
        # Summing a day of per-minute counts took 0.2 s when 200,000 names failed: the
        # running totals are read from their index instead.
        cursor.execute("SELECT key, count FROM auth_failure_totals WHERE kind = ? ORDER BY count DESC, key "
                       "LIMIT ?", (kind, TOP))
    else:
        cursor.execute("SELECT key, SUM(count) AS n FROM auth_failures WHERE kind = ? AND minute BETWEEN ? AND ? "
                       "GROUP BY key ORDER BY n DESC, key LIMIT ?",
                       (kind, math.floor(win.start / 60), math.floor(win.now / 60), TOP))
    return [(key, int(n)) for key, n in cursor.fetchall()]


def audit_statistics(cursor: Any, win: Window) -> dict[str, Any]:
    """
    The login side of the dashboard for C{win}: the C{series} (one value per
    step, None where there was no attempt), C{active_users}, the top failing
    users and IPs, and the C{totals} over the window.
    """
    if win.range == "day":
        advance_failure_totals(cursor, win.start)
    # The histograms' resolutions are the ranges' steps: one row per step and bucket.
    cursor.execute("SELECT start, bucket, attempts, successes, failures FROM auth_rollup "
                   "WHERE resolution = ? AND start BETWEEN ? AND ?", (win.step, win.start, win.now))
    attempts = [0] * win.points
    successes = [0] * win.points
    histograms: list[dict[int, int]] = [{} for _ in range(win.points)]
    overall: dict[int, int] = {}
    failures = 0
    for start, bucket, count, ok, failed in cursor.fetchall():
        index = int((start - win.start) // win.step)
        attempts[index] += count
        successes[index] += ok
        failures += failed
        histograms[index][bucket] = count
        overall[bucket] = overall.get(bucket, 0) + count
    # The step in progress is divided by the part of it that has passed.
    seconds = [float(win.step)] * win.points
    seconds[-1] = max(1.0, win.now - win.times[-1])
    cursor.execute("SELECT COUNT(*) FROM auth_last_success WHERE time >= ?", (win.start,))
    active = int(cursor.fetchone()[0])
    return {
        "series": {
            "logins_per_s": [round(n / s, 4) for n, s in zip(attempts, seconds, strict=True)],
            "success_ratio": [_ratio(ok, n) for ok, n in zip(successes, attempts, strict=True)],
            "latency_p50_ms": [percentile(h, 0.5) for h in histograms],
            "latency_p99_ms": [percentile(h, 0.99) for h in histograms],
        },
        "active_users": active,
        "top_failing_users": [{"user": k, "count": n} for k, n in _top(cursor, "user", win)],
        "top_failing_ips": [{"ip": k, "count": n} for k, n in _top(cursor, "ip", win)],
        "totals": {
            "logins": sum(attempts), "successes": sum(successes), "failures": failures,
            "success_ratio": _ratio(sum(successes), sum(attempts)),
            "latency_p50_ms": percentile(overall, 0.5), "latency_p99_ms": percentile(overall, 0.99),
        },
    }


__all__ = ["RANGES", "TOP", "Window", "audit_statistics", "percentile", "window"]
