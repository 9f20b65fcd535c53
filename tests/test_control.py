"""
The control channel's commands (L{gomail.control.server}) over an in-memory
AMP connection (L{twisted.test.iosim}): what a running server does when
C{gomail queue} asks it to flush, retry or delete, and what it answers.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

import gomail
from gomail.control.commands import BadRequest, Delete, Flush, Retry, Status, UnknownMessages
from gomail.control.server import IDLE_TIMEOUT, ControlFactory, QueueControl
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.spool.jobs import SpoolFiles
from gomail.spool.writer import ImmediateWriter
from tests.spooltesting import listing, make_spool, new_envelope, read
from tests.test_delivery_queue import CONTENT, START, ScriptedAgent


class GatedWriter(ImmediateWriter):
    """An ImmediateWriter whose jobs wait while C{closed}, as a busy writer's do, until L{release}."""

    def __init__(self, files: SpoolFiles) -> None:
        super().__init__(files=files)
        self.closed = False
        self.waiting: list[tuple[Deferred, Any, dict[str, Any]]] = []

    def run(self, job: Any, **arguments: Any) -> Deferred:
        if not self.closed:
            return super().run(job, **arguments)
        d: Deferred = Deferred()
        self.waiting.append((d, job, arguments))
        return d

    def release(self) -> None:
        self.closed = False
        waiting, self.waiting = self.waiting, []
        for d, job, arguments in waiting:
            super().run(job, **arguments).chainDeferred(d)


class ControlTestCase(SynchronousTestCase):
    """A spool, its delivery queue around a scripted agent, and an AMP client connected to its control."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.spool = make_spool(os.path.abspath(self.mktemp()), self.clock)
        self.writer = self.spool.writer = GatedWriter(self.spool.files)
        self.failed = FailedStore(self.spool, self.clock)
        self.agent = ScriptedAgent()
        policy = RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0.2, max_age=5 * 86400)
        self.queue = DeliveryQueue(self.spool, Router(self.agent), self.clock, 5, processing_timeout=300,
                                   policy=policy, failed=self.failed, hostname="mx.test", random=lambda: 0.5)
        self.spool.add_listener(self.queue.enqueue)
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        self.control = QueueControl(self.spool, self.queue, self.failed)
        factory = ControlFactory(self.control, self.clock)
        self.client, self.server, self.pump = connectedServerAndClient(lambda: factory.buildProtocol(None), amp.AMP)

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """Send a command over the connection and return the server's answer."""
        d = self.client.callRemote(command, **arguments)
        self.pump.flush()
        return self.successResultOf(d)

    def refused(self, error: type[Exception], command: type[amp.Command], **arguments: Any) -> str:
        """Send a command the server refuses with C{error}; its description."""
        d = self.client.callRemote(command, **arguments)
        # Handled before the answer comes: AMP drops a connection whose answers nobody handles.
        results: list[Any] = []
        d.addBoth(results.append)
        self.pump.flush()
        [failure] = results
        self.assertIsInstance(failure.value, error)
        return str(failure.value)

    def commit(self, *recipients: str) -> str:
        """A message committed as SMTP intake commits one (the queue tries it at once)."""
        message = self.spool.new_message()
        message.write(CONTENT)
        envelope = new_envelope(message.id, *recipients, received=self.clock.seconds())
        envelope.next_attempt = self.clock.seconds()
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        self.clock.advance(1)
        return message.id

    def failed_message(self, recipient: str = "erin@example.com") -> str:
        """A message the queue gave up on (a 550): in failed/."""
        self.agent.script.append(550)
        queue_id = self.commit(recipient)
        self.assertIn(queue_id + ".json", listing(self.spool, "failed"))
        return queue_id

    def queue_files(self, queue_id: str) -> dict[str, bytes]:
        return {ext: read(self.spool.path("queue", queue_id + ext)) for ext in (".eml", ".json")}


class StatusTests(ControlTestCase):
    """Status: read-only."""

    def test_status(self) -> None:
        """The answer names the server (pid, version, spool) and its queue by state."""
        self.failed_message()
        self.agent.script.append(451)
        self.commit("bob@example.com")
        self.agent.script.append("hold")
        self.commit("carol@example.com")
        self.assertEqual(self.call(Status), {
            "pid": os.getpid(), "version": gomail.__version__, "spool": self.spool.directory,
            "queued": 2, "active": 1, "deferred": 1, "failed": 1})


class FlushTests(ControlTestCase):
    """Flush: every queued message due now, in the server's own index; no file is written."""

    def test_flush(self) -> None:
        """
        A deferred message is tried again at once; one being delivered is
        left to its attempt (counted as active); neither envelope file is
        touched by the flush.
        """
        self.agent.script.append(451)
        deferred = self.commit("bob@example.com")
        self.agent.script.append("hold")
        active = self.commit("carol@example.com")
        files = {queue_id: self.queue_files(queue_id) for queue_id in (deferred, active)}
        self.agent.script.append("hold")
        self.assertEqual(self.call(Flush), {"flushed": 1, "active": 1})
        self.assertEqual([call[0] for call in self.agent.calls], [deferred, active, deferred])
        self.assertEqual({queue_id: self.queue_files(queue_id) for queue_id in files}, files)
        for held in self.agent.hold:
            held.callback({"bob@example.com": (250, "2.0.0 Ok"), "carol@example.com": (250, "2.0.0 Ok")})
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "corrupt")), ([], []))


class RetryTests(ControlTestCase):
    """Retry: failed/ back into the server's queue, which delivers it at once."""

    def test_one(self) -> None:
        """A failed message named by id is requeued and handed to the running queue, which delivers it."""
        queue_id = self.failed_message()
        self.assertEqual(self.call(Retry, ids=[queue_id], all=False), {"requeued": 1, "problems": []})
        self.assertEqual(self.agent.calls[-1], (queue_id, ["erin@example.com"]))
        self.assertEqual((listing(self.spool, "failed"), listing(self.spool, "queue")), ([], []))

    def test_all(self) -> None:
        """all=True requeues everything in failed/."""
        ids = [self.failed_message(), self.failed_message("frank@example.com")]
        self.assertEqual(self.call(Retry, ids=[], all=True), {"requeued": 2, "problems": []})
        self.assertEqual([call[0] for call in self.agent.calls[-2:]], ids)

    def test_unknown_changes_nothing(self) -> None:
        """An id that is not in failed/ (here a queued one): refused, naming it; nothing is requeued."""
        queue_id = self.failed_message()
        self.agent.script.append(451)
        queued = self.commit("bob@example.com")
        description = self.refused(UnknownMessages, Retry, ids=[queue_id, queued], all=False)
        self.assertEqual(description, f"not in failed/: {queued}")
        self.assertEqual(listing(self.spool, "failed"), [queue_id + ".json"])

    def test_damaged_record_stays(self) -> None:
        """A record whose content fails its digest stays in failed/ and is listed as a problem."""
        queue_id = self.failed_message()
        path = self.failed.path(queue_id)
        with open(path) as f:
            record = json.load(f)
        record["content"] = record["content"].replace("body", "BODY")
        with open(path, "w") as f:
            json.dump(record, f)
        answer = self.call(Retry, ids=[queue_id], all=False)
        self.assertEqual(answer["requeued"], 0)
        [problem] = answer["problems"]
        self.assertIn(f"could not requeue failed message {queue_id}: ", problem)
        self.assertEqual(listing(self.spool, "failed"), [queue_id + ".json"])

    def test_one_move_at_a_time(self) -> None:
        """
        Two retries of one message at once (two operators, or one and the
        periodic retry): the second is told the message is being moved, and
        its queue files are written once.
        """
        queue_id = self.failed_message()
        self.writer.closed = True
        first = self.client.callRemote(Retry, ids=[queue_id], all=False)
        self.pump.flush()
        self.assertNoResult(first)
        answer = self.call(Retry, ids=[queue_id], all=False)
        self.assertEqual(answer, {"requeued": 0, "problems": [f"{queue_id}: being moved right now: try again"]})
        self.assertEqual(len(self.writer.waiting), 1)
        self.agent.script.append("hold")
        self.writer.release()
        self.pump.flush()
        self.assertEqual(self.successResultOf(first), {"requeued": 1, "problems": []})
        self.assertEqual(self.agent.calls[-1], (queue_id, ["erin@example.com"]))

    def test_stopping(self) -> None:
        """While the server stops, a retry changes nothing and says why."""
        queue_id = self.failed_message()
        self.control.stopping = True
        answer = self.call(Retry, ids=[queue_id], all=False)
        self.assertEqual(answer, {"requeued": 0, "problems": [f"{queue_id}: not requeued: the server is stopping"]})


class DeleteTests(ControlTestCase):
    """Delete: out of the server's index first, then its files; never under an attempt."""

    def test_queued_and_failed(self) -> None:
        """A deferred message and a failed one are deleted; the deferred one is never tried again."""
        failed = self.failed_message()
        self.agent.script.append(451)
        queued = self.commit("bob@example.com")
        self.assertEqual(self.call(Delete, ids=[queued, failed], all_failed=False, all=False),
                         {"deleted": 2, "busy": []})
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "failed")), ([], []))
        calls = len(self.agent.calls)
        self.clock.advance(86400)
        self.assertEqual(len(self.agent.calls), calls)

    def test_being_delivered(self) -> None:
        """A message under an attempt is not deleted: answered busy, its files stay until its attempt ends."""
        self.agent.script.append("hold")
        queue_id = self.commit("bob@example.com")
        self.assertEqual(self.call(Delete, ids=[queue_id], all_failed=False, all=False),
                         {"deleted": 0, "busy": [queue_id]})
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        self.agent.hold[0].callback({"bob@example.com": (250, "2.0.0 Ok")})
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "corrupt")), ([], []))

    def test_unknown_changes_nothing(self) -> None:
        """One unknown id among known ones: refused, naming it; nothing is deleted."""
        failed = self.failed_message()
        description = self.refused(UnknownMessages, Delete, ids=[failed, "0123456789abcdef01234"],
                                   all_failed=False, all=False)
        self.assertEqual(description, "not in queue/ or failed/: 0123456789abcdef01234")
        self.assertEqual(listing(self.spool, "failed"), [failed + ".json"])

    def test_all_failed_and_all(self) -> None:
        """all_failed empties failed/ only; all empties the queue too."""
        self.failed_message()
        self.agent.script.append(451)
        self.commit("bob@example.com")
        self.assertEqual(self.call(Delete, ids=[], all_failed=True, all=False), {"deleted": 1, "busy": []})
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        self.failed_message("frank@example.com")
        self.assertEqual(self.call(Delete, ids=[], all_failed=False, all=True), {"deleted": 2, "busy": []})
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "failed"), self.queue.depth),
                         ([], [], 0))

    def test_bad_requests(self) -> None:
        """A path for an id, ids with all, or nothing at all: refused, nothing changed."""
        failed = self.failed_message()
        self.assertEqual(self.refused(BadRequest, Delete, ids=["../failed/" + failed], all_failed=False, all=False),
                         f"not a queue id: '../failed/{failed}'")
        self.assertIn("one of the two", self.refused(BadRequest, Delete, ids=[failed], all_failed=False, all=True))
        self.assertIn("one of the two", self.refused(BadRequest, Delete, ids=[], all_failed=False, all=False))
        self.assertEqual(listing(self.spool, "failed"), [failed + ".json"])


class ConnectionTests(ControlTestCase):
    """The connection itself."""

    def test_idle_connection_closed(self) -> None:
        """A client that says nothing for IDLE_TIMEOUT seconds is disconnected."""
        self.clock.advance(IDLE_TIMEOUT - 1)
        self.pump.flush()
        self.assertFalse(self.server.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.server.transport.disconnecting)
