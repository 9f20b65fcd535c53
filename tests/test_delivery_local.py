"""
Tests for local delivery: L{gomail.delivery.maildir} (one Maildir per
recipient) and its use by the delivery queue at start-up.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.maildir import MaildirDelivery, mailbox_name
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.interfaces import IDeliveryAgent
from gomail.mailaccess.quota import QUOTA_CACHE_SECONDS, MailboxQuota, QuotaCounter
from gomail.spool.envelope import Envelope
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

    def test_one_name_per_address(self) -> None:
        """
        Two addresses never share a Maildir: "ģ4" and "ሴ" both became "%1234"
        (a review found it; IMAP and POP3 read these directories).
        """
        self.assertNotEqual(mailbox_name("\u01234@example.com"), mailbox_name("\u1234@example.com"))
        self.assertEqual(mailbox_name("\u1234@example.com"), "%u001234@example.com")
        self.assertEqual(mailbox_name("\u00e9@example.com"), "%E9@example.com")  # as before

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

    def test_maildir_is_private(self) -> None:
        """A Maildir that delivery makes, and its tmp/new/cur, are mode 0700 whatever the umask."""
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        self.deliver(self.commit("carol@example.com"))
        for sub in ("", "tmp", "new", "cur"):
            mode = os.stat(self.spool.path("mailbox", "carol@example.com", sub)).st_mode & 0o777
            self.assertEqual(mode, 0o700, sub or "the Maildir")

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

    def test_link_goes_straight_into_new(self) -> None:
        """The hard link is made in new/ itself (one atomic step for a complete file); new/ is fsynced for it."""

        class Recording(FileSystem):
            def __init__(self) -> None:
                self.calls: list[tuple[str, str]] = []

            def link(self, source: str, target: str) -> None:
                self.calls.append(("link", os.path.basename(os.path.dirname(target))))
                super().link(source, target)

            def rename(self, source: str, target: str) -> None:
                self.calls.append(("rename", target))
                super().rename(source, target)

            def fsync_directory(self, path: str) -> None:
                self.calls.append(("fsync_directory", os.path.basename(path)))
                super().fsync_directory(path)

        fs = Recording()
        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(fs))
        envelope = self.commit("a@example.com")
        self.deliver(envelope, agent)
        self.assertEqual(fs.calls, [("link", "new"), ("fsync_directory", "new")])
        fs.calls.clear()
        self.deliver(envelope, agent)  # again, as after a crash: found in new/, new/ fsynced once more
        self.assertEqual(fs.calls, [("link", "new"), ("fsync_directory", "new")])

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
        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(fs))
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
        agent = MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(fs))
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


class StartUpDeliveryTests(MaildirTestCase):
    """The spool service and the delivery service together, in start order."""

    def test_queued_at_start_and_new_mail_are_delivered(self) -> None:
        """Mail left queued by the last run and mail committed after start both reach the mailbox."""
        old = self.commit("a@example.com")
        spool = Spool(self.spool.directory, self.clock, synchronous_run)
        agent = MaildirDelivery(spool.path("mailbox"), "mx.example", ImmediateWriter())
        delivery = DeliveryQueue(spool, Router(agent), self.clock, 2, processing_timeout=300,
                                 policy=RetryPolicy(), failed=FailedStore(spool, self.clock), hostname="mx.test")
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


class QuotaDeliveryTests(MaildirTestCase):
    """Local delivery and the per-user quota (imap.quotaMB): a full Maildir defers, with 452 4.2.2."""

    def quota_agent(self, limit: int) -> MaildirDelivery:
        self.quota = MailboxQuota(self.spool.path("mailbox"), limit, QuotaCounter(synchronous_run, self.clock))
        return MaildirDelivery(self.spool.path("mailbox"), "mx.example", ImmediateWriter(), quota=self.quota)

    def fill(self, address: str, octets: int) -> None:
        """Put a message of C{octets} in C{address}'s Maildir (cur/), as an earlier delivery would have."""
        os.makedirs(self.box(address, "cur"), exist_ok=True)
        with open(os.path.join(self.box(address, "cur"), "1.old.mx.example:2,S"), "wb") as f:
            f.write(b"x" * octets)

    def test_over_quota_is_deferred_and_nothing_written(self) -> None:
        """
        A recipient whose Maildir the message would take over its quota gets
        452 4.2.2 Mailbox full (temporary) and no copy; another recipient
        with room gets the message.
        """
        agent = self.quota_agent(1000)
        self.fill("full@example.com", 1000 - len(CONTENT) + 1)
        envelope = self.commit("full@example.com", "room@example.com")
        self.assertEqual(self.deliver(envelope, agent), {
            "full@example.com": (452, "4.2.2 Mailbox full"),
            "room@example.com": (250, "2.0.0 Delivered to mailbox"),
        })
        self.assertEqual(os.listdir(self.spool.path("mailbox", "full@example.com")), ["cur"])  # as filled
        self.assertEqual(len(os.listdir(self.box("room@example.com"))), 1)

    def test_under_quota_delivers_and_counts(self) -> None:
        """A message that fits is delivered, and added to the cached count: the next one that would not fit defers."""
        agent = self.quota_agent(2 * len(CONTENT) + 10)
        delivered = (250, "2.0.0 Delivered to mailbox")
        for expected in (delivered, delivered, (452, "4.2.2 Mailbox full")):
            envelope = self.commit("a@example.com")
            self.assertEqual(self.deliver(envelope, agent), {"a@example.com": expected})
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 2)
        self.assertEqual(self.successResultOf(self.quota.counter.used(self.quota.root("a@example.com"))),
                         2 * len(CONTENT))

    def test_zero_means_unlimited(self) -> None:
        """With quota 0 nothing is counted and every message is delivered."""
        agent = self.quota_agent(0)
        counted: list[str] = []
        self.quota.counter.run = lambda f, *a: counted.append(a[0])  # type: ignore[assignment, misc]
        self.fill("a@example.com", 10_000_000)
        envelope = self.commit("a@example.com")
        self.assertEqual(self.deliver(envelope, agent), {"a@example.com": (250, "2.0.0 Delivered to mailbox")})
        self.assertEqual(counted, [])

    def test_queue_keeps_and_retries_a_full_mailbox(self) -> None:
        """
        Through the delivery queue: the deferred recipient stays queued with
        the 452 reply and a next attempt; once mail is removed (and the count
        is made again), the retry delivers it.
        """
        agent = self.quota_agent(1000)
        self.fill("a@example.com", 990)
        spool = self.spool
        delivery = DeliveryQueue(spool, Router(agent), self.clock, 2, processing_timeout=300,
                                 policy=RetryPolicy(jitter=0), failed=FailedStore(spool, self.clock),
                                 hostname="mx.test")
        self.successResultOf(SpoolService(spool, delivery).startService())
        delivery.startService()
        self.addCleanup(delivery.stopService)
        envelope, d = start_commit(spool, CONTENT, "a@example.com", received=self.clock.seconds())
        self.successResultOf(d)
        self.assertEqual(listing(spool, "queue"), [f"{envelope.id}.eml", f"{envelope.id}.json"])
        stored = Envelope.from_json(read(spool.path("queue", f"{envelope.id}.json")))
        self.assertEqual(stored.recipients[0].status, "pending")
        self.assertEqual(stored.recipients[0].reply, "452 4.2.2 Mailbox full")
        self.assertEqual(stored.attempts, 1)
        self.assertGreater(stored.next_attempt, self.clock.seconds())
        self.assertEqual(os.listdir(self.spool.path("mailbox", "a@example.com")), ["cur"])
        os.unlink(os.path.join(self.box("a@example.com", "cur"), "1.old.mx.example:2,S"))
        self.clock.advance(max(QUOTA_CACHE_SECONDS, stored.next_attempt - self.clock.seconds()))
        self.assertEqual(len(os.listdir(self.box("a@example.com"))), 1)
        self.assertEqual(listing(spool, "queue"), [])
