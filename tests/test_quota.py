"""
Tests for the per-user quota shared by IMAP, local delivery and SMTP intake
(L{gomail.mailaccess.quota}): the counter, the RCPT answer for a full
Maildir, and one counter wired into all three by L{gomail.root.build_service}.
Delivery's side is in L{tests.test_delivery_local.QuotaDeliveryTests}.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess.quota import QUOTA_CACHE_SECONDS, MailboxQuota, QuotaCounter
from gomail.root import build_service
from tests.smtphelpers import ManualRun, SMTPHarness
from tests.spooltesting import synchronous_run
from tests.test_service import config_in
from tests.test_smtp_recipients import RecipientTestCase


def fill(mailbox: str, address: str, octets: int) -> None:
    """A message of C{octets} in C{address}'s Maildir under C{mailbox} (in cur/, as read mail is)."""
    cur = os.path.join(mailbox, address, "cur")
    os.makedirs(cur, exist_ok=True)
    with open(os.path.join(cur, f"{len(os.listdir(cur))}.old.mx.test:2,S"), "wb") as f:
        f.write(b"x" * octets)


class QuotaCounterTests(SynchronousTestCase):
    """L{QuotaCounter}: a Maildir counted in the I/O pool, kept for a minute, once at a time."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = os.path.abspath(self.mktemp())
        fill(os.path.dirname(self.root), os.path.basename(self.root), 100)
        os.makedirs(os.path.join(self.root, ".Archive", "cur"))
        fill(self.root, ".Archive", 20)

    def test_counts_every_folder_in_the_pool(self) -> None:
        """The count runs in C{run} (not on the reactor) and covers INBOX and the folders."""
        run = ManualRun()
        counter = QuotaCounter(run, self.clock)
        d = Deferred.fromCoroutine(counter.used(self.root))
        self.assertNoResult(d)
        run.release_one()
        self.assertEqual(self.successResultOf(d), 120)

    def test_concurrent_callers_share_one_count(self) -> None:
        """Callers asking while a count is under way wait for it: one directory scan, not one each."""
        run = ManualRun()
        counter = QuotaCounter(run, self.clock)
        first = Deferred.fromCoroutine(counter.used(self.root))
        second = Deferred.fromCoroutine(counter.used(self.root))
        self.assertEqual(len(run.pending), 1)
        run.release_one()
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (120, 120))

    def test_failed_count_fails_every_caller(self) -> None:
        """A count that fails (an OSError in the pool) fails every waiting caller, and the next call counts again."""
        run = ManualRun()
        counter = QuotaCounter(run, self.clock)
        first = Deferred.fromCoroutine(counter.used(self.root))
        second = Deferred.fromCoroutine(counter.used(self.root))
        _, _, _, d = run.pending.pop(0)
        d.errback(PermissionError(13, "Permission denied"))
        self.failureResultOf(first, PermissionError)
        self.failureResultOf(second, PermissionError)
        third = Deferred.fromCoroutine(counter.used(self.root))
        run.release_one()
        self.assertEqual(self.successResultOf(third), 120)

    def test_cached_for_a_minute_with_changes_added(self) -> None:
        """The count is kept for QUOTA_CACHE_SECONDS, with this process's additions; then it is made again."""
        counter = QuotaCounter(synchronous_run, self.clock)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(counter.used(self.root))), 120)
        fill(self.root, ".Archive", 1000)  # another process's change: not seen yet
        counter.add(self.root, 5)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(counter.used(self.root))), 125)
        self.clock.advance(QUOTA_CACHE_SECONDS)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(counter.used(self.root))), 1120)


class ReservationTests(SynchronousTestCase):
    """Stores under way promise their octets: parallel stores cannot all pass one count."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.root = os.path.abspath(self.mktemp())
        fill(self.root, "", 100)

    def reserve(self, counter: QuotaCounter, octets: int, limit: int) -> bool:
        return bool(self.successResultOf(Deferred.fromCoroutine(counter.reserve(self.root, octets, limit))))

    def test_parallel_stores(self) -> None:
        """
        With 100 octets stored and a limit of 1,000, eight stores of 300 at
        once: three are promised room, the rest refused (each was checked
        against the same count before, and all eight went through: 7x the quota).
        """
        counter = QuotaCounter(synchronous_run, self.clock)
        self.assertEqual([self.reserve(counter, 300, 1000) for _ in range(8)], [True] * 3 + [False] * 5)
        counter.release(self.root, 300, stored=True)
        counter.release(self.root, 300, stored=False)  # a store that failed gives its room back
        self.assertTrue(self.reserve(counter, 300, 1000))
        self.assertFalse(self.reserve(counter, 300, 1000))

    def test_release_counts_what_was_stored(self) -> None:
        """A store that succeeded is counted from then on (without waiting for a recount)."""
        counter = QuotaCounter(synchronous_run, self.clock)
        self.assertTrue(self.reserve(counter, 50, 1000))
        counter.release(self.root, 50, stored=True)
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(counter.used(self.root))), 150)


class RecipientQuotaTests(RecipientTestCase):
    """RCPT TO a local user whose Maildir is full: 452 4.2.2, so the sending server keeps the message."""

    def quota_server(self, limit: int) -> SMTPHarness:
        h = self.server()
        self.mailbox = h.spool.path("mailbox")
        self.counted: list[str] = []

        def run(f: Any, *args: Any) -> Deferred:
            self.counted.append(args[0])
            return synchronous_run(f, *args)

        h.server.recipients.quota = MailboxQuota(self.mailbox, limit, QuotaCounter(run, h.clock))
        return h

    def test_full_mailbox_refused_with_452(self) -> None:
        """A user at or over the quota gets 452 4.2.2 at RCPT; a user with room is accepted."""
        h = self.quota_server(1000)
        fill(self.mailbox, "bob@example.com", 1000)
        fill(self.mailbox, "carol@example.com", 999)
        self.assertEqual(self.rcpt(h, b"bob@example.com", b"carol@example.com"), [
            b"452 4.2.2 <bob@example.com>: Mailbox full, try again later\r\n",
            b"250 2.1.5 Recipient ok\r\n"])
        self.assertEqual(h.server.rejections["mailbox_full"], 1)

    def test_count_is_cached(self) -> None:
        """Repeated RCPTs for one user count its Maildir once a minute, not once each."""
        h = self.quota_server(1000)
        fill(self.mailbox, "bob@example.com", 1000)
        self.rcpt(h, b"bob@example.com", b"bob@example.com")
        self.assertEqual(len(self.counted), 1)

    def test_alias_with_room_in_a_target_accepted(self) -> None:
        """An alias is refused only when every target is full; a full target is then deferred at delivery."""
        h = self.quota_server(1000)
        fill(self.mailbox, "bob@example.com", 1000)
        self.aliases.add("team@example.com", "bob@example.com", "carol@example.com")
        self.aliases.add("bobs@example.com", "bob@example.com")
        self.assertEqual(self.rcpt(h, b"team@example.com", b"bobs@example.com"), [
            b"250 2.1.5 Recipient ok\r\n",
            b"452 4.2.2 <bobs@example.com>: Mailbox full, try again later\r\n"])

    def test_zero_is_unlimited(self) -> None:
        """With quota 0 nothing is counted and every user is accepted."""
        h = self.quota_server(0)
        fill(self.mailbox, "bob@example.com", 10_000)
        self.assertEqual(self.rcpt(h, b"bob@example.com"), [b"250 2.1.5 Recipient ok\r\n"])
        self.assertEqual(self.counted, [])

    def test_uncountable_mailbox_accepted(self) -> None:
        """A Maildir that cannot be counted (an OSError) does not refuse the recipient."""
        h = self.quota_server(1000)

        def broken(f: Any, *args: Any) -> Deferred:
            raise PermissionError(13, "Permission denied")

        h.server.recipients.quota.counter.run = broken
        self.assertEqual(self.rcpt(h, b"bob@example.com"), [b"250 2.1.5 Recipient ok\r\n"])


class WiringTests(SynchronousTestCase):
    """build_service: one quota (imap.quotaMB), one counter, for IMAP, local delivery and RCPT."""

    def test_one_counter_shared(self) -> None:
        """The IMAP server, the Maildir agent and the RCPT check hold the same counter and limit."""
        config = config_in(os.path.abspath(self.mktemp()))
        config = dataclasses.replace(config, imap=dataclasses.replace(config.imap, quotaMB=5))
        service = build_service(config, MemoryReactorClock())
        quota = service.parts.smtp.recipients.quota
        self.assertEqual(quota.limit, 5 * 1024 * 1024)
        self.assertIs(service.delivery.router.local.quota, quota)
        [imap] = [child for child in service if type(child).__name__ == "IMAPService"]
        self.assertIs(imap.server.quota, quota.counter)
