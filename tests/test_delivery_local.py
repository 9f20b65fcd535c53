"""
Tests for local delivery: L{gomail.delivery.maildir} (one Maildir per
recipient) and L{gomail.delivery.local} (the queue runner that retries).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from gomail.delivery.local import LocalDeliveryService
from gomail.delivery.maildir import MaildirDelivery, mailbox_name
from gomail.interfaces import IDeliveryAgent, IQueueConsumer
from gomail.spool.envelope import DELIVERED, FAILED, PENDING, Envelope, Recipient
from gomail.spool.fs import FileSystem
from gomail.spool.service import SpoolService
from gomail.spool.store import Spool
from gomail.spool.writer import ImmediateWriter
from tests.spooltesting import listing, make_spool, read, start_commit, synchronous_run

CONTENT = b"Received: from client\r\nSubject: hi\r\n\r\nline one\r\nline two\r\nno newline at the end"
MAILDIR_CONTENT = CONTENT  # stored exactly as queued (CRLF)


class MailboxNameTests(SynchronousTestCase):
    """L{mailbox_name}: an address as one safe directory name."""

    def test_case_folds(self) -> None:
        """Addresses differing only in case share a mailbox."""
        self.assertEqual(mailbox_name("Bob@Example.COM"), "bob@example.com")
        self.assertEqual(mailbox_name("bob@example.com"), mailbox_name("BOB@EXAMPLE.COM"))

    def test_escapes_slash(self) -> None:
        """A '/' cannot reach outside the mailbox directory."""
        name = mailbox_name("../../etc/passwd@example.com")
        self.assertNotIn("/", name)
        self.assertEqual(name, "%2E.%2F..%2Fetc%2Fpasswd@example.com")

    def test_escapes_leading_dot(self) -> None:
        """A leading '.' is escaped, so no name is hidden, '.' or '..'."""
        self.assertEqual(mailbox_name(".hidden@example.com"), "%2Ehidden@example.com")
        self.assertEqual(mailbox_name("."), "%2E")
        self.assertEqual(mailbox_name(".."), "%2E.")
        self.assertEqual(mailbox_name("a.b@example.com"), "a.b@example.com")

    def test_escapes_other_unsafe_characters(self) -> None:
        """Spaces, backslashes, quotes and '%' itself are escaped, so distinct addresses stay distinct."""
        self.assertEqual(mailbox_name('"a b"@x'), "%22a%20b%22@x")
        self.assertEqual(mailbox_name("a\\b@x"), "a%5Cb@x")
        self.assertNotEqual(mailbox_name("a%2Fb@x"), mailbox_name("a/b@x"))
        self.assertEqual(mailbox_name("user+tag=1@x-y.example"), "user+tag=1@x-y.example")


class MaildirTestCase(SynchronousTestCase):
    """A spool with one committed message, and a synchronous Maildir agent on its mailbox/."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1700000000.25)
        self.spool = make_spool(os.path.abspath(self.mktemp()), self.clock)
        self.agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter())

    def commit(self, *recipients: str, content: bytes = CONTENT) -> Envelope:
        envelope, d = start_commit(self.spool, content, *recipients, received=self.clock.seconds())
        self.successResultOf(d)
        return envelope

    def deliver(self, envelope: Envelope, agent: MaildirDelivery | None = None) -> dict[str, Any]:
        agent = agent or self.agent
        return self.successResultOf(agent.deliver(envelope, self.spool.message_path(envelope.id), envelope.pending()))

    def box(self, address: str, sub: str = "new") -> str:
        return self.spool.path("mailbox", mailbox_name(address), sub)


class MaildirDeliveryTests(MaildirTestCase):
    """L{MaildirDelivery}."""

    def test_provides_the_interface(self) -> None:
        """MaildirDelivery is an IDeliveryAgent."""
        self.assertTrue(verifyObject(IDeliveryAgent, self.agent))

    def test_delivers_into_new(self) -> None:
        """Each recipient gets one file in mailbox/<address>/new/, byte-identical to the queued content."""
        envelope = self.commit("Alice@Example.com", "bob@example.org")
        self.assertEqual(self.deliver(envelope), {
            "Alice@Example.com": (250, "2.0.0 Delivered to mailbox"),
            "bob@example.org": (250, "2.0.0 Delivered to mailbox"),
        })
        self.assertEqual(sorted(os.listdir(self.spool.path("mailbox"))), ["alice@example.com", "bob@example.org"])
        for index, address in enumerate(["alice@example.com", "bob@example.org"]):
            files = os.listdir(self.box(address))
            self.assertEqual(files, [f"1700000000.{envelope.id}_{index}.mx.example"])
            self.assertEqual(read(os.path.join(self.box(address), files[0])), MAILDIR_CONTENT)
            self.assertEqual(os.listdir(self.box(address, "tmp")), [])
            self.assertEqual(os.listdir(self.box(address, "cur")), [])

    def test_queue_content_is_untouched(self) -> None:
        """Delivery reads the queued content; it does not change or remove it."""
        envelope = self.commit("a@example.com")
        self.deliver(envelope)
        self.assertEqual(read(self.spool.message_path(envelope.id)), CONTENT)

    def test_second_delivery_does_not_duplicate(self) -> None:
        """Delivering the same envelope to the same recipient again (after a crash) adds no second copy."""
        envelope = self.commit("a@example.com")
        self.deliver(envelope)
        self.assertEqual(self.deliver(envelope), {"a@example.com": (250, "2.0.0 Delivered to mailbox")})
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 1)

    def test_copy_is_a_hard_link_to_the_queued_file(self) -> None:
        """On the same file system the copy is a hard link: no data written, the queue file has one more link."""
        envelope = self.commit("a@example.com", "b@example.com")
        self.deliver(envelope)
        queued = os.stat(self.spool.message_path(envelope.id))
        self.assertEqual(queued.st_nlink, 3)
        [name] = os.listdir(self.box("a@example.com"))
        self.assertEqual(os.stat(os.path.join(self.box("a@example.com"), name)).st_ino, queued.st_ino)

    def test_copied_when_a_link_is_impossible(self) -> None:
        """When link() fails with EXDEV (another file system) the content is copied and fsynced instead."""

        class NoLinks(FileSystem):
            fsynced = 0

            def link(self, source: str, target: str) -> None:
                raise OSError(errno.EXDEV, "Invalid cross-device link")

            def fsync(self, fd: int) -> None:
                self.fsynced += 1
                super().fsync(fd)

        fs = NoLinks()
        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(fs), fs=fs)
        envelope = self.commit("a@example.com")
        self.assertEqual(self.deliver(envelope, agent), {"a@example.com": (250, "2.0.0 Delivered to mailbox")})
        [name] = os.listdir(self.box("a@example.com"))
        self.assertEqual(read(os.path.join(self.box("a@example.com"), name)), CONTENT)
        self.assertEqual(os.stat(self.spool.message_path(envelope.id)).st_nlink, 1)
        self.assertEqual(fs.fsynced, 1)

    def test_copy_moved_by_a_reader_may_be_delivered_again(self) -> None:
        """
        Only new/ is checked for an earlier copy (listing cur/ on every delivery
        would cost O(mailbox size)): a copy a reader already moved to cur/ is
        delivered again, as at-least-once delivery allows, and never lost.
        """
        envelope = self.commit("a@example.com")
        self.deliver(envelope)
        [name] = os.listdir(self.box("a@example.com"))
        os.rename(os.path.join(self.box("a@example.com"), name), os.path.join(self.box("a@example.com", "cur"),
                                                                               name + ":2,S"))
        self.deliver(envelope)
        self.assertEqual(os.listdir(self.box("a@example.com")), [name])
        self.assertEqual(os.listdir(self.box("a@example.com", "cur")), [name + ":2,S"])

    def test_different_messages_are_different_files(self) -> None:
        """Two messages for one recipient are two files."""
        for _ in range(2):
            self.deliver(self.commit("a@example.com"))
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 2)

    def test_hostname_cannot_break_the_file_name(self) -> None:
        """A '/' or ':' in the host name does not end up in the file name."""
        agent = MaildirDelivery(self.spool.path("mailbox"), "odd/host:name", ImmediateWriter())
        envelope = self.commit("a@example.com")
        self.deliver(envelope, agent)
        [name] = os.listdir(self.box("a@example.com"))
        self.assertTrue(name.endswith(".odd_host_name"), name)

    def test_write_error_is_temporary(self) -> None:
        """
        An fsync error fails the copies written with it (451 naming the error,
        nothing in new/ or tmp/); the next attempt delivers them.
        """

        class FailFirstFsync(FileSystem):
            """Copies (no hard links), and the first fsync fails."""

            failed = False

            def link(self, source: str, target: str) -> None:
                raise OSError(errno.EXDEV, "Invalid cross-device link")

            def fsync(self, fd: int) -> None:
                if not self.failed:
                    self.failed = True
                    raise OSError(errno.EIO, "Input/output error")
                super().fsync(fd)

        fs = FailFirstFsync()
        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(fs), fs=fs)
        envelope = self.commit("a@example.com", "b@example.com")
        failed = (451, "4.3.0 Mailbox write failed: Input/output error")
        self.assertEqual(self.deliver(envelope, agent), {"a@example.com": failed, "b@example.com": failed})
        for address in ("a@example.com", "b@example.com"):
            self.assertEqual(os.listdir(self.box(address)), [])
            self.assertEqual(os.listdir(self.box(address, "tmp")), [])
        delivered = (250, "2.0.0 Delivered to mailbox")
        self.assertEqual(self.deliver(envelope, agent), {"a@example.com": delivered, "b@example.com": delivered})
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 1)

    def test_directory_fsync_error_fails_the_attempt(self) -> None:
        """If new/ cannot be fsynced the attempt fails as a whole (a temporary fault of the agent)."""

        class FailDirectorySync(FileSystem):
            def fsync_directory(self, path: str) -> None:
                raise OSError(errno.EIO, "Input/output error")

        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(FailDirectorySync()))
        envelope = self.commit("a@example.com")
        self.failureResultOf(agent.deliver(envelope, self.spool.message_path(envelope.id), envelope.pending()),
                             OSError)

    def test_missing_content_is_temporary(self) -> None:
        """If the queued content cannot be read, every recipient gets a 451."""
        envelope = self.commit("a@example.com")
        os.unlink(self.spool.message_path(envelope.id))
        self.assertEqual(self.deliver(envelope)["a@example.com"][0], 451)


@implementer(IDeliveryAgent)
class FakeAgent:
    """
    An IDeliveryAgent whose answers the test chooses: a dict of replies by
    address, or a Deferred the test fires later.
    """

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.answers: list[Any] = []
        self.held: list[Deferred] = []

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        self.calls.append((envelope.id, [r.address for r in recipients]))
        answer = self.answers.pop(0) if self.answers else {r.address: (250, "2.0.0 ok") for r in recipients}
        if answer == "hold":
            d: Deferred = Deferred()
            self.held.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class AgentBroke(Exception):
    """The fake agent's own fault."""


class LocalDeliveryServiceTests(MaildirTestCase):
    """L{LocalDeliveryService} driven by a Clock."""

    def service(self, agent: Any, concurrency: int = 2, retry_delay: float = 60.0) -> LocalDeliveryService:
        service = LocalDeliveryService(self.spool, agent, self.clock, concurrency, retry_delay)
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def on_disk(self, queue_id: str) -> Envelope:
        return Envelope.from_json(read(self.spool.path("queue", queue_id + ".json")))

    def test_provides_the_interface(self) -> None:
        """LocalDeliveryService is an IQueueConsumer."""
        self.assertTrue(verifyObject(IQueueConsumer, LocalDeliveryService(self.spool, FakeAgent(), self.clock, 1)))

    def test_delivers_and_removes(self) -> None:
        """A queued message ends up in the mailbox and is removed from queue/."""
        service = self.service(self.agent)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 1)
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertEqual(self.spool.queued, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_temporary_failure_is_retried_after_the_delay(self) -> None:
        """A 451 keeps the message, records attempts/next_attempt/reply on disk, and retries after retry_delay."""
        agent = FakeAgent()
        agent.answers.append({"a@example.com": (451, "4.2.0 busy")})
        service = self.service(agent, retry_delay=60.0)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        stored = self.on_disk(envelope.id)
        self.assertEqual(stored.attempts, 1)
        self.assertEqual(stored.next_attempt, self.clock.seconds() + 60.0)
        self.assertEqual(stored.recipients, [Recipient("a@example.com", PENDING, "451 4.2.0 busy")])
        self.assertEqual(listing(self.spool, "tmp"), [])
        self.clock.advance(59.9)
        self.assertEqual(len(agent.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(agent.calls), 2)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_recovered_message_keeps_its_retry_time(self) -> None:
        """A message recovered with next_attempt in the future is delivered then, not at once."""
        agent = FakeAgent()
        service = self.service(agent)
        envelope = self.commit("a@example.com")
        envelope.next_attempt = self.clock.seconds() + 30
        service.enqueue(envelope)
        self.assertEqual(agent.calls, [])
        self.clock.advance(30)
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_retry_attempts_accumulate(self) -> None:
        """Each failed attempt adds one to attempts on disk."""
        agent = FakeAgent()
        agent.answers.extend([{"a@example.com": (451, "4.2.0 busy")}] * 3)
        service = self.service(agent, retry_delay=10.0)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual((self.on_disk(envelope.id).attempts, len(agent.calls)), (3, 3))
        self.clock.advance(10)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_retry_sends_only_to_pending_recipients(self) -> None:
        """Delivered (2xx) and permanently failed (5xx) recipients are not tried again."""
        agent = FakeAgent()
        agent.answers.append({"a@example.com": (250, "2.0.0 ok"), "b@example.com": (550, "5.1.1 no such user"),
                              "c@example.com": (451, "4.2.0 busy")})
        service = self.service(agent)
        envelope = self.commit("a@example.com", "b@example.com", "c@example.com")
        service.enqueue(envelope)
        self.assertEqual([(r.status, r.reply) for r in self.on_disk(envelope.id).recipients], [
            (DELIVERED, "250 2.0.0 ok"), (FAILED, "550 5.1.1 no such user"), (PENDING, "451 4.2.0 busy")])
        self.clock.advance(60)
        self.assertEqual(agent.calls[1], (envelope.id, ["c@example.com"]))

    def test_missing_answer_is_temporary(self) -> None:
        """A recipient the agent gives no answer for is retried."""
        agent = FakeAgent()
        agent.answers.append({})
        service = self.service(agent)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        self.assertEqual(self.on_disk(envelope.id).recipients[0].reply,
                         "451 4.3.0 No result from delivery agent")
        self.clock.advance(60)
        self.assertEqual(len(agent.calls), 2)

    def test_agent_fault_is_retried(self) -> None:
        """An agent that fails outright is logged and the message is tried again after the delay."""
        agent = FakeAgent()
        agent.answers.append(AgentBroke("connection pool exploded"))
        service = self.service(agent)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        self.assertEqual(len(self.flushLoggedErrors(AgentBroke)), 1)
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        self.clock.advance(60)
        self.assertEqual(len(agent.calls), 2)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_same_id_twice_is_delivered_once(self) -> None:
        """Offering the same message twice (found at start and announced) delivers it once."""
        agent = FakeAgent()
        agent.answers.append("hold")
        service = self.service(agent)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        service.enqueue(envelope)
        self.assertEqual(len(agent.calls), 1)
        service.enqueue(envelope)
        agent.held[0].callback({"a@example.com": (250, "2.0.0 ok")})
        self.assertEqual(len(agent.calls), 1)
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_enqueue_during_retry_wait(self) -> None:
        """A message waiting for its retry is not delivered early when offered again."""
        agent = FakeAgent()
        agent.answers.append({"a@example.com": (451, "4.2.0 busy")})
        service = self.service(agent)
        envelope = self.commit("a@example.com")
        service.enqueue(envelope)
        service.enqueue(envelope)
        self.assertEqual(len(agent.calls), 1)
        self.clock.advance(60)
        self.assertEqual(len(agent.calls), 2)

    def test_concurrency_limit(self) -> None:
        """At most `concurrency` deliveries run at once; the next starts when one ends."""
        agent = FakeAgent()
        agent.answers.extend(["hold"] * 5)
        service = self.service(agent, concurrency=2)
        envelopes = [self.commit("a@example.com") for _ in range(5)]
        for envelope in envelopes:
            service.enqueue(envelope)
        self.assertEqual([c[0] for c in agent.calls], [e.id for e in envelopes[:2]])
        agent.held[1].callback({"a@example.com": (250, "2.0.0 ok")})
        self.assertEqual([c[0] for c in agent.calls], [e.id for e in envelopes[:3]])
        while not all(d.called for d in agent.held):
            in_flight = [d for d in agent.held if not d.called]
            self.assertLessEqual(len(in_flight), 2)
            in_flight[0].callback({"a@example.com": (250, "2.0.0 ok")})
        self.assertEqual([c[0] for c in agent.calls], [e.id for e in envelopes])
        self.assertEqual(listing(self.spool, "queue"), [])

    def test_nothing_before_start(self) -> None:
        """Messages offered before the service starts wait for the start."""
        agent = FakeAgent()
        service = LocalDeliveryService(self.spool, agent, self.clock, 2)
        service.enqueue(self.commit("a@example.com"))
        self.assertEqual(agent.calls, [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(agent.calls), 1)

    def test_stop_cancels_retries_and_waits_for_deliveries(self) -> None:
        """Stopping cancels pending retries and fires only when deliveries in progress are done."""
        agent = FakeAgent()
        agent.answers.extend([{"a@example.com": (451, "4.2.0 busy")}, "hold"])
        service = self.service(agent)
        service.enqueue(self.commit("a@example.com"))
        service.enqueue(self.commit("a@example.com"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        stopped = service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(stopped)
        agent.held[0].callback({"a@example.com": (451, "4.2.0 busy")})
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(listing(self.spool, "queue")), 4)


class StartUpDeliveryTests(MaildirTestCase):
    """The spool service and the delivery service together, in start order."""

    def test_queued_at_start_and_new_mail_are_delivered(self) -> None:
        """Mail left queued by the last run and mail committed after start both reach the mailbox."""
        old = self.commit("a@example.com")
        spool = Spool(self.spool.directory, self.clock, synchronous_run)
        agent = MaildirDelivery(spool.path("mailbox"), "mx.example", ImmediateWriter())
        delivery = LocalDeliveryService(spool, agent, self.clock, 2)
        self.successResultOf(SpoolService(spool, delivery).startService())
        delivery.startService()
        self.addCleanup(delivery.stopService)
        new, d = start_commit(spool, CONTENT, "a@example.com")
        self.successResultOf(d)
        names = sorted(os.listdir(self.box("a@example.com")))
        self.assertEqual(len(names), 2)
        self.assertTrue(any(old.id in n for n in names) and any(new.id in n for n in names), names)
        self.assertEqual(listing(spool, "queue"), [])
        self.assertEqual(spool.queued, 0)
