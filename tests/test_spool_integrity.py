"""
Damaged spool files (issue 15, items 1 and 2): the content's size and digest
recorded while it streams in, checked at recovery and before every delivery
attempt; what fails moves to corrupt/ with one log line, is counted, and is
never delivered. Nothing in queue/ is deleted at recovery.

The damages are the outside tester's: an .eml cut to half, one emptied, one
overwritten with random bytes of the same size, an envelope deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.client import RelayProtocol, Transaction
from gomail.delivery.content import CheckedFileContent, content_opener, send_content
from gomail.delivery.failed import FailedStore
from gomail.delivery.maildir import MaildirDelivery, mailbox_name
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.interfaces import IDeliveryAgent
from gomail.metrics import Metrics
from gomail.spool.envelope import DELIVERED, Envelope
from gomail.spool.incoming import IncomingMessage
from gomail.spool.integrity import CorruptContent, check_bytes, check_file
from gomail.spool.store import Spool
from gomail.spool.writer import ImmediateWriter, own_failure
from tests.processes import maildir_messages
from tests.spooltesting import content_digest, listing, make_spool, new_envelope, read, start_commit

START = 1700000000.0


def message(number: int, size: int = 5282) -> bytes:
    """A message of exactly C{size} bytes, different for each C{number}."""
    head = b"Subject: message %d\r\n\r\n" % number
    line = b"%d the quick brown fox jumps over the lazy dog\r\n" % number
    body = (line * (size // len(line) + 1))[: size - len(head) - 2] + b"\r\n"
    return head + body


def damage(path: str, how: str) -> None:
    """Do to a queued file what the tester did."""
    if how == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "empty":
        os.truncate(path, 0)
    elif how == "random":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(os.urandom(size))
    elif how == "delete-json":
        os.unlink(path[: -len(".eml")] + ".json")


class Events:
    """Log events of the objects given, by level."""

    def __init__(self, *owners: Any) -> None:
        self.events: list[dict] = []
        for owner in owners:
            owner.log = Logger(namespace=type(owner).__name__, observer=self.events.append)

    def errors(self) -> list[str]:
        """The error and critical lines, formatted."""
        return [formatEvent(e) for e in self.events if e["log_level"] in (LogLevel.error, LogLevel.critical)]


class DigestRecordingTests(SynchronousTestCase):
    """The envelope records size and BLAKE2b digest of exactly the bytes committed, on both intake paths."""

    def setUp(self) -> None:
        self.spool = make_spool(os.path.abspath(self.mktemp()), Clock())

    def committed(self, content: bytes, chunk: int) -> Envelope:
        envelope, d = start_commit(self.spool, content, chunk=chunk)
        self.successResultOf(d)
        on_disk = Envelope.from_json(read(self.spool.path("queue", envelope.id + ".json")))
        self.assertEqual(on_disk, envelope)
        return envelope

    def test_small_message_kept_in_memory(self) -> None:
        """A message under FLUSH_AT (written whole at the commit) records its size and digest."""
        content = message(1)
        envelope = self.committed(content, chunk=1000)
        self.assertEqual(envelope.size, len(content))
        self.assertEqual(envelope.digest, "sha256:" + hashlib.sha256(content).hexdigest())
        self.assertEqual(read(self.spool.message_path(envelope.id)), content)

    def test_large_message_streamed_to_tmp(self) -> None:
        """A message streamed to tmp/ in several writes (digest fed in the I/O pool) records the whole file's digest."""
        content = message(2, size=5 * IncomingMessage.FLUSH_AT + 777)
        written: list[int] = []
        real_append = self.spool.append_tmp

        def append(queue_id: str, fd: Any, chunks: list, digest: Any = None) -> int:
            self.assertIsNotNone(digest)  # the hash is fed where the block is written
            written.append(sum(len(c) for c in chunks))
            return real_append(queue_id, fd, chunks, digest)
        self.spool.append_tmp = append  # type: ignore[method-assign]
        envelope = self.committed(content, chunk=7001)
        self.assertGreater(len(written), 1)
        self.assertEqual((envelope.size, envelope.digest), (len(content), content_digest(content)))
        self.assertEqual(read(self.spool.message_path(envelope.id)), content)


class CheckFileTests(SynchronousTestCase):
    """L{check_file}: what each damage is reported as."""

    def setUp(self) -> None:
        self.content = message(3)
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "wb") as f:
            f.write(self.content)
        self.digest = content_digest(self.content)

    def problem(self, digest: str | None = "same") -> str:
        digest = self.digest if digest == "same" else digest
        return self.assertRaises(CorruptContent, check_file, "m1", self.path, len(self.content), digest).problem

    def test_intact(self) -> None:
        """An intact file passes; with keep it comes back as the checked bytes."""
        self.assertIsNone(check_file("m1", self.path, len(self.content), self.digest))
        self.assertEqual(check_file("m1", self.path, len(self.content), self.digest, keep=1 << 20), self.content)

    def test_each_damage(self) -> None:
        """Truncated, emptied, same-size random bytes and a grown file each say what is wrong."""
        damage(self.path, "truncate")
        self.assertEqual(self.problem(), "content is 2641 bytes, its envelope records 5282 (truncated)")
        damage(self.path, "empty")
        self.assertEqual(self.problem(), "content is empty (0 bytes), its envelope records 5282")
        with open(self.path, "wb") as f:
            f.write(self.content)
        damage(self.path, "random")
        self.assertIn("content digest differs", self.problem())
        with open(self.path, "ab") as f:
            f.write(b"more")
        self.assertIn("(grown)", self.problem())

    def test_old_envelope_checked_on_size_only(self) -> None:
        """An envelope without a digest (written before digests) is checked on size alone: same-size damage passes."""
        damage(self.path, "random")
        self.assertIsNone(check_file("m1", self.path, len(self.content), None))
        damage(self.path, "truncate")
        self.assertIn("(truncated)", self.problem(None))

    def test_older_blake2b_digest_still_checked(self) -> None:
        """An envelope written with a BLAKE2b digest (before SHA-256) is checked with BLAKE2b: intact passes, damage is found."""
        older = "blake2b:" + hashlib.blake2b(self.content, digest_size=32).hexdigest()
        self.assertIsNone(check_file("m1", self.path, len(self.content), older))
        check_bytes("m1", self.content, len(self.content), older)
        source = CheckedFileContent(self.path, lambda f, *a: succeed(f(*a)), "m1", len(self.content), older)
        self.assertEqual(self.successResultOf(source.read(1 << 20)), self.content)
        damage(self.path, "random")
        self.assertIn("content digest differs", self.problem(older))

    def test_unknown_digest_kind(self) -> None:
        """A digest of a kind this version does not know is not trusted."""
        self.assertIn("unknown kind ('sha1')", self.problem("sha1:00"))

    def test_missing_file_is_an_os_error(self) -> None:
        """A file that is not there is an OSError (temporary), not corruption."""
        os.unlink(self.path)
        self.assertRaises(FileNotFoundError, check_file, "m1", self.path, 1, None)

    def test_crosses_the_writer_process(self) -> None:
        """CorruptContent survives pickling (the writer child's reply) and own_failure's copy."""
        error = CorruptContent("m1", "content is empty")
        for copy in (pickle.loads(pickle.dumps(error)), own_failure(error).value):
            self.assertIsInstance(copy, CorruptContent)
            self.assertEqual((copy.queue_id, copy.problem, str(copy)), ("m1", "content is empty", "m1: content is empty"))


class TesterDamages(SynchronousTestCase):
    """Five committed messages, four of them damaged as the tester did, then a restart."""

    DAMAGES = ("truncate", "empty", "random", "delete-json")

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.directory = os.path.abspath(self.mktemp())
        spool = make_spool(self.directory, self.clock)
        self.envelopes = {}
        self.contents = {}
        for number, how in enumerate(self.DAMAGES + ("intact",)):
            envelope, d = start_commit(spool, message(number), "bob@example.com", received=START)
            self.successResultOf(d)
            self.envelopes[how], self.contents[how] = envelope, message(number)
            if how != "intact":
                damage(spool.message_path(envelope.id), how)
        self.spool = Spool(self.directory, self.clock, lambda f, *a: succeed(f(*a)))
        self.log = Events(self.spool)
        self.spool.prepare()

    def qid(self, how: str) -> str:
        """The queue id of the message damaged C{how}."""
        return self.envelopes[how].id

    def start_queue(self, agent: Any) -> DeliveryQueue:
        report = self.successResultOf(self.spool.recover())
        queue = DeliveryQueue(self.spool, Router(agent), self.clock, 4, processing_timeout=300,
                              policy=RetryPolicy(), failed=FailedStore(self.spool, self.clock), hostname="mx.test")
        self.log_queue = Events(queue)
        for envelope in report.envelopes:
            queue.enqueue(envelope)
        queue.startService()
        self.addCleanup(queue.stopService)
        return queue

    def test_recovery_moves_what_it_can_see_and_deletes_nothing(self) -> None:
        """
        Recovery sets aside the truncated, the emptied and the envelope-less
        entries (size and presence: no content read) with one error line each
        naming the id and what is wrong; the random one passes (same size) and
        waits for its delivery check; nothing is deleted.
        """
        report = self.successResultOf(self.spool.recover())
        self.assertEqual(sorted(e.id for e in report.envelopes), sorted([self.qid("random"), self.qid("intact")]))
        self.assertEqual(listing(self.spool, "corrupt"), sorted([
            self.qid("truncate") + ".eml", self.qid("truncate") + ".json", self.qid("empty") + ".eml",
            self.qid("empty") + ".json", self.qid("delete-json") + ".eml"]))
        self.assertEqual(read(self.spool.path("corrupt", self.qid("delete-json") + ".eml")), self.contents["delete-json"])
        errors = self.log.errors()
        self.assertEqual(len(errors), 3, errors)
        for how, words in (("truncate", "content is 2641 bytes, its envelope records 5282 (truncated)"),
                           ("empty", "content is empty (0 bytes)"),
                           ("delete-json", f"its envelope {self.qid('delete-json')}.json is missing")):
            [line] = [e for e in errors if self.qid(how) in e]
            self.assertIn(f"to {self.directory}/corrupt: ", line)
            self.assertIn(words, line)
        self.assertEqual((self.spool.queued, self.spool.corrupt_total), (2, 3))

    def test_local_delivery_never_links_damaged_content(self) -> None:
        """
        Delivered to Maildirs: only the intact message reaches bob's new/; the
        random one is caught by the check in the Maildir job before any link,
        moved (content and envelope) to corrupt/ with one line, and counted.
        """
        mailbox = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter())
        queue = self.start_queue(mailbox)
        new = self.spool.path("mailbox", mailbox_name("bob@example.com"), "new")
        self.assertEqual([read(os.path.join(new, name)) for name in os.listdir(new)], [self.contents["intact"]])
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertIn(self.qid("random") + ".eml", listing(self.spool, "corrupt"))
        self.assertIn(self.qid("random") + ".json", listing(self.spool, "corrupt"))
        self.assertNotEqual(read(self.spool.path("corrupt", self.qid("random") + ".eml")), self.contents["random"])
        [line] = [e for e in self.log.errors() if self.qid("random") in e]
        self.assertIn("instead of delivering it: content digest differs", line)
        self.assertEqual(len(self.log.errors()), 4)
        stored = Envelope.from_json(read(self.spool.path("corrupt", self.qid("random") + ".json")))
        self.assertIn("content damaged: content digest differs", stored.last_error)
        self.assertEqual((self.spool.corrupt_total, self.spool.queued, queue.depth), (4, 0, 0))
        self.assertIn(b"gomail_spool_corrupt_total 4.0", prometheus(queue))

    def test_relay_never_sends_damaged_content(self) -> None:
        """
        An agent that reads the file (the relay) is not called for the damaged
        message: its content is checked first (Spool.check_content); the intact
        one is sent, from the checked bytes kept in memory.
        """
        agent = RecordingRelay(self.spool)
        self.spool.recent.budget = 1 << 20
        self.start_queue(agent)
        self.assertEqual(agent.sent, [(self.qid("intact"), self.contents["intact"])])
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertIn(self.qid("random") + ".json", listing(self.spool, "corrupt"))
        self.assertEqual(self.spool.corrupt_total, 4)


@implementer(IDeliveryAgent)
class RecordingRelay:
    """A relay-like agent: reads the content through the server's opener, records what it would send."""

    name = "relay"
    idempotent = False

    def __init__(self, spool: Spool) -> None:
        self.open = content_opener(spool.recent, spool.run)
        self.sent: list[tuple[str, bytes]] = []
        self.failed: list[Exception] = []

    def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
        source = self.open(envelope.id, path, envelope)
        data = b""
        try:
            while chunk := at_once(source.read(1 << 20)):
                data += chunk
        except CorruptContent as e:
            # What the relay client does: no final dot, the connection dropped, a deferral.
            self.failed.append(e)
            return succeed({r.address: (451, "4.4.2 Connection to smarthost lost") for r in recipients})
        self.sent.append((envelope.id, data))
        return succeed({r.address: (250, "2.0.0 ok") for r in recipients})


def at_once(d: Deferred) -> Any:
    """The result of a Deferred that has fired (synchronous I/O), or its exception raised."""
    outcome: list = []
    d.addBoth(outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def prometheus(queue: DeliveryQueue) -> bytes:
    """The Prometheus text of a registry around C{queue}."""
    return generate_latest(Metrics(delivery=queue).registry)


class MemoryCopyTests(SynchronousTestCase):
    """The copy in memory is the one hashed and fsynced; the file on disk is what later attempts read."""

    def test_later_attempt_reads_and_checks_the_disk(self) -> None:
        """
        A deferred message whose memory copy is gone (evicted, or a restart)
        is checked on disk at its next attempt: damage done meanwhile sets it
        aside instead of sending it.
        """
        clock = Clock()
        clock.advance(START)
        spool = make_spool(os.path.abspath(self.mktemp()), clock, recent_content_bytes=1 << 20)
        Events(spool)
        agent = ScriptedRelay([451, 250])
        queue = DeliveryQueue(spool, Router(agent), clock, 4, processing_timeout=300,
                              policy=RetryPolicy(jitter=0), failed=FailedStore(spool, clock), hostname="mx.test")
        spool.add_listener(queue.enqueue)
        queue.startService()
        self.addCleanup(queue.stopService)
        envelope, d = start_commit(spool, message(9), "carol@example.net", received=START)
        self.successResultOf(d)
        self.assertEqual(agent.calls, 1)  # sent from memory, deferred
        spool.recent.forget(envelope.id)
        damage(spool.message_path(envelope.id), "random")
        clock.advance(300)
        self.assertEqual(agent.calls, 1)
        self.assertEqual(listing(spool, "corrupt"), [envelope.id + ".eml", envelope.id + ".json"])
        self.assertEqual(spool.corrupt_total, 1)


class FreshMessageTests(SynchronousTestCase):
    """
    The first attempt of a message this process has just committed checks
    its size without reading it (Maildir) or checks it as it sends it (relay);
    every later attempt reads and checks it whole.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.spool = make_spool(os.path.abspath(self.mktemp()), self.clock)
        self.log = Events(self.spool)

    def queue(self, agent: Any) -> DeliveryQueue:
        queue = DeliveryQueue(self.spool, Router(agent), self.clock, 4, processing_timeout=300,
                              policy=RetryPolicy(jitter=0), failed=FailedStore(self.spool, self.clock),
                              hostname="mx.test")
        self.spool.add_listener(queue.enqueue)
        self.addCleanup(queue.stopService)
        return queue

    def test_truncated_before_the_first_local_attempt(self) -> None:
        """A just-committed message cut short before its first attempt is caught by its size: never linked."""
        mailbox = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter())
        queue = self.queue(mailbox)
        envelope, d = start_commit(self.spool, message(6), "bob@example.com", received=START)
        self.successResultOf(d)
        self.assertTrue(envelope.fresh)
        damage(self.spool.message_path(envelope.id), "truncate")
        queue.startService()
        self.assertEqual(maildir_messages(self.spool.path("mailbox", "bob@example.com", "new")), [])
        self.assertEqual(listing(self.spool, "corrupt"), [envelope.id + ".eml", envelope.id + ".json"])
        self.assertFalse(envelope.fresh)
        self.assertFalse(Envelope.from_json(envelope.to_json()).fresh)  # never stored

    def test_changed_before_the_first_relay_attempt(self) -> None:
        """
        A just-committed message not kept in memory is read once, as it is
        sent, and checked as it goes: changed bytes end that transaction
        without its dot (the attempt is deferred), and the next attempt's full
        check sets it aside; the agent never completes a send of it.
        """
        agent = RecordingRelay(self.spool)
        queue = self.queue(agent)
        envelope, d = start_commit(self.spool, message(7), "carol@example.net", received=START)
        self.successResultOf(d)
        damage(self.spool.message_path(envelope.id), "random")
        queue.startService()
        self.assertEqual(agent.sent, [])
        self.assertEqual(len(agent.failed), 1)
        self.assertIsInstance(agent.failed[0], CorruptContent)
        self.assertEqual(listing(self.spool, "corrupt"), [])
        self.clock.advance(300)
        self.assertEqual((agent.sent, len(agent.failed)), ([], 1))
        self.assertEqual(listing(self.spool, "corrupt"), [envelope.id + ".eml", envelope.id + ".json"])


@implementer(IDeliveryAgent)
class ScriptedRelay:
    """Answers each attempt from a script of codes (no content check of its own)."""

    name = "relay"
    idempotent = False

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.calls = 0

    def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
        self.calls += 1
        code = self.codes.pop(0)
        return succeed({r.address: (code, "4.2.0 later" if code >= 400 else "2.0.0 ok") for r in recipients})


class StreamingCheckTests(SynchronousTestCase):
    """
    The last line of defence: a file that changes between the attempt's check
    and its reading by the relay. The bytes are hashed as they are sent, and a
    mismatch drops the connection before the final dot.
    """

    def setUp(self) -> None:
        self.content = message(4)
        self.path = os.path.abspath(self.mktemp())
        with open(self.path, "wb") as f:
            f.write(self.content)
        self.envelope = new_envelope("m4", "bob@example.net", content=self.content)

    def source(self) -> CheckedFileContent:
        return CheckedFileContent(self.path, lambda f, *a: succeed(f(*a)), "m4", self.envelope.size,
                                  self.envelope.digest)

    def test_intact_file_is_sent_whole(self) -> None:
        """An intact file goes out completely."""
        transport = StringTransport()
        self.assertTrue(self.successResultOf(send_content(self.source(), transport, lambda b: b)))
        self.assertEqual(transport.value(), self.content)

    def test_changed_file_never_gets_its_final_dot(self) -> None:
        """
        Through the relay client on a StringTransport: the content changed after
        the check is streamed, but no CRLF.CRLF follows and the connection is
        closed, so the smarthost delivers nothing.
        """
        damage(self.path, "random")
        transport = StringTransport()
        client = RelayProtocol("gomail.test", Clock(), 30)
        client.makeConnection(transport)
        for line in (b"220 smarthost ESMTP", b"250-smarthost", b"250 8BITMIME"):
            client.dataReceived(line + b"\r\n")
        d = client.send(Transaction("alice@example.org", ["bob@example.net"], self.source))
        for line in (b"250 ok", b"250 ok", b"354 go"):
            client.dataReceived(line + b"\r\n")
        while transport.producer is not None:
            transport.producer.resumeProducing()
        self.assertNotIn(b"\r\n.\r\n", transport.value())
        self.assertTrue(transport.disconnecting)
        self.failureResultOf(d)


class FailedStoreDigestTests(SynchronousTestCase):
    """Mail requeued from failed/ keeps (or gets) its size and digest."""

    def test_requeued_record_without_digest_gets_one(self) -> None:
        """A failed record written before digests is requeued with the size and digest of its content."""
        clock = Clock()
        spool = make_spool(os.path.abspath(self.mktemp()), clock)
        content = message(5)
        envelope = new_envelope("0123456789abc00000001", "bob@example.com")
        envelope.recipients[0].status = DELIVERED
        record = json.loads(envelope.to_json())
        record.update(reason="test", failed_at=0, content=content.decode(), content_encoding="utf-8")
        with open(spool.path("failed", envelope.id + ".json"), "w") as f:
            json.dump(record, f)
        store = FailedStore(spool, clock)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(store.retry())), 1)
        requeued = Envelope.from_json(read(spool.path("queue", envelope.id + ".json")))
        self.assertEqual((requeued.size, requeued.digest), (len(content), content_digest(content)))
        self.assertIsNone(check_file(envelope.id, spool.message_path(envelope.id), requeued.size, requeued.digest))
