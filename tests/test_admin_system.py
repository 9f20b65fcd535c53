"""
The admin API's blacklist routes (L{gomail.admin.api_system}) and queue
routes (L{gomail.admin.api_queue}): over a real SQLite user database, a real
blacklist, and a real spool with its delivery queue, failed store and queue
control, all synchronous on a clock.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gomail.admin import api_queue
from gomail.auth import userdb
from gomail.auth.blacklist import Blacklist
from gomail.control.server import QueueControl
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.spool.envelope import FAILED, Envelope
from tests.admintesting import AdminHarness
from tests.spooltesting import listing, make_spool, new_envelope
from tests.test_delivery_queue import CONTENT, START, ScriptedAgent


def op_log(h: AdminHarness) -> list[tuple[str, str, str, Any, Any]]:
    """The operation log's entries but logins: (actor, action, target, before, after)."""
    rows = h.db.run(lambda c: c.execute("SELECT actor, action, target, before, after FROM op_log "
                                        "WHERE action NOT LIKE 'login%' ORDER BY id").fetchall())
    return [(a, b, c, json.loads(d) if d else None, json.loads(e) if e else None) for a, b, c, d, e in rows]


class DatabaseUsers:
    """What the blacklist reads of the user store, over the harness's database."""

    def __init__(self, h: AdminHarness) -> None:
        self.h = h

    def list_blacklist(self, now: float) -> Deferred:
        return self.h.db(userdb.list_blacklist, now)


class BlacklistTests(TestCase):
    """GET, POST and DELETE /api/blacklist."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        # The running server's blacklist, reloading on its own only hourly: a change must not wait for that.
        self.blacklist = Blacklist(DatabaseUsers(self.h), self.h.clock, 3600)
        self.h.server.auth.authenticator = SimpleNamespace(blacklist=self.blacklist)
        self.token = self.h.token("root", "admin")

    def listed(self, ip: str) -> bool:
        return bool(self.successResultOf(self.blacklist.contains(ip)))

    def add(self, **body: Any) -> Any:
        return self.h.call("POST", "/api/blacklist", token=self.token, body=body)

    def items(self) -> list[dict[str, Any]]:
        answer = self.h.call("GET", "/api/blacklist", token=self.token)
        self.assertEqual(answer.code, 200, answer.body)
        items: list[dict[str, Any]] = self.h.json(answer)["items"]
        return items

    def test_add_list_remove(self) -> None:
        """An entry is added (its network made canonical), listed, removed; each change is in the operation log."""
        now = self.h.clock.seconds()
        answer = self.add(network="192.0.2.7/24", reason="brute force", expires_in=3600)
        self.assertEqual(answer.code, 201, answer.body)
        entry = {"network": "192.0.2.0/24", "reason": "brute force", "expires_at": now + 3600, "created": now}
        self.assertEqual(self.h.json(answer), entry)
        self.assertEqual(self.items(), [entry])
        removed = self.h.call("DELETE", "/api/blacklist?network=192.0.2.0%2F24", token=self.token)
        self.assertEqual((removed.code, self.h.json(removed)), (200, {"removed": "192.0.2.0/24"}))
        self.assertEqual(self.items(), [])
        self.assertEqual(op_log(self.h), [("root", "blacklist.add", "192.0.2.0/24", None, entry),
                                          ("root", "blacklist.remove", "192.0.2.0/24", entry, None)])

    def test_applies_at_once(self) -> None:
        """The running blacklist refuses the address at once after an add, and lets it in at once after a remove."""
        self.assertFalse(self.listed("2001:db8::5"))
        self.assertEqual(self.add(network="2001:DB8::5").code, 201)
        self.assertTrue(self.listed("2001:db8::5"))
        answer = self.h.call("DELETE", "/api/blacklist?network=2001:db8::5", token=self.token)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertFalse(self.listed("2001:db8::5"))

    def test_for_good_and_expiry(self) -> None:
        """Without an expiry an entry stays; one given expires_at leaves the list once that time has passed."""
        now = self.h.clock.seconds()
        self.assertEqual(self.add(network="198.51.100.1").code, 201)
        self.assertEqual(self.add(network="198.51.100.2", expires_at=now + 10).code, 201)
        self.assertEqual([(e["network"], e["expires_at"]) for e in self.items()],
                         [("198.51.100.1/32", None), ("198.51.100.2/32", now + 10)])
        self.h.clock.advance(10)
        self.assertEqual([e["network"] for e in self.items()], ["198.51.100.1/32"])

    def test_add_again_replaces(self) -> None:
        """Adding a listed network again replaces its entry (the log shows both)."""
        self.assertEqual(self.add(network="192.0.2.1", reason="one").code, 201)
        self.assertEqual(self.add(network="192.0.2.1/32", reason="two", expires_in=60).code, 201)
        self.assertEqual([(e["network"], e["reason"]) for e in self.items()], [("192.0.2.1/32", "two")])
        before, after = op_log(self.h)[-1][3:]
        self.assertEqual((before["reason"], after["reason"]), ("one", "two"))

    def test_validation(self) -> None:
        """Bad input is 422 naming the field, and changes nothing."""
        now = self.h.clock.seconds()
        cases = [({"network": "192.0.2.300"}, "'network'"), ({"network": "not a network"}, "'network'"),
                 ({"reason": "x"}, "'network'"), ({"network": 7}, "'network'"),
                 ({"network": "192.0.2.1", "expires_at": now}, "'expires_at'"),
                 ({"network": "192.0.2.1", "expires_in": 0}, "'expires_in'"),
                 ({"network": "192.0.2.1", "expires_in": 5, "expires_at": now + 5}, "'expires_in'"),
                 ({"network": "192.0.2.1", "reason": 5}, "'reason'"),
                 ({"network": "192.0.2.1", "other": 5}, "'other'")]
        for body, field in cases:
            answer = self.add(**body)
            self.assertEqual(answer.code, 422, (body, answer.body))
            self.assertIn(field, self.h.json(answer)["error"], body)
        self.assertEqual(self.items(), [])
        self.assertEqual(op_log(self.h), [])

    def test_remove_errors(self) -> None:
        """DELETE needs its network (400), a valid one (422), and one listed (404)."""
        for query, code in (("", 400), ("?network=nope", 422), ("?network=192.0.2.9", 404),
                            ("?network=1&network=2", 400)):
            answer = self.h.call("DELETE", f"/api/blacklist{query}", token=self.token)
            self.assertEqual(answer.code, code, (query, answer.body))
            self.assertIn("network", self.h.json(answer)["error"])

    def test_roles(self) -> None:
        """Without a session 401; an auditor is refused (403) every blacklist route."""
        auditor = self.h.token("watcher", "auditor")
        self.assertEqual(self.h.call("GET", "/api/blacklist").code, 401)
        for method, path in (("GET", "/api/blacklist"), ("POST", "/api/blacklist"),
                             ("DELETE", "/api/blacklist?network=192.0.2.1")):
            answer = self.h.call(method, path, token=auditor, body={"network": "192.0.2.1"})
            self.assertEqual(answer.code, 403, (method, answer.body))
        self.assertEqual(self.items(), [])


class QueueTests(TestCase):
    """
    The queue routes over a real spool: C{self.deferred} (to bob, deferred
    after a 451), C{self.later} (to carol, deferred too) and C{self.failed_id}
    (to erin, in failed/ after a 550).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.spool = make_spool(os.path.abspath(self.mktemp()), self.clock)
        self.failed = FailedStore(self.spool, self.clock)
        doomed = self.commit("erin@example.com")
        doomed.recipients[0].status, doomed.recipients[0].reply = FAILED, "550 5.1.1 No such user"
        self.successResultOf(Deferred.fromCoroutine(self.failed.give_up(doomed, "<erin@example.com>: 550")))
        self.failed_id = doomed.id
        self.agent = ScriptedAgent(451, 451)
        policy = RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0.2, max_age=5 * 86400)
        self.queue = DeliveryQueue(self.spool, Router(self.agent), self.clock, 5, processing_timeout=300,
                                   policy=policy, failed=self.failed, hostname="mx.test", random=lambda: 0.5)
        self.spool.add_listener(self.queue.enqueue)
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        self.deferred = self.commit("bob@example.com").id
        self.later = self.commit("carol@example.com").id
        self.h = AdminHarness(self, spool=self.spool, delivery=self.queue,
                              queue=QueueControl(self.spool, self.queue, self.failed))
        self.admin = self.h.token("root", "admin")
        self.auditor = self.h.token("watcher", "auditor")

    def commit(self, *recipients: str) -> Envelope:
        self.clock.advance(1)  # ids sort by time: keep the order of the test
        message = self.spool.new_message()
        message.write(CONTENT)
        envelope = new_envelope(message.id, *recipients, received=self.clock.seconds(), content=CONTENT)
        envelope.next_attempt = self.clock.seconds()
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        return envelope

    def get(self, path: str, token: str | None = None) -> Any:
        answer = self.h.call("GET", path, token=token or self.auditor)
        self.assertEqual(answer.code, 200, answer.body)
        return self.h.json(answer)

    def test_list(self) -> None:
        """An auditor lists the queued messages (oldest first), then the failed one, with their envelopes."""
        body = self.get("/api/queue")
        self.assertEqual({k: body[k] for k in ("total", "queued", "failed", "page", "per_page")},
                         {"total": 3, "queued": 2, "failed": 1, "page": 1, "per_page": 50})
        self.assertEqual([(i["id"], i["state"]) for i in body["items"]],
                         [(self.deferred, "queued"), (self.later, "queued"), (self.failed_id, "failed")])
        first = body["items"][0]
        self.assertEqual(first["recipients"], ["bob@example.com"])
        self.assertEqual(first["recipient_status"], [{"address": "bob@example.com", "status": "pending",
                                                      "reply": "451 4.2.0 Try later"}])
        self.assertEqual((first["sender"], first["size"], first["attempts"], first["last_error"]),
                         ("sender@example.com", len(CONTENT), 1, "451 4.2.0 Try later"))
        self.assertEqual(first["queued_at"], START + 2)
        self.assertGreater(first["next_attempt"], self.clock.seconds())
        failed = body["items"][2]
        self.assertEqual((failed["reason"], failed["failed_at"], failed["queued_at"]),
                         ("<erin@example.com>: 550", START + 1, START + 1))
        self.assertEqual(failed["recipient_status"][0]["status"], "failed")

    def test_states_and_pages(self) -> None:
        """state picks queued or failed messages; page and per_page pick a slice of them."""
        self.assertEqual([i["id"] for i in self.get("/api/queue?state=failed")["items"]], [self.failed_id])
        queued = self.get("/api/queue?state=queued&per_page=1&page=2")
        self.assertEqual(([i["id"] for i in queued["items"]], queued["total"]), ([self.later], 2))
        self.assertEqual(self.get("/api/queue?page=9")["items"], [])
        for query in ("state=deferred", "page=0", "per_page=201", "per_page=x", "colour=red"):
            answer = self.h.call("GET", f"/api/queue?{query}", token=self.auditor)
            self.assertEqual(answer.code, 400, (query, answer.body))
            self.assertIn(query.split("=")[0], self.h.json(answer)["error"])

    def test_only_the_page_is_read(self) -> None:
        """A page reads its own envelopes only (a spool of 100,000 messages is not read per request)."""
        self.agent.script += [451] * 8  # they stay queued
        for _ in range(8):
            self.commit("dave@example.com")
        reads: list[str] = []
        original = api_queue.read_queued

        def counted(path: str) -> bytes:
            reads.append(os.path.basename(path))
            return original(path)

        self.patch(api_queue, "read_queued", counted)
        body = self.get("/api/queue?state=all&per_page=3&page=2")
        self.assertEqual(body["total"], 11)
        self.assertEqual(reads, [i["id"] + ".json" for i in body["items"]])
        self.assertEqual(len(reads), 3)

    def test_unreadable_entry(self) -> None:
        """An envelope that cannot be read is listed with its error, not a failure of the whole list."""
        with open(self.spool.path("queue", self.later + ".json"), "wb") as f:
            f.write(b"{not json")
        item = self.get("/api/queue?state=queued")["items"][1]
        self.assertEqual((item["id"], item["sender"], item["recipients"]), (self.later, "", []))
        self.assertIn("unreadable", item["error"])

    def test_show(self) -> None:
        """One message by id, queued or failed; 404 for an unknown id, 400 for a text that is no id."""
        self.assertEqual(self.get(f"/api/queue/{self.deferred}")["state"], "queued")
        self.assertEqual(self.get(f"/api/queue/{self.failed_id}")["reason"], "<erin@example.com>: 550")
        self.assertEqual(self.h.call("GET", "/api/queue/0123456789abcdef", token=self.auditor).code, 404)
        for bad in ("a.json", "..", "a%2Fb", "-x"):
            answer = self.h.call("GET", f"/api/queue/{bad}", token=self.auditor)
            self.assertIn(answer.code, (400, 404), (bad, answer.body))
        self.assertEqual(self.h.call("GET", "/api/queue/a.json", token=self.auditor).code, 400)

    def test_retry(self) -> None:
        """A failed message goes back to the queue and is delivered at once; logged as queue.retry."""
        answer = self.h.call("POST", f"/api/queue/{self.failed_id}/retry", token=self.admin)
        self.assertEqual((answer.code, self.h.json(answer)), (200, {"requeued": 1}))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(self.agent.calls[-1], (self.failed_id, ["erin@example.com"]))
        [(actor, action, target, before, after)] = op_log(self.h)
        self.assertEqual((actor, action, target, before["state"], after), ("root", "queue.retry", self.failed_id,
                                                                           "failed", {"requeued": 1}))

    def test_retry_errors(self) -> None:
        """Retrying a queued message is a conflict (409), an unknown one 404; nothing is logged."""
        answer = self.h.call("POST", f"/api/queue/{self.deferred}/retry", token=self.admin)
        self.assertEqual(answer.code, 409, answer.body)
        self.assertEqual(self.h.call("POST", "/api/queue/0123456789abcdef/retry", token=self.admin).code, 404)
        self.assertEqual(self.h.call("POST", "/api/queue/a.b/retry", token=self.admin).code, 400)
        self.assertEqual(op_log(self.h), [])

    def test_retry_failed(self) -> None:
        """Every failed message goes back to the queue."""
        answer = self.h.call("POST", "/api/queue/retry-failed", token=self.admin)
        self.assertEqual((answer.code, self.h.json(answer)), (200, {"requeued": 1, "problems": []}))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(op_log(self.h)[0][1:3], ("queue.retry", "failed/"))

    def test_flush(self) -> None:
        """Every deferred message is tried again at once (the agent is called for each)."""
        calls = len(self.agent.calls)
        answer = self.h.call("POST", "/api/queue/flush", token=self.admin)
        self.assertEqual((answer.code, self.h.json(answer)), (200, {"flushed": 2, "active": 0}))
        self.assertEqual(sorted(c[0] for c in self.agent.calls[calls:]), [self.deferred, self.later])
        self.assertEqual(self.get("/api/queue")["queued"], 0)  # the agent said 250 this time
        self.assertEqual(op_log(self.h)[0][1:], ("queue.flush", "queue/", None, {"flushed": 2, "active": 0}))

    def test_delete(self) -> None:
        """A queued and a failed message are deleted for good (their files gone); unknown ids are 404."""
        for queue_id in (self.deferred, self.failed_id):
            answer = self.h.call("DELETE", f"/api/queue/{queue_id}", token=self.admin)
            self.assertEqual((answer.code, self.h.json(answer)), (200, {"deleted": 1}))
            self.assertEqual(self.h.call("DELETE", f"/api/queue/{queue_id}", token=self.admin).code, 404)
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(listing(self.spool, "queue"), [f"{self.later}.eml", f"{self.later}.json"])
        self.assertEqual(self.queue.queued_ids(), [self.later])
        self.assertEqual([(r[1], r[2]) for r in op_log(self.h)],
                         [("queue.delete", self.deferred), ("queue.delete", self.failed_id)])

    def test_roles(self) -> None:
        """No session: 401; an auditor reads (200) but changes nothing (403)."""
        self.assertEqual(self.h.call("GET", "/api/queue").code, 401)
        self.assertEqual(self.h.call("POST", "/api/queue/flush").code, 401)
        for method, path in (("POST", f"/api/queue/{self.failed_id}/retry"), ("POST", "/api/queue/retry-failed"),
                             ("POST", "/api/queue/flush"), ("DELETE", f"/api/queue/{self.deferred}")):
            answer = self.h.call(method, path, token=self.auditor)
            self.assertEqual(answer.code, 403, (method, path, answer.body))
        self.assertEqual(len(self.get("/api/queue")["items"]), 3)

    def test_no_queue(self) -> None:
        """A server without a queue (none given) answers 503, not a failure."""
        h = AdminHarness(self)
        token = h.token("root", "admin")
        for method, path in (("GET", "/api/queue"), ("GET", "/api/queue/abc"), ("POST", "/api/queue/flush"),
                             ("POST", "/api/queue/retry-failed"), ("DELETE", "/api/queue/abc")):
            self.assertEqual(h.call(method, path, token=token).code, 503, (method, path))
