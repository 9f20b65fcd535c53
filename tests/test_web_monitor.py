"""
The monitoring and admin routes (L{gomail.web.monitor.MonitorApp}) over a real
spool, failed store and delivery queue in a temporary directory, with mail
received by a real SMTP server, all on a Clock with synchronous I/O. Requests go
through treq's StubTreq over the tree build_http serves (Guarded around the
Klein app). The JSON of C{/health} and C{/metrics} is the Go relay's contract.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.auth.checker import LoginAttempt
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.client import ConnectionFailure
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.delivery.router import Router
from gomail.metrics import Metrics
from gomail.root import build_service
from gomail.servicekit import ListeningService
from gomail.spool.envelope import Envelope, Recipient
from gomail.state.memory import MemoryStateStore
from gomail.web.guard import HostNames
from gomail.web.http import Guarded, LimitedSite, PeerAccess
from gomail.web.monitor import CHECK_TIMEOUT, PROBE_SECONDS, MonitorApp
from tests.authtesting import MemoryUsers, authenticator
from tests.smtphelpers import SMTPHarness, queued_id
from tests.test_delivery_queue import ScriptedAgent
from tests.test_service import config_in
from tests.test_smtp_auth import BrokenStore
from tests.webtesting import Answer, Browser, settle

START = 1_700_000_000.0
STAMP = "2023-11-14T22:13:20Z"  # START in the seed's timestamp format
URL = "http://localhost:8025"
#: What gomail's own clients (curl in the README, scripts) send on a state-changing route.
PROGRAM = {"X-Gomail-Request": "1"}
SEED_HEALTH_DETAILS = {"disk_space_available_mb", "queued_emails", "failed_emails",
                       "total_emails_processed", "success_rate"}
SEED_METRICS = {"total_emails", "successful_emails", "failed_emails", "total_recipients",
                "avg_processing_time_ms"}
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class HangingStore(MemoryStateStore):
    """A state store whose ping never answers (a Redis that accepted the connection, then froze)."""

    def ping(self) -> Deferred:
        return Deferred()


class MonitorTestCase(SynchronousTestCase):
    """
    A real SMTP server, spool, failed store and delivery queue (agent: a
    L{ScriptedAgent}, replying 250 unless told otherwise), the auth checker on
    a memory state store, and the metrics over all of them.
    """

    def setUp(self) -> None:
        self.harness = SMTPHarness(os.path.abspath(self.mktemp()))
        self.clock = self.harness.clock
        self.clock.advance(START)
        self.spool = self.harness.spool
        self.agent = ScriptedAgent()
        self.queue = DeliveryQueue(
            self.spool, Router(self.agent), self.clock, 5, processing_timeout=300,
            policy=RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0.2, max_age=5 * 86400),
            failed=FailedStore(self.spool, self.clock), hostname="mx.test",
            random=lambda: 0.5)
        self.spool.add_listener(self.queue.enqueue)
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        self.state = MemoryStateStore(self.clock)
        self.users = MemoryUsers()
        self.users.add("alice@example.org", "correct horse")
        self.auth = authenticator(self.clock, self.state, self.users)
        self.metrics = Metrics(smtp=self.harness.server, delivery=self.queue, auth=self.auth)

    def monitor(self, **overrides: Any) -> MonitorApp:
        """The app; low_disk_mb defaults to 0 so that the test machine's free space does not matter."""
        kwargs: dict[str, Any] = {"state": self.state, "queue_size": 1000, "low_disk_mb": 0}
        kwargs.update(overrides)
        return MonitorApp(self.metrics, self.spool, self.queue.failed, self.queue, self.clock, **kwargs)

    def browser(self, app: MonitorApp | None = None, peer: str | None = None,
                access: PeerAccess | None = None, hosts: HostNames | None = None) -> Browser:
        """A client of the tree build_http serves: the Klein app behind Guarded."""
        app = app or self.monitor()
        return Browser(Guarded(app.resource(), access or PeerAccess(), hosts), peer)

    def receive(self, *recipients: bytes, sender: bytes = b"") -> str:
        """Have the SMTP server accept one message (null sender: no bounces); returns its queue id."""
        client = self.harness.connect()
        client.start_transaction(sender=sender, recipients=recipients or (b"bob@example.com",))
        return queued_id(client.send(b"Subject: hello\r\n\r\nbody\r\n.\r\n"))

    def files(self, name: str) -> list[str]:
        return sorted(os.listdir(self.spool.path(name)))

    def json(self, answer: Answer, code: int = 200) -> Any:
        """The JSON body of C{answer}, after checking its code and content type."""
        self.assertEqual(answer.code, code, answer.body)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        return json.loads(answer.body)


class HealthTests(MonitorTestCase):
    """GET /health: the seed's JSON, and a status that says whether mail can be taken."""

    def test_seed_shape_when_all_is_well(self) -> None:
        """An idle, healthy server answers 200 JSON with the seed's fields, status ok, and every check ok."""
        body = self.json(self.browser().get(URL + "/health"))
        self.assertEqual(set(body), {"status", "timestamp", "details", "checks", "failed_checks"})
        self.assertEqual((body["status"], body["timestamp"], body["failed_checks"]), ("ok", STAMP, []))
        details = body["details"]
        self.assertEqual(set(details), SEED_HEALTH_DETAILS)
        self.assertIsInstance(details["disk_space_available_mb"], int)
        self.assertEqual(details["disk_space_available_mb"], self.spool.free_bytes() // (1024 * 1024))
        self.assertEqual({k: v for k, v in details.items() if k != "disk_space_available_mb"},
                         {"queued_emails": 0, "failed_emails": 0, "total_emails_processed": 0,
                          "success_rate": 100.0})
        self.assertEqual(set(body["checks"]), {"disk", "spool", "corrupt", "state_store", "queue"})
        self.assertEqual({c["status"] for c in body["checks"].values()}, {"ok"})

    def test_no_probe_file_left(self) -> None:
        """The write probe removes its file: tmp/ is as empty after the check as before."""
        before = self.files("tmp")
        self.json(self.browser().get(URL + "/health"))
        self.assertEqual(self.files("tmp"), before)

    def test_details_count_the_mail(self) -> None:
        """Queued, failed, processed and success rate follow what happened to real mail."""
        self.agent.script.extend([250, 550, 451])
        self.receive()
        self.receive()
        self.receive()  # deferred: still queued
        body = self.json(self.browser().get(URL + "/health"))
        details = body["details"]
        self.assertEqual((details["queued_emails"], details["failed_emails"], details["total_emails_processed"],
                          details["success_rate"]), (1, 1, 2, 50.0))
        self.assertEqual(body["status"], "ok")
        self.assertEqual((body["checks"]["queue"]["queued"], body["checks"]["queue"]["deferred"]), (1, 1))

    def test_probes_reused_for_a_second(self) -> None:
        """
        Within PROBE_SECONDS the disk probes are not repeated, so a spool that
        breaks is reported at the first request after that (a fail, then ok again
        once repaired, each seen within a second).
        """
        browser = self.browser()
        runs: list[str] = []
        real_run = self.spool.run
        self.spool.run = lambda f, *a: (runs.append(f.__name__), real_run(f, *a))[1]
        self.json(browser.get(URL + "/health"))
        self.json(browser.get(URL + "/health"))
        self.assertEqual(sorted(r for r in runs if r.startswith("_")),
                         ["_count_entries", "_free_bytes", "_probe_write"])
        os.rmdir(self.spool.path("tmp"))
        with open(self.spool.path("tmp"), "wb") as f:
            f.write(b"not a directory")
        self.assertEqual(self.json(browser.get(URL + "/health"))["status"], "ok")  # the cached probe
        self.clock.advance(PROBE_SECONDS)
        self.assertEqual(self.json(browser.get(URL + "/health"), 503)["failed_checks"], ["spool"])
        os.unlink(self.spool.path("tmp"))
        os.mkdir(self.spool.path("tmp"))
        self.assertEqual(self.json(browser.get(URL + "/health"), 503)["status"], "fail")  # the cached failure
        self.clock.advance(PROBE_SECONDS)
        self.assertEqual(self.json(browser.get(URL + "/health"))["status"], "ok")

    def test_unwritable_spool_fails(self) -> None:
        """
        With tmp/ replaced by a file (unwritable even for root) the answer is 503,
        status fail, and the spool check is the one named.
        """
        os.rmdir(self.spool.path("tmp"))
        with open(self.spool.path("tmp"), "wb") as f:
            f.write(b"not a directory")
        body = self.json(self.browser().get(URL + "/health"), 503)
        self.assertEqual(body["status"], "fail")
        self.assertEqual(body["failed_checks"], ["spool"])
        self.assertEqual(body["checks"]["spool"]["status"], "fail")
        self.assertIn("spool not writable", body["checks"]["spool"]["error"])
        self.assertEqual(set(body["details"]), SEED_HEALTH_DETAILS)

    def test_below_minimum_free_space_fails(self) -> None:
        """Free space under spool.minFreeSpaceMB (intake refuses mail then) is a fail, 503."""
        self.spool.min_free_bytes = 2 ** 62
        body = self.json(self.browser().get(URL + "/health"), 503)
        self.assertEqual((body["status"], body["failed_checks"]), ("fail", ["disk"]))
        self.assertIn("minFreeSpaceMB", body["checks"]["disk"]["error"])

    def test_low_disk_is_degraded(self) -> None:
        """Free space under monitor.lowDiskSpaceMB is degraded (still 200), the disk check named."""
        body = self.json(self.browser(self.monitor(low_disk_mb=10 ** 12)).get(URL + "/health"))
        self.assertEqual((body["status"], body["failed_checks"]), ("degraded", ["disk"]))
        self.assertEqual(body["checks"]["disk"]["status"], "degraded")
        self.assertEqual(body["checks"]["disk"]["free_mb"], body["details"]["disk_space_available_mb"])

    def test_state_store_down_is_degraded(self) -> None:
        """A state store whose ping fails makes the server degraded, not failed: mail still flows."""
        body = self.json(self.browser(self.monitor(state=BrokenStore())).get(URL + "/health"))
        self.assertEqual((body["status"], body["failed_checks"]), ("degraded", ["state_store"]))
        self.assertIn("Redis unreachable", body["checks"]["state_store"]["error"])

    def test_state_store_ping_times_out(self) -> None:
        """A ping that never answers is cut after CHECK_TIMEOUT seconds on the clock: degraded."""
        browser = self.browser(self.monitor(state=HangingStore(self.clock)))
        d = browser.stub.get(URL + "/health")
        browser.stub.flush()
        self.assertNoResult(d)
        self.clock.advance(CHECK_TIMEOUT)
        response = settle(d, browser.stub)
        body = json.loads(settle(browser.stub.content(response), browser.stub))
        self.assertEqual((response.code, body["status"], body["failed_checks"]), (200, "degraded", ["state_store"]))

    def test_failing_smarthost_is_degraded(self) -> None:
        """After a smarthost refused a connection, the smarthost check names it and the status is degraded."""
        primary, backup = Smarthost("primary.test", 587, priority=0), Smarthost("backup.test", 587, priority=10)
        relay = RelayAgent([primary, backup], lambda s: fail(ConnectionFailure(451, "4.4.1 refused")),
                           self.clock, 20, 0, True)
        healthy = self.json(self.browser(self.monitor(relay=relay)).get(URL + "/health"))
        self.assertEqual((healthy["status"], healthy["checks"]["smarthost"]), ("ok", {"status": "ok", "failing": []}))
        envelope = Envelope(id="q1", sender="", recipients=[Recipient("bob@example.org")], received=START)
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
        self.successResultOf(relay.deliver(envelope, path, envelope.pending()))
        body = self.json(self.browser(self.monitor(relay=relay)).get(URL + "/health"))
        self.assertEqual((body["status"], body["failed_checks"]), ("degraded", ["smarthost"]))
        self.assertEqual(body["checks"]["smarthost"]["failing"], ["primary.test:587", "backup.test:587"])

    def test_writer_process_down_fails(self) -> None:
        """With the spool writer process running the check is ok with its pid; while it is down, health fails (503)."""

        class Process:
            pid: int | None = 4242
            restarts = 0

        process = Process()
        body = self.json(self.browser(self.monitor(writer_process=process)).get(URL + "/health"))
        self.assertEqual((body["status"], body["checks"]["spool_writer"]),
                         ("ok", {"status": "ok", "pid": 4242, "restarts": 0}))
        process.pid, process.restarts = None, 1
        body = self.json(self.browser(self.monitor(writer_process=process)).get(URL + "/health"), 503)
        self.assertEqual((body["status"], body["failed_checks"]), ("fail", ["spool_writer"]))
        self.assertEqual(body["checks"]["spool_writer"]["restarts"], 1)
        self.assertIn("451", body["checks"]["spool_writer"]["error"])

    def test_queue_near_its_limit_is_degraded(self) -> None:
        """With the queue at 90% of queueSize the queue check is degraded."""
        self.agent.script.extend(["hold"])
        self.receive()
        body = self.json(self.browser(self.monitor(queue_size=1)).get(URL + "/health"))
        self.assertEqual((body["status"], body["failed_checks"]), ("degraded", ["queue"]))
        self.assertEqual((body["checks"]["queue"]["queued"], body["checks"]["queue"]["active"]), (1, 1))

    def test_damaged_queue_entry_is_degraded(self) -> None:
        """
        A deferred message whose file was overwritten with random bytes of the
        same size is moved to corrupt/ at its next attempt instead of being
        delivered: /health turns degraded (check "corrupt", with the count)
        and gomail_spool_corrupt_total counts it; once a human has cleared
        corrupt/, health is ok again.
        """
        self.agent.script.extend([451])
        queue_id = self.receive(sender=b"alice@example.org")
        path = self.spool.message_path(queue_id)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(os.urandom(size))
        self.clock.advance(300)
        self.assertEqual(len(self.agent.calls), 1)  # not given to the agent again
        self.assertEqual(self.files("corrupt"), [queue_id + ".eml", queue_id + ".json"])
        browser = self.browser()
        body = self.json(browser.get(URL + "/health"))
        self.assertEqual((body["status"], body["failed_checks"]), ("degraded", ["corrupt"]))
        check = body["checks"]["corrupt"]
        self.assertEqual((check["entries"], check["moved_since_start"]), (1, 1))
        self.assertIn("1 queue entries in", check["error"])
        metrics = browser.get(URL + "/metrics?format=prometheus").body.decode()
        self.assertIn("gomail_spool_corrupt_total 1.0", metrics)
        for name in self.files("corrupt"):
            os.unlink(self.spool.path("corrupt", name))
        self.clock.advance(PROBE_SECONDS)
        self.assertEqual(self.json(browser.get(URL + "/health"))["status"], "ok")

    def test_fail_outranks_degraded(self) -> None:
        """An unwritable spool and a down state store together are a fail naming both."""
        os.rmdir(self.spool.path("tmp"))
        with open(self.spool.path("tmp"), "wb"):
            pass
        body = self.json(self.browser(self.monitor(state=BrokenStore())).get(URL + "/health"), 503)
        self.assertEqual((body["status"], body["failed_checks"]), ("fail", ["spool", "state_store"]))

    def test_head(self) -> None:
        """HEAD /health answers the same status with no body (container health checks use it)."""
        answer = self.browser().request("HEAD", URL + "/health")
        self.assertEqual((answer.code, answer.body), (200, b""))


class MetricsTests(MonitorTestCase):
    """GET /metrics: the seed's JSON by default, Prometheus and OpenMetrics on request."""

    def deliver_some(self) -> None:
        """Three messages (four recipients): one delivered in 0.25 s, one failed (5xx), one deferred."""
        self.agent.script.extend(["hold", 550, 451])
        self.receive(b"bob@example.com", b"carol@example.com")
        self.clock.advance(0.25)
        self.agent.hold.pop().callback({"bob@example.com": (250, "2.0.0 Ok"), "carol@example.com": (250, "2.0.0 Ok")})
        self.receive()
        self.receive()

    def test_seed_json_by_default(self) -> None:
        """Without Accept or format the answer is the seed's JSON, its numbers following real mail."""
        self.deliver_some()
        body = self.json(self.browser().get(URL + "/metrics"))
        self.assertEqual(body, {"total_emails": 3, "successful_emails": 1, "failed_emails": 1,
                                "total_recipients": 4, "avg_processing_time_ms": round(250 / 3, 1)})

    def test_seed_json_when_idle(self) -> None:
        """Before any mail every seed field is there, at zero."""
        body = self.json(self.browser().get(URL + "/metrics"))
        self.assertEqual(set(body), SEED_METRICS)
        self.assertEqual(set(body.values()), {0})

    def test_json_asked_for(self) -> None:
        """?format=json and Accept: application/json give the same JSON."""
        browser = self.browser()
        self.assertEqual(set(self.json(browser.get(URL + "/metrics?format=json"))), SEED_METRICS)
        self.assertEqual(set(self.json(browser.get(URL + "/metrics", headers={"Accept": "application/json"}))),
                         SEED_METRICS)

    def samples(self, text: str) -> dict[tuple[str, tuple], float]:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def test_prometheus_on_accept(self) -> None:
        """Accept: text/plain;version=0.0.4 (what Prometheus sends) gives the text format with the counters."""
        self.deliver_some()
        answer = self.browser().get(URL + "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        self.assertEqual((answer.code, answer.header("Content-Type")), (200, PROMETHEUS))
        samples = self.samples(answer.body.decode())
        self.assertEqual(samples[("gomail_messages_received_total", ())], 3)
        self.assertEqual(samples[("gomail_recipients_received_total", ())], 4)
        self.assertEqual(samples[("gomail_messages_total", (("outcome", "delivered"),))], 1)
        self.assertEqual(samples[("gomail_messages_total", (("outcome", "failed"),))], 1)
        self.assertEqual(samples[("gomail_queue_messages", (("state", "deferred"),))], 1)
        self.assertEqual(samples[("gomail_failed_store_messages", ())], 1)
        self.assertEqual(samples[("gomail_delivery_attempt_seconds_count", ())], 3)

    def test_prometheus_writer_process(self) -> None:
        """With a writer process: gomail_spool_writer_up (1 running, 0 down) and gomail_spool_writer_restarts."""

        class Process:
            pid: int | None = 4242
            restarts = 2

        process = Process()
        self.metrics.writer_process = process
        samples = self.samples(self.browser().get(URL + "/metrics?format=prometheus").body.decode())
        self.assertEqual((samples[("gomail_spool_writer_up", ())], samples[("gomail_spool_writer_restarts_total", ())]),
                         (1, 2))
        process.pid = None
        samples = self.samples(self.browser().get(URL + "/metrics?format=prometheus").body.decode())
        self.assertEqual(samples[("gomail_spool_writer_up", ())], 0)

    def test_prometheus_by_query(self) -> None:
        """?format=prometheus gives the text format whatever the Accept header says."""
        answer = self.browser().get(URL + "/metrics?format=prometheus", headers={"Accept": "application/json"})
        self.assertEqual((answer.code, answer.header("Content-Type")), (200, PROMETHEUS))
        self.assertIn(b"# TYPE gomail_build_info gauge", answer.body)

    def test_openmetrics(self) -> None:
        """Accept: application/openmetrics-text and ?format=openmetrics give OpenMetrics, ending in # EOF."""
        browser = self.browser()
        for answer in (browser.get(URL + "/metrics", headers={"Accept": "application/openmetrics-text"}),
                       browser.get(URL + "/metrics?format=openmetrics")):
            self.assertEqual(answer.code, 200)
            self.assertTrue(answer.header("Content-Type").startswith("application/openmetrics-text"))
            self.assertTrue(answer.body.endswith(b"# EOF\n"))
            self.assertIn(b"gomail_build_info", answer.body)

    def test_bad_format(self) -> None:
        """An unknown format is a 400 with a JSON error naming the choices."""
        body = self.json(self.browser().get(URL + "/metrics?format=xml"), 400)
        self.assertIn("prometheus", body["error"])

    def test_no_personal_data_in_labels(self) -> None:
        """
        After logins (good, bad, unknown user) and mail between real addresses,
        no label in the Prometheus output carries a user name, an address or an IP.
        """
        attempts = [("alice@example.org", "correct horse"), ("alice@example.org", "wrong"),
                    ("mallory@evil.example", "guess")]
        for name, password in attempts:
            d = self.auth.authenticate(LoginAttempt(name, password, "198.51.100.23", "smtp"))
            d.addErrback(lambda f: None)
            self.successResultOf(d)
        self.agent.script.extend([250, 550])
        self.receive(b"bob@example.com", sender=b"alice@example.org")
        self.receive(b"dave@example.net")
        answer = self.browser().get(URL + "/metrics?format=prometheus")
        text = answer.body.decode()
        families = list(text_string_to_metric_families(text))
        values = {v for family in families for s in family.samples for v in s.labels.values()}
        self.assertIn("failure", values)  # the auth counters are there, labelled by result
        for secret in ("alice", "mallory", "bob", "dave", "example", "198.51.100.23", "@", "correct horse"):
            self.assertFalse([v for v in values if secret in v], secret)
        self.assertNotIn("alice", text)
        self.assertNotIn("@", text)
        names = {k for family in families for s in family.samples for k in s.labels}
        self.assertLessEqual(names, {"version", "reason", "outcome", "state", "protocol", "result", "kind", "le"})


class RetryFailedTests(MonitorTestCase):
    """POST /admin/retry-failed: failed/ back into queue/."""

    def fail_two(self) -> list[str]:
        """Two messages refused 5xx into failed/; their next attempts will be deferred (4xx)."""
        self.agent.script.extend([550, 550, 451, 451])
        ids = [self.receive(), self.receive()]
        self.assertEqual(self.files("failed"), sorted(i + ".json" for i in ids))
        return ids

    def test_retry_all(self) -> None:
        """Without an id every failed message goes back to queue/ and the count is answered."""
        ids = self.fail_two()
        body = self.json(self.browser().post(URL + "/admin/retry-failed", headers=PROGRAM))
        self.assertEqual(body, {"requeued": 2})
        self.assertEqual(self.files("failed"), [])
        self.assertEqual(self.files("queue"), sorted(f"{i}.{ext}" for i in ids for ext in ("eml", "json")))
        self.assertEqual(sorted(call[0] for call in self.agent.calls[-2:]), sorted(ids))  # tried again at once
        self.assertEqual(self.spool.queued, 2)

    def test_retry_one(self) -> None:
        """?id= requeues that message only and echoes the id."""
        first, second = self.fail_two()
        body = self.json(self.browser().post(URL + "/admin/retry-failed?id=" + second, headers=PROGRAM))
        self.assertEqual(body, {"requeued": 1, "id": second})
        self.assertEqual(self.files("failed"), [first + ".json"])
        self.assertEqual(self.files("queue"), [second + ".eml", second + ".json"])

    def test_nothing_to_retry(self) -> None:
        """With failed/ empty the answer is a count of zero."""
        self.assertEqual(self.json(self.browser().post(URL + "/admin/retry-failed", headers=PROGRAM)), {"requeued": 0})

    def test_unknown_id(self) -> None:
        """An id that is not in failed/ is a 404 JSON naming it, and nothing moves."""
        ids = self.fail_two()
        body = self.json(self.browser().post(URL + "/admin/retry-failed?id=0123abcd", headers=PROGRAM), 404)
        self.assertEqual(body, {"error": "no such failed message", "id": "0123abcd"})
        self.assertEqual(self.files("failed"), sorted(i + ".json" for i in ids))

    def test_bad_id(self) -> None:
        """Ids that could leave failed/ (paths, dots), empty or repeated ids are 400 JSON."""
        self.fail_two()
        browser = self.browser()
        for query in ("id=..", "id=../queue/x", "id=a%2Fb", "id=", "id=" + "a" * 65, "id=a&id=b"):
            self.json(browser.post(URL + "/admin/retry-failed?" + query, headers=PROGRAM), 400)
        self.assertEqual(len(self.files("failed")), 2)

    def test_get_is_refused(self) -> None:
        """GET does not retry: 405 JSON with an Allow header naming POST."""
        self.fail_two()
        answer = self.browser().get(URL + "/admin/retry-failed")
        body = self.json(answer, 405)
        self.assertIn("POST", answer.header("Allow"))
        self.assertIn("POST", body["allowed"])
        self.assertEqual(len(self.files("failed")), 2)

    def test_remote_peer_cannot_retry(self) -> None:
        """A non-loopback peer gets 403 and failed/ is left alone."""
        self.fail_two()
        self.json(self.browser(peer="203.0.113.9").post(URL + "/admin/retry-failed", headers=PROGRAM), 403)
        self.assertEqual(len(self.files("failed")), 2)


class QueueSummaryTests(MonitorTestCase):
    """GET /admin/queue."""

    def test_summary(self) -> None:
        """It counts queued mail by state, the failed store, and the oldest message's age."""
        self.agent.script.extend(["hold", 451, 550])
        self.receive()
        self.clock.advance(60)
        self.receive()
        self.receive()
        self.clock.advance(40)
        body = self.json(self.browser().get(URL + "/admin/queue"))
        self.assertEqual(body, {"queued": 2, "failed": 1, "active": 1, "deferred": 1, "new": 0,
                                "oldest_age_seconds": 100.0})

    def test_empty(self) -> None:
        """An empty queue is all zeros."""
        body = self.json(self.browser().get(URL + "/admin/queue"))
        self.assertEqual(body, {"queued": 0, "failed": 0, "active": 0, "deferred": 0, "new": 0,
                                "oldest_age_seconds": 0.0})

    def test_unknown_path(self) -> None:
        """Paths the app does not serve are 404 JSON."""
        self.json(self.browser().get(URL + "/admin/nothing"), 404)


class AccessTests(MonitorTestCase):
    """The monitor behind Guarded: loopback only, unless allowFrom or the bearer token say otherwise."""

    def test_remote_peer_is_refused(self) -> None:
        """A non-loopback peer gets 403 JSON from every route."""
        browser = self.browser(peer="203.0.113.9")
        for path in ("/health", "/metrics", "/admin/queue"):
            self.assertEqual(self.json(browser.get(URL + path), 403), {"error": "forbidden"})

    def test_allow_from(self) -> None:
        """A peer inside allowFrom reads /health."""
        browser = self.browser(peer="10.1.2.3", access=PeerAccess(["10.0.0.0/8"]))
        self.assertEqual(self.json(browser.get(URL + "/health"))["status"], "ok")

    def test_bearer_token(self) -> None:
        """The bearer token admits a remote peer; a wrong one does not."""
        access = PeerAccess(bearer_token="s3cret")
        browser = self.browser(peer="203.0.113.9", access=access)
        self.json(browser.get(URL + "/metrics", headers={"Authorization": "Bearer s3cret"}))
        self.json(browser.get(URL + "/metrics", headers={"Authorization": "Bearer s3cre"}), 403)

    def test_forwarded_for_is_ignored(self) -> None:
        """X-Forwarded-For: 127.0.0.1 from a remote peer is still refused."""
        browser = self.browser(peer="203.0.113.9")
        self.json(browser.get(URL + "/health", headers={"X-Forwarded-For": "127.0.0.1"}), 403)


class AdminRequestForgeryTests(MonitorTestCase):
    """
    Issue 14 item 14: what the tester sent to POST /admin/retry-failed, each
    answered 200 before, and what a legitimate client sends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.agent.script.extend([550, 451])
        self.receive()
        self.assertEqual(len(self.files("failed")), 1)

    def assertUntouched(self, answer: Answer, code: int, error: str) -> None:
        self.assertEqual(self.json(answer, code), {"error": error})
        self.assertEqual(len(self.files("failed")), 1)

    def test_dns_rebinding_host(self) -> None:
        """Host: evil.example (a browser after DNS rebinding) gets 421, on POST and on GET."""
        browser = self.browser()
        for method in ("POST", "GET"):
            answer = browser.request(method, URL + "/admin/retry-failed",
                                     headers={"Host": "evil.example", **PROGRAM})
            self.assertUntouched(answer, 421, "misdirected request: this listener does not answer to that Host")
        self.assertEqual(self.browser().get(URL + "/health", headers={"Host": "evil.example:8025"}).code, 421)

    def test_accepted_host_names(self) -> None:
        """localhost, 127.0.0.1 and [::1], with or without the port, and no Host at all are served."""
        for host in ("localhost", "localhost:8025", "127.0.0.1:8025", "[::1]:8025", "[::1]", "LOCALHOST."):
            self.assertEqual((host, self.browser().get(URL + "/health", headers={"Host": host}).code),
                             (host, 200))

    def test_configured_host_names(self) -> None:
        """monitor.hostnames replaces the default names; the listener's own address still passes."""
        browser = self.browser(hosts=HostNames(["monitor.example.org"]))
        self.assertEqual(browser.get(URL + "/health", headers={"Host": "monitor.example.org:8025"}).code, 200)
        self.assertEqual(browser.get(URL + "/health", headers={"Host": "localhost"}).code, 421)
        self.assertEqual(browser.get(URL + "/health", headers={"Host": "127.0.0.1"}).code, 200)  # its own

    def test_cross_origin_post(self) -> None:
        """A form posted from another site's page (Origin, Sec-Fetch-Site: cross-site) is refused 403."""
        form = {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded",
                "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
        self.assertUntouched(self.browser().post(URL + "/admin/retry-failed", headers=form, data=b""),
                             403, "cross-origin request refused")
        for headers in ({"Origin": "http://evil.example", **PROGRAM}, {"Sec-Fetch-Site": "cross-site", **PROGRAM},
                        {"Sec-Fetch-Site": "same-site", **PROGRAM}, {"Origin": "null", **PROGRAM},
                        {"Origin": "http://localhost:3000", **PROGRAM}, {"Origin": "https://localhost:8025", **PROGRAM}):
            self.assertUntouched(self.browser().post(URL + "/admin/retry-failed", headers=headers),
                                 403, "cross-origin request refused")

    def test_post_without_the_request_header(self) -> None:
        """A POST with neither X-Gomail-Request nor the bearer token is refused 403, even from loopback."""
        self.assertUntouched(self.browser().post(URL + "/admin/retry-failed"), 403,
                             "a state-changing request needs the X-Gomail-Request header or the bearer token")

    def test_same_origin_post_with_the_header(self) -> None:
        """A same-origin POST with X-Gomail-Request is served."""
        headers = {"Origin": "http://localhost:8025", "Sec-Fetch-Site": "same-origin", **PROGRAM}
        self.assertEqual(self.json(self.browser().post(URL + "/admin/retry-failed", headers=headers)),
                         {"requeued": 1})

    def test_bearer_token_replaces_the_header(self) -> None:
        """The bearer token is enough on a state-changing route, from anywhere."""
        browser = self.browser(peer="203.0.113.9", access=PeerAccess(bearer_token="s3cret"))
        answer = browser.post(URL + "/admin/retry-failed", headers={"Authorization": "Bearer s3cret"})
        self.assertEqual(self.json(answer), {"requeued": 1})

    def test_forwarded_by_a_local_proxy(self) -> None:
        """X-Forwarded-For: 203.0.113.9 through a local proxy that is not trusted: 403, the client is unknown."""
        answer = self.browser().post(URL + "/admin/retry-failed",
                                     headers={"X-Forwarded-For": "203.0.113.9", **PROGRAM})
        self.assertUntouched(answer, 403, "forbidden")
        self.json(self.browser().get(URL + "/health", headers={"X-Forwarded-For": "203.0.113.9"}), 403)

    def test_forwarded_by_a_trusted_proxy(self) -> None:
        """A trusted proxy's X-Forwarded-For names the client, judged by allowFrom."""
        trusted = PeerAccess(["10.0.0.0/8"], trusted_proxies=["127.0.0.1/32"])
        browser = self.browser(access=trusted)
        answer = browser.post(URL + "/admin/retry-failed", headers={"X-Forwarded-For": "203.0.113.9", **PROGRAM})
        self.assertUntouched(answer, 403, "forbidden")
        answer = browser.post(URL + "/admin/retry-failed",
                              headers={"X-Forwarded-For": "127.0.0.1, 10.1.2.3", **PROGRAM})
        self.assertEqual(self.json(answer), {"requeued": 1})


class WiringTests(SynchronousTestCase):
    """build_http gives the monitor listener the configured access rules and limits."""

    def test_monitor_listener(self) -> None:
        """enableHealthCheck: one listener on monitor.listen, a LimitedSite over Guarded(MonitorApp)."""
        directory = os.path.abspath(self.mktemp())
        config = config_in(directory)
        config = dataclasses.replace(config, queueSize=50, monitor=dataclasses.replace(
            config.monitor, listen=("tcp:8025:interface=127.0.0.1",), allowFrom=("10.0.0.0/8",),
            bearerToken="s3cret", hostnames=("Monitor.Example.Org", "::1"), trustedProxies=("192.0.2.7",),
            maxRequestBytes=4096, requestTimeout=7, lowDiskSpaceMB=123))
        service = build_service(config, MemoryReactorClock())
        [listener] = [s for s in service if isinstance(s, ListeningService) and s.kind == "monitor"]
        site = listener.factory
        self.assertIsInstance(site, LimitedSite)
        self.assertEqual((listener.description, site.timeOut, site.requestFactory.max_bytes),
                         ("tcp:8025:interface=127.0.0.1", 7, 4096))
        self.assertIsInstance(site.resource, Guarded)
        access = site.resource.access
        self.assertEqual([str(n) for n in access.networks], ["10.0.0.0/8"])
        self.assertEqual([str(n) for n in access.forwarded.trusted], ["192.0.2.7/32"])
        self.assertEqual(site.resource.hosts.names, {"monitor.example.org", "[::1]"})
        self.assertEqual(access.token, b"s3cret")
        app = service.monitor
        self.assertIsInstance(app, MonitorApp)
        self.assertEqual((app.queue_size, app.low_disk_mb, app.spool, app.delivery),
                         (50, 123, service.spool, service.delivery))
        self.assertIs(app.metrics, service.metrics)

    def test_disabled(self) -> None:
        """enableHealthCheck false: no monitor listener at all."""
        config = config_in(os.path.abspath(self.mktemp()), enableHealthCheck=False)
        service = build_service(config, MemoryReactorClock())
        self.assertEqual([s for s in service if isinstance(s, ListeningService) and s.kind == "monitor"], [])
