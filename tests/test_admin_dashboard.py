"""
The admin dashboard (gomail.admin.api_dashboard): the login statistics from
the audit log's rollups (gomail.auth.authrollup, gomail.admin.stats) and the
mail figures sampled from the running server (gomail.admin.timeseries).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jsonschema import Draft202012Validator
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.admin import stats
from gomail.admin.api_dashboard import DASHBOARD_SCHEMA
from gomail.admin.timeseries import CAPACITY, ServerSampler, sampler_of
from gomail.auth.authlog import AuthLogEntry, insert_entries
from gomail.auth.authrollup import bucket_of, bucket_value
from tests.admintesting import START, AdminHarness

DAY = 86400.0


def entry(time: float, user: str = "alice", result: str = "success", ip: str = "192.0.2.1",
          latency: float = 1.0) -> AuthLogEntry:
    return AuthLogEntry(time, user, "imap", ip, result, "password", latency, None)


def at(latency: float) -> float:
    """What the dashboard shows for a latency: its bucket's middle."""
    return round(bucket_value(bucket_of(latency)), 3)


class WindowTests(SynchronousTestCase):
    """The steps of the two ranges."""

    def test_hour_and_day(self) -> None:
        """An hour is 60 steps of a minute, a day 96 of 15 minutes, aligned, the last one in progress."""
        now = START + 930.0
        hour = stats.window("hour", now)
        self.assertEqual((hour.step, hour.points, hour.times[-1]), (60, 60, START + 900.0))
        self.assertEqual(hour.times[0], START + 900.0 - 59 * 60)
        day = stats.window("day", now)
        self.assertEqual((day.step, day.points, day.times[-1], day.times[0]), (900, 96, START + 900.0,
                                                                                 START + 900.0 - 95 * 900))
        self.assertEqual((day.index(day.start), day.index(now), day.index(day.start - 1), day.index(now + 1)),
                         (0, 95, None, None))


class DashboardBase(TestCase):
    """An admin app whose clock is 30 s into a minute, with an auditor logged in."""

    def setUp(self) -> None:
        self.h = self.harness()
        self.token = self.h.token("eve", "auditor")
        self.h.clock.advance(30)
        self.now = START + 30

    def harness(self) -> AdminHarness:
        return AdminHarness(self)

    def dashboard(self, span: str | None = None) -> Any:
        answer = self.h.call("GET", "/api/dashboard" + (f"?range={span}" if span else ""), token=self.token)
        self.assertEqual(answer.code, 200, answer.body)
        body = self.h.json(answer)
        Draft202012Validator(DASHBOARD_SCHEMA).validate(body)
        for name, values in body["series"].items():
            self.assertEqual(len(values), len(body["series"]["time"]), name)
        return body


class DashboardLoginTests(DashboardBase):
    """The login side, from known audit entries."""

    def setUp(self) -> None:
        super().setUp()
        now = self.now
        self.h.db.run(insert_entries, [
            # the minute in progress
            entry(now - 10, "alice"), entry(now - 9, "alice"), entry(now - 8, "alice"),
            entry(now - 7, "bob", "failure", "192.0.2.7", latency=100.0),
            # two minutes and a half before
            entry(now - 150, "bob", "failure", "192.0.2.7", latency=250.0),
            entry(now - 149, "bob", "failure", "192.0.2.7", latency=250.0),
            entry(now - 148, "carol", "failure", "192.0.2.8", latency=250.0),
            entry(now - 147, "", "refused", "", latency=0.5),
            # two hours before: the day's, not the hour's
            entry(now - 7200, "dave", latency=3.0), entry(now - 7100, "mallory", "failure", "198.51.100.1"),
            # two days before: neither's
            entry(now - 2 * DAY, "old", latency=3.0), entry(now - 2 * DAY, "old", "failure", "198.51.100.2"),
        ])

    def test_hour(self) -> None:
        """Per minute: logins/s, success ratio, latency percentiles; active users; top failing users and IPs."""
        body = self.dashboard()
        self.assertEqual((body["range"], body["step"], body["now"]), ("hour", 60, self.now))
        series = body["series"]
        self.assertEqual(series["time"][-1], START)
        self.assertEqual(series["time"][0], START - 59 * 60)
        # The minute in progress: 4 attempts in its first 30 s.
        self.assertEqual(series["logins_per_s"][-1], round(4 / 30, 4))
        self.assertEqual(series["success_ratio"][-1], 0.75)
        self.assertEqual(series["latency_p50_ms"][-1], at(1.0))
        self.assertEqual(series["latency_p99_ms"][-1], at(100.0))
        # START - 120 .. START - 60: 4 attempts in a whole minute, none a success.
        self.assertEqual(series["time"][-3], START - 120)
        self.assertEqual(series["logins_per_s"][-3], round(4 / 60, 4))
        self.assertEqual(series["success_ratio"][-3], 0.0)
        self.assertEqual(series["latency_p50_ms"][-3], at(250.0))
        # Minutes without an attempt.
        self.assertEqual((series["logins_per_s"][-2], series["success_ratio"][-2], series["latency_p50_ms"][-2],
                          series["latency_p99_ms"][-2]), (0.0, None, None, None))
        self.assertEqual(sum(series["logins_per_s"][:-3]), 0.0)
        self.assertEqual(body["active_users"], 1)
        self.assertEqual(body["top_failing_users"], [{"user": "bob", "count": 3}, {"user": "carol", "count": 1}])
        self.assertEqual(body["top_failing_ips"], [{"ip": "192.0.2.7", "count": 3}, {"ip": "192.0.2.8", "count": 1}])
        totals = body["totals"]
        self.assertEqual((totals["logins"], totals["successes"], totals["failures"], totals["success_ratio"]),
                         (8, 3, 4, 0.375))
        self.assertEqual((totals["latency_p50_ms"], totals["latency_p99_ms"]), (at(1.0), at(250.0)))

    def test_day(self) -> None:
        """The day: 96 quarter-hours; the entries of two hours ago count, those of two days ago do not."""
        body = self.dashboard("day")
        self.assertEqual((body["range"], body["step"], len(body["series"]["time"])), ("day", 900, 96))
        series = body["series"]
        self.assertEqual(series["logins_per_s"][-1], round(4 / 30, 4))  # the quarter in progress: its first 30 s
        self.assertEqual(series["logins_per_s"][-2], round(4 / 900, 4))
        self.assertEqual(series["time"][-9], START - 8 * 900)  # START - 7200: dave's success
        self.assertEqual((series["logins_per_s"][-9], series["success_ratio"][-9], series["latency_p50_ms"][-9]),
                         (round(2 / 900, 4), 0.5, at(1.0)))
        self.assertEqual(body["active_users"], 2)
        self.assertEqual(body["top_failing_users"][-1], {"user": "mallory", "count": 1})
        self.assertEqual(body["totals"]["logins"], 10)

    def test_top_ten(self) -> None:
        """At most ten users and IPs, most failures first, ties by name."""
        self.h.db.run(insert_entries, [entry(self.now - 1, f"user{i:02d}", "failure", f"203.0.113.{i}")
                                       for i in range(12) for _ in range(i % 3 + 1)])
        body = self.dashboard()
        self.assertEqual(len(body["top_failing_users"]), 10)
        self.assertEqual([u["user"] for u in body["top_failing_users"][:5]],
                         ["bob", "user02", "user05", "user08", "user11"])
        self.assertEqual(len(body["top_failing_ips"]), 10)

    def test_bad_range(self) -> None:
        """A range other than hour or day is refused, naming the parameter."""
        answer = self.h.call("GET", "/api/dashboard?range=week", token=self.token)
        self.assertEqual(answer.code, 400)
        self.assertIn("'range'", self.h.json(answer)["error"])


class DashboardWithoutServerTests(DashboardBase):
    """Without the server's parts (and without entries): empty series, nothing fails."""

    def test_empty(self) -> None:
        """No logins: zero rates, None ratios and latencies; no mail figures at all."""
        body = self.dashboard()
        series = body["series"]
        self.assertEqual(set(series["logins_per_s"]), {0.0})
        for name in ("success_ratio", "latency_p50_ms", "latency_p99_ms", "messages_received",
                     "messages_delivered", "messages_deferred", "messages_failed", "queue_depth"):
            self.assertEqual(set(series[name]), {None}, name)
        self.assertEqual((body["active_users"], body["top_failing_users"], body["top_failing_ips"]), (0, [], []))
        self.assertEqual(body["totals"], {"logins": 0, "successes": 0, "failures": 0, "success_ratio": None,
                                          "latency_p50_ms": None, "latency_p99_ms": None, "messages_received": None,
                                          "messages_delivered": None, "messages_deferred": None,
                                          "messages_failed": None, "queue_depth": None})


def fake_server() -> SimpleNamespace:
    """The counters the sampler reads: SMTP's received messages, the delivery queue's stats and depth."""
    smtp = SimpleNamespace(received_messages=0)
    stats_ = SimpleNamespace(delivered_messages=0, deferred_messages=0, failed_messages=0)
    delivery = SimpleNamespace(stats=stats_, depth=0)
    return SimpleNamespace(metrics=SimpleNamespace(smtp=smtp), delivery=delivery)


def count(server: SimpleNamespace, received: int = 0, delivered: int = 0, deferred: int = 0, failed: int = 0,
          depth: int | None = None) -> None:
    server.metrics.smtp.received_messages += received
    stats_ = server.delivery.stats
    stats_.delivered_messages += delivered
    stats_.deferred_messages += deferred
    stats_.failed_messages += failed
    if depth is not None:
        server.delivery.depth = depth


class SamplerTests(SynchronousTestCase):
    """The ring buffer of the server's counters, sampled every minute."""

    def test_sampled_every_minute(self) -> None:
        """The service samples at its start and every 60 s: each sample holds what the counters grew by."""
        clock, server = Clock(), fake_server()
        clock.advance(START)
        sampler = ServerSampler(server, clock)
        service = sampler.service()
        service.startService()
        self.addCleanup(service.stopService)
        count(server, received=5, delivered=3, depth=2)
        clock.advance(60)
        count(server, received=1, deferred=2, failed=1, depth=7)
        clock.advance(60)
        self.assertEqual([(s.time, s.growth, s.depth) for s in sampler.samples], [
            (START, (None, None, None, None), 0), (START + 60, (5, 3, 0, 0), 2), (START + 120, (1, 0, 2, 1), 7)])

    def test_bounded(self) -> None:
        """At most a day of samples (1440) is kept, the oldest forgotten first."""
        clock = Clock()
        sampler = ServerSampler(fake_server(), clock)
        for _ in range(CAPACITY + 100):
            sampler.sample()
            clock.advance(60)
        self.assertEqual(len(sampler.samples), CAPACITY)
        self.assertEqual(sampler.samples[0].time, 100 * 60)

    def test_restarted_counter(self) -> None:
        """A counter that went down (its part made again) counts from zero."""
        clock, server = Clock(), fake_server()
        sampler = ServerSampler(server, clock)
        count(server, received=10)
        sampler.sample()
        server.metrics.smtp.received_messages = 4
        sampler.sample()
        self.assertEqual(sampler.samples[-1].growth[0], 4)

    def test_missing_parts(self) -> None:
        """Without SMTP or a delivery queue, their figures are None."""
        server = fake_server()
        server.metrics = None
        sampler = ServerSampler(server, Clock())
        sampler.sample()
        sampler.sample()
        self.assertEqual((sampler.samples[-1].growth, sampler.samples[-1].depth), ((None, 0, 0, 0), 0))


class DashboardMailTests(DashboardBase):
    """The mail series, from the sampler running on the harness's clock and the live counters."""

    def harness(self) -> AdminHarness:
        self.server = fake_server()
        return AdminHarness(self, metrics=self.server.metrics, delivery=self.server.delivery)

    def test_series(self) -> None:
        """Each minute's growth and the last queue depth in it; the minute in progress from the live counters."""
        service = sampler_of(self.h.ctx).service()
        service.startService()  # first sample (the baseline) at START + 30
        self.addCleanup(service.stopService)
        count(self.server, received=4, delivered=2, depth=3)
        self.h.clock.advance(60)  # START + 90
        count(self.server, received=1, deferred=1, failed=1, depth=1)
        self.h.clock.advance(50)  # START + 140: the sample at START + 150 is not taken yet
        count(self.server, received=2, delivered=5, depth=0)
        body = self.dashboard()
        series = body["series"]
        self.assertEqual(series["time"][-3:], [START, START + 60, START + 120])
        self.assertEqual(series["messages_received"][-4:], [None, None, 4, 3])
        self.assertEqual(series["messages_delivered"][-4:], [None, None, 2, 5])
        self.assertEqual(series["messages_deferred"][-4:], [None, None, 0, 1])
        self.assertEqual(series["messages_failed"][-4:], [None, None, 0, 1])
        self.assertEqual(series["queue_depth"][-4:], [None, 0, 3, 0])
        self.assertEqual(set(series["messages_received"][:-2]), {None})
        totals = body["totals"]
        self.assertEqual((totals["messages_received"], totals["messages_delivered"], totals["messages_deferred"],
                          totals["messages_failed"], totals["queue_depth"]), (7, 7, 1, 1, 0))
        day = self.dashboard("day")["series"]
        self.assertEqual((day["messages_received"][-1], day["queue_depth"][-1]), (7, 0))

    def test_without_sampling(self) -> None:
        """Before any sample (no sampling service): only the queue depth now, in the step in progress."""
        count(self.server, received=4, depth=6)
        series = self.dashboard()["series"]
        self.assertEqual((series["messages_received"][-1], series["queue_depth"][-1]), (None, 6))
