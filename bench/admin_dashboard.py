"""
The admin dashboard's login statistics over a large audit log.

Builds a user database (gomail's real schema and migrations) in a temporary
directory under /tmp with C{--rows} audit entries (default 10 million)
spread evenly over C{--days} (default 30, the default retention) ending at
a fixed "now": C{--users} user names, C{--ips} client addresses,
C{--failure-share} of the attempts failures (result C{failure}), 2% refused,
1% tempfail, the rest successes; latencies 70% cached (0.1-2.1 ms), 30%
bcrypt (40-290 ms). The rows are written by one recursive CTE (a minute or
two), then the rollups the dashboard reads are filled from the last two
days by the same SQL the migration uses (the sums are those the flushes
would have made one second at a time).

Then it times, C{--repeat} times each, alternating:
  - L{gomail.admin.stats.audit_statistics} (what C{GET /api/dashboard} runs
    in the database thread) for C{hour} and C{day}; the day three ways: with
    the running failure totals counted afresh (the first read, or the first
    after 12 hours without one), then read again in the same step (nearly
    every call), then a step later (one call each 15 minutes: a quarter's
    failures taken off);
  - the audit log's first page (C{GET /api/logs/auth}: the count and 50 rows),
    unfiltered and for one user;
and, for the cost the rollups add to every flush, C{insert_entries} of
C{--batch} entries (one second of logins at that rate) with and without the
rollup statements, on the same database.

Prints p50/p99/max in ms. The database is deleted at the end (C{--keep} keeps it).
Usage: .venv/bin/python bench/admin_dashboard.py [--rows 10000000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from time import perf_counter
from typing import Any

from gomail.admin import api_logs, stats
from gomail.auth import authlog, authrollup, dbfile
from gomail.auth.authlog import AuthLogEntry

NOW = 1_800_000_000.0


def build(path: str, rows: int, days: float, users: int, ips: int, failure_share: float) -> None:
    conn = dbfile.open_connection(path)
    dbfile.transact(conn, dbfile.migrate)
    conn.execute("PRAGMA synchronous = OFF")  # building only: the timings run with the server's settings
    span = days * 86400
    failures = round(failure_share * 1000)
    started = perf_counter()
    conn.execute(
        """WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < ? - 1),
        r(i, a, b, c, d) AS (SELECT i, abs(random()), abs(random()), abs(random()), abs(random()) % 1000 FROM seq)
        INSERT INTO auth_log (time, user, protocol, client_ip, result, reason, latency_ms, backend)
        SELECT ? + i * ?, 'user' || (a % ?) || '@example.com',
               CASE b % 3 WHEN 0 THEN 'imap' WHEN 1 THEN 'smtp' ELSE 'pop3' END,
               '10.' || (c % ? / 62500) || '.' || (c % ? / 250 % 250) || '.' || (c % ? % 250),
               CASE WHEN d < ? THEN 'failure' WHEN d < ? + 20 THEN 'refused' WHEN d < ? + 30 THEN 'tempfail'
                    ELSE 'success' END,
               CASE WHEN d < ? THEN 'bad-password' ELSE 'password' END,
               CASE WHEN b % 10 < 7 THEN 0.1 + (c % 2000) / 1000.0 ELSE 40.0 + (a % 250000) / 1000.0 END,
               NULL
        FROM r""",
        (rows, NOW - span, span / rows, users, ips, ips, ips, failures, failures, failures, failures))
    conn.commit()
    written = perf_counter() - started
    started = perf_counter()
    dbfile.transact(conn, lambda cursor: [cursor.execute(s) for s in authrollup.BACKFILL])
    print(f"built {rows:,} rows in {written:.0f} s, rollups in {perf_counter() - started:.1f} s; "
          f"{os.path.getsize(path) / 2**20:,.0f} MB")
    conn.close()


def timings(label: str, figures: list[float]) -> str:
    ordered = sorted(figures)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return (f"| {label} | {statistics.median(ordered):.1f} | {p99:.1f} | {ordered[-1]:.1f} | {len(ordered)} |")


def timed(conn: sqlite3.Connection, fn: Any, *args: Any) -> float:
    started = perf_counter()
    dbfile.transact(conn, fn, *args)
    return (perf_counter() - started) * 1000


def recounted(cursor: Any, now: float) -> None:
    """The day's statistics with the failure totals counted afresh (first read, or none for 12 hours)."""
    cursor.execute("DELETE FROM meta WHERE key = ?", (authrollup.TOTALS_SINCE,))
    stats.audit_statistics(cursor, stats.window("day", now))


def queries(path: str, repeat: int) -> list[str]:
    conn = dbfile.open_connection(path)
    results: dict[str, list[float]] = {}
    one_user = "user42@example.com"
    cases: list[tuple[str, Any, tuple]] = [
        # In this order: the day's totals counted afresh, read again in the same step (what
        # nearly every call does), then read a step later (what one call each 15 minutes does).
        ("dashboard day, failure totals counted afresh", recounted, (NOW - 900,)),
        ("dashboard day: audit_statistics", stats.audit_statistics, (stats.window("day", NOW - 900),)),
        ("dashboard day, the window a step on", stats.audit_statistics, (stats.window("day", NOW),)),
        ("dashboard hour: audit_statistics", stats.audit_statistics, (stats.window("hour", NOW),)),
        ("logs: first page, no filter", api_logs._page, (api_logs.AUTH_LOG, "", (), 50, 0)),
        ("logs: first page, one user", api_logs._page,
         (api_logs.AUTH_LOG, "WHERE user = ?", (one_user,), 50, 0)),
    ]
    for label, fn, args in cases:
        timed(conn, fn, *args)  # the first run reads the pages in: the figures are for a warm cache
    for _ in range(repeat):
        for label, fn, args in cases:
            results.setdefault(label, []).append(timed(conn, fn, *args))
    conn.close()
    return [timings(label, figures) for label, figures in results.items()]


def flush_cost(path: str, batch: int, repeat: int) -> list[str]:
    """insert_entries of one batch, with the rollups (as the server) and without (the plain insert)."""
    conn = dbfile.open_connection(path)
    entries = [AuthLogEntry(NOW + i / batch, f"user{i % 5000}@example.com", "imap", f"10.1.{i % 250}.{i % 7}",
                            "failure" if i % 10 == 0 else "success", "password", 0.5 + i % 100, None)
               for i in range(batch)]

    def plain(cursor: Any, entries: list[AuthLogEntry]) -> None:
        cursor.executemany("INSERT INTO auth_log (time, user, protocol, client_ip, result, reason, latency_ms, "
                           "backend) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", entries)

    results: dict[str, list[float]] = {}
    for _ in range(repeat):
        for label, fn in ((f"flush of {batch} entries, with rollups", authlog.insert_entries),
                          (f"flush of {batch} entries, without", plain)):
            results.setdefault(label, []).append(timed(conn, fn, entries))
    conn.close()
    return [timings(label, figures) for label, figures in results.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--ips", type=int, default=20000)
    parser.add_argument("--failure-share", type=float, default=0.07)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the database (its path is printed)")
    parser.add_argument("--database", help="use this database (built if missing) instead of a temporary one")
    options = parser.parse_args()
    directory = None
    path = options.database
    if path is None:
        directory = tempfile.mkdtemp(prefix="gomail-dashboard-bench-", dir="/tmp")
        path = os.path.join(directory, "gomail.db")
    try:
        if not os.path.exists(path):
            build(path, options.rows, options.days, options.users, options.ips, options.failure_share)
        print(f"{time.strftime('%Y-%m-%d %H:%M')}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
        print("| what | p50 ms | p99 ms | max ms | runs |\n|---|---|---|---|---|")
        for line in queries(path, options.repeat):
            print(line)
        for line in flush_cost(path, options.batch, options.repeat):
            print(line)
    finally:
        if options.keep or directory is None:
            print(f"database kept: {path}")
        else:
            shutil.rmtree(directory)


if __name__ == "__main__":
    main()
