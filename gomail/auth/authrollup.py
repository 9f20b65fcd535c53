# -*- test-case-name: tests.test_admin_rollup -*-
"""
Rollups of the login audit log (C{auth_log}) by minute and by quarter
hour, for the admin dashboard (L{gomail.admin.stats}).

Summing a day of raw entries (a third of a million at ten million a month)
took about half a second; the rollups answer the same in milliseconds. They
are maintained in the transaction that writes the entries
(L{gomail.auth.authlog.insert_entries}), by SQL over the rows just written
(SQLite does the work without holding Python's lock), and kept for
L{KEEP_SECONDS} only: the dashboard looks back a day at most.

  - C{auth_rollup}: per minute and per quarter hour (C{resolution} 60 and
    900 s; C{start}, epoch s) and latency bucket, the attempts, successes
    and failures: a latency histogram per step of the dashboard's ranges
    (the hour's minutes, the day's quarters), for percentiles;
  - C{auth_failures}: per minute, the failures (result C{failure}) of each
    user name (C{kind} C{user}) and each client IP (C{kind} C{ip});
  - C{auth_failure_totals}: the failures of each user name and client IP
    from a time on (C{meta} key L{TOTALS_SINCE}, the day window's start),
    so the day's top failing names are read from an index however many
    names failed (a credential-stuffing attack fails thousands of names a
    minute): the flushes add to it, L{advance_failure_totals} takes off what
    falls out of the window;
  - C{auth_last_success}: each user's last successful login (the active users
    of any window ending now are those whose last success is in it).

Latency buckets are HDR-style: each doubling from 2^-4 ms to 2^17 ms (131 s)
is split into L{SUB_BUCKETS} equal parts, so a bucket's middle is within
6.25% of any latency in it; bucket 0 holds everything faster, the last one
everything slower. Functions take a DB-API cursor first.
"""

from __future__ import annotations

import math
from typing import Any

#: Parts per doubling of the latency.
SUB_BUCKETS = 8
#: The first and past-the-last doubling: 2^-4 ms (62.5 µs) to 2^17 ms (131 s).
LOW_EXPONENT, HIGH_EXPONENT = -4, 17
#: Bucket 0 (below 2^LOW_EXPONENT), then SUB_BUCKETS per doubling, then the overflow bucket.
OVERFLOW_BUCKET = 1 + (HIGH_EXPONENT - LOW_EXPONENT) * SUB_BUCKETS
#: The steps (s) of the histograms in auth_rollup: the dashboard's steps.
RESOLUTIONS = (60, 900)
#: How long rollups are kept: the dashboard's longest range (a day) and a margin.
KEEP_SECONDS = 2 * 86400.0
#: The result whose entries count as failures (wrong credentials, locked, blacklisted).
FAILURE = "failure"
#: The failure counts' kinds: auth_failures.kind and the auth_log column each counts.
KINDS = (("user", "user"), ("ip", "client_ip"))
#: The meta key holding the start of what auth_failure_totals counts.
TOTALS_SINCE = "auth_failure_totals_since"
#: auth_failure_totals is counted again rather than moved on by more than this (s): the
#: per-minute counts it would take off may be purged already.
RECOUNT_AFTER = 12 * 3600.0


def bucket_of(latency_ms: float) -> int:
    """The latency bucket of C{latency_ms} (the same as L{BUCKET_SQL} computes)."""
    if not latency_ms >= 2.0 ** LOW_EXPONENT:  # also NaN
        return 0
    if latency_ms >= 2.0 ** HIGH_EXPONENT:
        return OVERFLOW_BUCKET
    mantissa, exponent = math.frexp(latency_ms)  # latency = mantissa * 2^exponent, 0.5 <= mantissa < 1
    octave = exponent - 1 - LOW_EXPONENT
    return 1 + octave * SUB_BUCKETS + int((2 * mantissa - 1) * SUB_BUCKETS)


def bucket_value(bucket: int) -> float:
    """The latency (ms) a bucket stands for: its middle (bucket 0: half its bound; overflow: its bound)."""
    if bucket <= 0:
        return 2.0 ** LOW_EXPONENT / 2
    if bucket >= OVERFLOW_BUCKET:
        return 2.0 ** HIGH_EXPONENT
    octave, part = divmod(bucket - 1, SUB_BUCKETS)
    return 2.0 ** (LOW_EXPONENT + octave) * (1 + (part + 0.5) / SUB_BUCKETS)


def _bucket_sql(column: str) -> str:
    # No log2(): SQLite's math functions are a compile-time option. Dividing by
    # a power of two and multiplying by 8 are exact, so this agrees with bucket_of.
    cases = [f"WHEN {column} < {2.0 ** LOW_EXPONENT!r} THEN 0"]
    for octave in range(HIGH_EXPONENT - LOW_EXPONENT):
        low = 2.0 ** (LOW_EXPONENT + octave)
        cases.append(f"WHEN {column} < {2 * low!r} THEN "
                     f"{1 + octave * SUB_BUCKETS} + CAST(({column} / {low!r} - 1) * {SUB_BUCKETS} AS INTEGER)")
    return f"CASE {' '.join(cases)} ELSE {OVERFLOW_BUCKET} END"


#: The latency bucket of an auth_log row, in SQL.
BUCKET_SQL = _bucket_sql("latency_ms")


def _add_statements(source: str) -> tuple[str, ...]:
    """The statements adding the auth_log rows C{source} selects (C{FROM ... WHERE ...}) to the rollups."""
    minute = "CAST(time / 60 AS INTEGER)"
    return (
        *(f"INSERT INTO auth_rollup (resolution, start, bucket, attempts, successes, failures) "
          f"SELECT {step}, CAST(time / {step} AS INTEGER) * {step}, {BUCKET_SQL}, COUNT(*), "
          f"SUM(result = 'success'), SUM(result = '{FAILURE}') {source} GROUP BY 2, 3 "
          f"ON CONFLICT (resolution, start, bucket) DO UPDATE SET attempts = attempts + excluded.attempts, "
          f"successes = successes + excluded.successes, failures = failures + excluded.failures"
          for step in RESOLUTIONS),
        *(f"INSERT INTO auth_failures (kind, minute, key, count) "
          f"SELECT '{kind}', {minute}, {column}, COUNT(*) {source} AND result = '{FAILURE}' AND {column} != '' "
          f"GROUP BY 2, 3 ON CONFLICT (kind, minute, key) DO UPDATE SET count = count + excluded.count"
          for kind, column in KINDS),
        # Nothing before the totals' start (none set: nothing at all, they are counted when first read).
        *(f"INSERT INTO auth_failure_totals (kind, key, count) "
          f"SELECT '{kind}', {column}, COUNT(*) {source} AND result = '{FAILURE}' AND {column} != '' "
          f"AND time >= (SELECT value FROM meta WHERE key = '{TOTALS_SINCE}') "
          f"GROUP BY 2 ON CONFLICT (kind, key) DO UPDATE SET count = count + excluded.count"
          for kind, column in KINDS),
        (f"INSERT INTO auth_last_success (user, time) "
         f"SELECT user, MAX(time) {source} AND result = 'success' AND user != '' "
         f"GROUP BY user ON CONFLICT (user) DO UPDATE SET time = MAX(time, excluded.time)"),
    )


# NOT INDEXED: the rows are found by their ids (the rowid range), never by an index
# that suits the GROUP BY (auth_log_user_time: a scan of the whole log).
_ADD_NEW = _add_statements("FROM auth_log NOT INDEXED WHERE id > ?")

#: For the migration that creates the rollups: fill them from the entries of
#: the last KEEP_SECONDS (before the newest entry) already in the log.
BACKFILL = _add_statements(
    f"FROM auth_log NOT INDEXED WHERE id >= (SELECT MIN(id) FROM auth_log WHERE time >= "
    f"(SELECT MAX(time) FROM auth_log) - {KEEP_SECONDS!r}) AND time >= (SELECT MAX(time) FROM auth_log) - "
    f"{KEEP_SECONDS!r}")


def last_id(cursor: Any) -> int:
    """The id of the newest auth_log row (0: none): what L{add_new} is given after an insert."""
    cursor.execute("SELECT COALESCE(MAX(id), 0) FROM auth_log")
    return int(cursor.fetchone()[0])


def add_new(cursor: Any, after_id: int) -> None:
    """Add the auth_log rows whose id is above C{after_id} (those just written) to the rollups."""
    for statement in _ADD_NEW:
        cursor.execute(statement, (after_id,))


def purge(cursor: Any, before: float) -> None:
    """Delete what the rollups hold about times before C{before}."""
    for step in RESOLUTIONS:  # only whole steps before C{before}
        cursor.execute("DELETE FROM auth_rollup WHERE resolution = ? AND start < ?",
                       (step, math.floor(before / step) * step))
    minute = math.floor(before / 60)
    for kind, _ in KINDS:  # each kind's rows are one range of the primary key
        cursor.execute("DELETE FROM auth_failures WHERE kind = ? AND minute < ?", (kind, minute))
    cursor.execute("DELETE FROM auth_last_success WHERE time < ?", (before,))
    since = failure_totals_since(cursor)
    if since is not None and since < before:
        # Not read for a long while (the flushes only add): counted again when next read.
        _reset_totals(cursor)


def failure_totals_since(cursor: Any) -> float | None:
    """The start of what auth_failure_totals counts (None: it counts nothing)."""
    cursor.execute("SELECT value FROM meta WHERE key = ?", (TOTALS_SINCE,))
    row = cursor.fetchone()
    return None if row is None else float(row[0])


def _reset_totals(cursor: Any) -> None:
    cursor.execute("DELETE FROM auth_failure_totals")
    cursor.execute("DELETE FROM meta WHERE key = ?", (TOTALS_SINCE,))


def advance_failure_totals(cursor: Any, since: float) -> None:
    """
    Make auth_failure_totals count the failures from C{since} (a whole
    minute) on: take off the minutes before it, or count them all again
    (none counted yet, the start moved back, or a long way forward).
    """
    stored = failure_totals_since(cursor)
    if stored == since:
        return
    first = math.floor(since / 60)
    if stored is None or stored > since or since - stored > RECOUNT_AFTER:
        _reset_totals(cursor)
        for kind, _ in KINDS:
            cursor.execute("INSERT INTO auth_failure_totals (kind, key, count) SELECT kind, key, SUM(count) "
                           "FROM auth_failures WHERE kind = ? AND minute >= ? GROUP BY key", (kind, first))
    else:
        for kind, _ in KINDS:
            cursor.execute("INSERT INTO auth_failure_totals (kind, key, count) SELECT kind, key, -SUM(count) "
                           "FROM auth_failures WHERE kind = ? AND minute >= ? AND minute < ? GROUP BY key "
                           "ON CONFLICT (kind, key) DO UPDATE SET count = count + excluded.count",
                           (kind, math.floor(stored / 60), first))
            cursor.execute("DELETE FROM auth_failure_totals WHERE kind = ? AND count <= 0", (kind,))
    cursor.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                   "excluded.value", (TOTALS_SINCE, since))


__all__ = ["BACKFILL", "BUCKET_SQL", "FAILURE", "KEEP_SECONDS", "KINDS", "OVERFLOW_BUCKET", "RESOLUTIONS",
           "TOTALS_SINCE", "add_new", "advance_failure_totals", "bucket_of", "bucket_value", "failure_totals_since",
           "last_id", "purge"]
