"""
The audit log's rollups for the dashboard (gomail.auth.authrollup): the
latency buckets, the rollups written with each flush and purged, the running
failure totals of the day, and the migration that fills them.
"""

from __future__ import annotations

import os
import random
import sqlite3

from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.admin import stats
from gomail.auth import authrollup, dbfile
from gomail.auth.authlog import AuthLog, insert_entries
from gomail.auth.authrollup import bucket_of, bucket_value
from tests.admintesting import START, AdminHarness
from tests.test_admin_dashboard import DAY, at, entry


class BucketTests(SynchronousTestCase):
    """The latency buckets of the rollups."""

    def test_python_and_sql_agree(self) -> None:
        """bucket_of and BUCKET_SQL put every latency in the same bucket, at the edges too."""
        latencies = [-1.0, 0.0, 0.01, 0.0625, 0.0624999, 0.125, 1.0, 1.1249, 1.125, 1.99999, 2.0, 3.0, 250.0,
                     131071.99, 131072.0, 1e12] + [1.07 ** i / 100 for i in range(300)]
        conn = sqlite3.connect(":memory:")
        self.addCleanup(conn.close)
        conn.execute("CREATE TABLE t (latency_ms REAL)")
        conn.executemany("INSERT INTO t VALUES (?)", [(x,) for x in latencies])
        in_sql = [b for (b,) in conn.execute(f"SELECT {authrollup.BUCKET_SQL} FROM t ORDER BY rowid")]
        self.assertEqual(in_sql, [bucket_of(x) for x in latencies])

    def test_precision(self) -> None:
        """Between 2^-4 ms and 2^17 ms a bucket's middle is within 6.25% of any latency in it."""
        for i in range(2000):
            latency = 0.0625 * 1.0093 ** i
            if latency >= 131072:
                break
            self.assertLessEqual(abs(bucket_value(bucket_of(latency)) - latency) / latency, 0.0625, latency)
        self.assertEqual(bucket_of(0.01), 0)
        self.assertEqual(bucket_of(1e9), authrollup.OVERFLOW_BUCKET)

    def test_percentile(self) -> None:
        """Nearest rank over the histogram; None when empty."""
        histogram = {bucket_of(1.0): 98, bucket_of(100.0): 2}
        self.assertEqual(stats.percentile(histogram, 0.5), at(1.0))
        self.assertEqual(stats.percentile(histogram, 0.98), at(1.0))
        self.assertEqual(stats.percentile(histogram, 0.99), at(100.0))
        self.assertIsNone(stats.percentile({}, 0.5))


class RollupTests(TestCase):
    """The rollups are written with the entries, purged after two days, and filled by the migration."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)

    def table(self, sql: str) -> list[tuple]:
        return self.h.db.run(lambda c: c.execute(sql).fetchall())

    async def test_flush_maintains_rollups(self) -> None:
        """AuthLog's flush adds each batch to the per-minute counts, the failure counts and the last successes."""
        log = AuthLog(self.h.db, self.h.clock, 30)
        log.record(entry(120.0, "alice", latency=1.0))
        log.record(entry(130.0, "bob", "failure", "192.0.2.9", latency=100.0))
        await log.flush()
        log.record(entry(170.0, "alice", latency=1.0))
        log.record(entry(200.0, "bob", "failure", "192.0.2.9", latency=1.0))
        log.record(entry(201.0, "", "refused", "", latency=1.0))
        await log.flush()
        self.assertEqual(self.table("SELECT * FROM auth_rollup ORDER BY resolution, start, bucket"), [
            (60, 120, bucket_of(1.0), 2, 2, 0), (60, 120, bucket_of(100.0), 1, 0, 1), (60, 180, bucket_of(1.0), 2, 0, 1),
            (900, 0, bucket_of(1.0), 4, 2, 1), (900, 0, bucket_of(100.0), 1, 0, 1)])
        self.assertEqual(self.table("SELECT * FROM auth_failures ORDER BY kind, minute"),
                         [("ip", 2, "192.0.2.9", 1), ("ip", 3, "192.0.2.9", 1), ("user", 2, "bob", 1),
                          ("user", 3, "bob", 1)])
        self.assertEqual(self.table("SELECT * FROM auth_last_success"), [("alice", 170.0)])

    async def test_purge(self) -> None:
        """The rollups are kept two days; the entries themselves for the retention (here 30 days)."""
        log = AuthLog(self.h.db, self.h.clock, 30)
        now = self.h.clock.seconds()
        for age in (3 * DAY, 2 * DAY + 60, 2 * DAY - 60):
            log.record(entry(now - age, f"u{age}"))
            log.record(entry(now - age, f"f{age}", "failure"))
        await log.flush()
        await log.purge()
        self.assertEqual(len(self.table("SELECT * FROM auth_log")), 6)
        self.assertEqual(self.table("SELECT resolution, start FROM auth_rollup ORDER BY resolution"),
                         [(60, now - 2 * DAY + 60), (900, now - 2 * DAY)])
        self.assertEqual(self.table("SELECT key FROM auth_failures WHERE kind = 'user'"), [(f"f{2 * DAY - 60}",)])
        self.assertEqual(self.table("SELECT user FROM auth_last_success"), [(f"u{2 * DAY - 60}",)])

    def test_failure_totals_follow_the_window(self) -> None:
        """
        The day's running failure totals are the per-minute counts from the
        window's start on, as entries keep coming and the window moves: by
        steps, by more than 12 hours, backwards; a name whose failures all
        left the window leaves the totals.
        """
        rng = random.Random(5)
        now = START
        before: set[tuple[str, str]] = set()
        vanished = 0
        self.assertIsNone(self.h.db.run(authrollup.failure_totals_since))
        for move in (0, 900, 900, 2700, 300, 13 * 3600, -3600, 60, 86400, 900):
            now += move
            # Entries of the last 30 hours: each move takes some out of the day.
            self.h.db.run(insert_entries, [entry(now - rng.uniform(0, 30 * 3600), f"u{rng.randrange(60)}",
                                                 "failure", f"198.51.100.{rng.randrange(60)}") for _ in range(40)])
            win = stats.window("day", now)
            top = self.h.db.run(stats.audit_statistics, win)["top_failing_users"]
            self.assertEqual(self.h.db.run(authrollup.failure_totals_since), win.start)
            exact = self.table(f"SELECT kind, key, SUM(count) FROM auth_failures WHERE minute >= {win.start // 60} "
                               f"GROUP BY kind, key ORDER BY kind, key")
            self.assertEqual(self.table("SELECT * FROM auth_failure_totals ORDER BY kind, key"), exact, move)
            users = sorted(((-n, key) for kind, key, n in exact if kind == "user"))[:10]
            self.assertEqual(top, [{"user": key, "count": -n} for n, key in users])
            vanished += len(before - {(kind, key) for kind, key, _ in exact})
            before = {(kind, key) for kind, key, _ in exact}
        self.assertGreater(vanished, 0)

    async def test_failure_totals_reset(self) -> None:
        """Totals not read for longer than the rollups are kept are dropped by the purge (counted again if read)."""
        log = AuthLog(self.h.db, self.h.clock, 30)
        log.record(entry(START - 10, "bob", "failure"))
        await log.flush()
        self.h.db.run(stats.audit_statistics, stats.window("day", START))
        self.assertEqual(self.table("SELECT key, count FROM auth_failure_totals WHERE kind = 'user'"), [("bob", 1)])
        self.h.clock.advance(3 * DAY)
        log.record(entry(START + 3 * DAY - 10, "carol", "failure"))
        await log.flush()  # added: the totals still count from the old start
        self.assertEqual(len(self.table("SELECT * FROM auth_failure_totals WHERE kind = 'user'")), 2)
        await log.purge()
        self.assertEqual(self.table("SELECT * FROM auth_failure_totals"), [])
        self.assertIsNone(self.h.db.run(authrollup.failure_totals_since))
        top = self.h.db.run(stats.audit_statistics, stats.window("day", START + 3 * DAY))["top_failing_users"]
        self.assertEqual(top, [{"user": "carol", "count": 1}])

    def test_flush_reads_only_new_rows(self) -> None:
        """Each rollup statement of a flush finds the new rows by id, never by scanning an index of the whole log."""
        for statement in authrollup._ADD_NEW:
            plan = self.table(f"EXPLAIN QUERY PLAN {statement.replace('?', '0')}")
            self.assertIn("SEARCH auth_log USING INTEGER PRIMARY KEY (rowid>?)", [row[-1] for row in plan])

    def test_migration_fills_rollups(self) -> None:
        """A database from before the rollups gets them filled from its last two days of entries."""
        path = os.path.join(self.mktemp() + ".db")
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        for statements in dbfile.MIGRATIONS[:4]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 4")
        newest = 100 * DAY
        conn.executemany("INSERT INTO auth_log (time, user, protocol, client_ip, result, reason, latency_ms, "
                         "backend) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         [entry(newest - 3 * DAY, "old"), entry(newest - DAY, "bob", "failure"), entry(newest)])
        conn.commit()
        self.assertEqual(dbfile.transact(conn, dbfile.migrate), dbfile.SCHEMA_VERSION)
        self.assertEqual(conn.execute("SELECT resolution, SUM(attempts), SUM(failures) FROM auth_rollup "
                                      "GROUP BY resolution").fetchall(), [(60, 2, 1), (900, 2, 1)])
        self.assertEqual(conn.execute("SELECT kind, key FROM auth_failures ORDER BY kind").fetchall(),
                         [("ip", "192.0.2.1"), ("user", "bob")])
        self.assertEqual(conn.execute("SELECT * FROM auth_last_success").fetchall(), [("alice", newest)])
