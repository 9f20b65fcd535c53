"""
IMAP IDLE woken by notices (L{gomail.mailaccess.notify},
L{gomail.mailaccess.imapidle}): local delivery and other sessions' APPEND,
COPY and EXPUNGE make an idling session report the change at once, without
the clock moving; polling stays as the fallback. Bytes in, bytes out, over
in-memory transports on a task.Clock.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.configmailaccess import IMAPSettings
from gomail.delivery.maildir import MaildirDelivery
from gomail.interfaces import IMailboxNotices
from gomail.mailaccess.notify import MailboxNotices
from gomail.mailaccess.quota import MailboxQuota
from gomail.root import build_service
from gomail.spool.writer import ImmediateWriter
from tests.imaptesting import BOB, CAROL, CAROL_PASSWORD, IMAPClient, IMAPHarness
from tests.smtphelpers import ManualRun
from tests.spooltesting import make_spool, start_commit
from tests.test_imap import ONE, U1, U2, HarnessMixin
from tests.test_service import config_in

#: A poll interval no test reaches: what an idling session reports came from a notice.
NEVER = 3600


def idle_polls(harness: IMAPHarness) -> list:
    """The IDLE polls scheduled on the harness's clock."""
    return [call for call in harness.clock.getDelayedCalls() if getattr(call.func, "__name__", "") == "_idle_poll"]


class MailboxNoticesTests(SynchronousTestCase):
    """L{MailboxNotices}: listeners per Maildir, told at once, gone when they unsubscribe."""

    def test_provides_the_interface(self) -> None:
        """MailboxNotices is the IMailboxNotices plugins are handed."""
        self.assertTrue(verifyObject(IMailboxNotices, MailboxNotices()))

    def test_notify_tells_the_maildirs_listeners(self) -> None:
        """A notice reaches the listeners of that Maildir (addresses compared as delivery names them), with the folder."""
        notices = MailboxNotices()
        heard: list[tuple[str, str]] = []
        notices.subscribe("bob@example.com", lambda folder: heard.append(("bob", folder)))
        notices.subscribe("carol@example.com", lambda folder: heard.append(("carol", folder)))
        self.assertEqual(notices.notify("Bob@Example.COM"), 1)
        self.assertEqual(notices.notify("bob@example.com", "Work"), 1)
        self.assertEqual(heard, [("bob", "INBOX"), ("bob", "Work")])
        self.assertEqual(notices.notify("nobody@example.com"), 0)

    def test_unsubscribe_leaves_nothing(self) -> None:
        """After the last listener of a Maildir unsubscribes (twice does no harm) nothing is kept for it."""
        notices = MailboxNotices()
        first = notices.subscribe("bob@example.com", lambda folder: None)
        second = notices.subscribe("bob@example.com", lambda folder: None)
        assert first is not None and second is not None
        self.assertEqual(notices.listeners("bob@example.com"), 2)
        first()
        first()
        self.assertEqual(notices.listeners("bob@example.com"), 1)
        second()
        self.assertEqual((notices.listeners(), notices._listeners), (0, {}))

    def test_bounded_per_maildir(self) -> None:
        """Past C{limit} listeners a Maildir takes no more (None: the caller polls); others still can."""
        notices = MailboxNotices(limit=2)
        self.assertIsNotNone(notices.subscribe("bob@example.com", lambda folder: None))
        self.assertIsNotNone(notices.subscribe("bob@example.com", lambda folder: None))
        self.assertIsNone(notices.subscribe("bob@example.com", lambda folder: None))
        self.assertIsNotNone(notices.subscribe("carol@example.com", lambda folder: None))
        self.assertEqual(notices.listeners(), 3)

    def test_a_failing_listener_does_not_silence_the_others(self) -> None:
        """A listener that raises is logged; the listeners after it are told all the same."""
        notices = MailboxNotices()
        heard: list[str] = []

        def broken(folder: str) -> None:
            raise RuntimeError("boom")

        notices.subscribe("bob@example.com", broken)
        notices.subscribe("bob@example.com", heard.append)
        self.assertEqual(notices.notify("bob@example.com"), 2)
        self.assertEqual(heard, ["INBOX"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class IdleNoticeTests(HarnessMixin, SynchronousTestCase):
    """An idling session reports what a notice announces at once; others are left alone."""

    def idling(self, harness: IMAPHarness, user: str = BOB, password: str | None = None,
               folder: bytes = b"INBOX") -> IMAPClient:
        client = harness.logged_in(user, password) if password else harness.logged_in()
        self.assertIn(b"s OK [READ-WRITE]", client.send(b"s SELECT " + folder + b"\r\n"))
        self.assertEqual(client.send(b"i IDLE\r\n"), b"+ idling\r\n")
        return client

    def test_notice_gives_exists_without_the_clock_moving(self) -> None:
        """Mail announced to an idling session is reported (EXISTS, RECENT) at once: no poll, no clock advance."""
        harness = self.harness(idlePollInterval=NEVER)
        client = self.idling(harness)
        now = harness.clock.seconds()
        harness.deliver(U1, ONE)
        self.assertEqual(harness.server.notices.notify(BOB), 1)
        self.assertEqual(client.transport.value(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(harness.clock.seconds(), now)
        client.transport.clear()
        self.assertEqual(client.send(b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_local_delivery_wakes_idle(self) -> None:
        """
        The SMTP side's local delivery (MaildirDelivery sharing the server's
        notices) into Bob's Maildir makes his idling session say EXISTS at
        once; Carol, who got nothing, hears nothing.
        """
        harness = self.harness(idlePollInterval=NEVER)
        spool = make_spool(harness.directory, harness.clock)
        agent = MaildirDelivery(spool.path("mailbox"), "mx.test", ImmediateWriter(),
                                notices=harness.server.notices)
        bob = self.idling(harness)
        carol = self.idling(harness, CAROL, CAROL_PASSWORD)
        envelope, committed = start_commit(spool, ONE, BOB, received=harness.clock.seconds())
        self.successResultOf(committed)
        result = self.successResultOf(agent.deliver(envelope, spool.message_path(envelope.id), envelope.pending()))
        self.assertEqual(result[BOB][0], 250)
        self.assertEqual(bob.transport.value(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(carol.transport.value(), b"")

    def test_deferred_recipient_is_not_announced(self) -> None:
        """A recipient whose copy was not stored (452 Mailbox full) is not announced: its sessions are not woken."""
        harness = self.harness()
        spool = make_spool(harness.directory, harness.clock)
        quota = MailboxQuota(spool.path("mailbox"), 10, harness.server.quota)
        agent = MaildirDelivery(spool.path("mailbox"), "mx.test", ImmediateWriter(), quota=quota,
                                notices=harness.server.notices)
        heard: list[str] = []
        harness.server.notices.subscribe(BOB, heard.append)
        envelope, committed = start_commit(spool, ONE, BOB, received=harness.clock.seconds())
        self.successResultOf(committed)
        result = self.successResultOf(agent.deliver(envelope, spool.message_path(envelope.id), envelope.pending()))
        self.assertEqual(result[BOB][0], 452)
        self.assertEqual(heard, [])

    def test_only_idling_sessions_on_that_folder_are_refreshed(self) -> None:
        """
        A notice about Bob's INBOX refreshes neither Bob's session that is
        not idling, nor Bob's session idling on another folder, nor Carol's
        idling session, though each has mail waiting on disk.
        """
        harness = self.harness(idlePollInterval=NEVER)
        harness.logged_in().send(b"c CREATE Work\r\n")
        busy = harness.logged_in()
        self.assertIn(b"s OK", busy.send(b"s SELECT INBOX\r\n"))
        elsewhere = self.idling(harness, folder=b"Work")
        carol = self.idling(harness, CAROL, CAROL_PASSWORD)
        harness.deliver(U1, ONE)
        harness.deliver(U1, ONE, folder=".Work")
        harness.deliver(U1, ONE, user=CAROL)
        self.assertEqual(harness.server.notices.notify(BOB, "INBOX"), 1)  # only the Work session listens
        for client in (busy, elsewhere, carol):
            self.assertEqual(client.transport.value(), b"")
        self.assertEqual(busy.send(b"n NOOP\r\n"), b"* 1 EXISTS\r\n* 1 RECENT\r\nn OK Completed\r\n")

    def test_mail_before_idle_is_reported_when_idle_starts(self) -> None:
        """Notices are heard only while idling: what came since the last command is reported as IDLE starts."""
        harness = self.harness(idlePollInterval=NEVER)
        client = self.selected(harness)
        harness.deliver(U1, ONE)
        harness.server.notices.notify(BOB)  # nobody idles: nobody hears
        self.assertEqual(client.send(b"i IDLE\r\n"), b"+ idling\r\n* 1 EXISTS\r\n* 1 RECENT\r\n")

    def test_append_copy_expunge_wake_other_sessions(self) -> None:
        """Another session's APPEND, COPY into the folder and EXPUNGE are reported to Bob's idling session at once."""
        harness = self.harness(idlePollInterval=NEVER)
        idling = self.idling(harness)
        other = harness.logged_in()
        other.send(b"c CREATE Work\r\n")
        other.send(b"a APPEND INBOX {5}\r\n")
        self.assertEqual(other.send(b"hello\r\n"), b"a OK APPEND completed\r\n")
        # Stored in cur/, not new/: no session makes it \Recent (gomail's rule, see the README).
        self.assertEqual(idling.transport.value(), b"* 1 EXISTS\r\n* 0 RECENT\r\n")
        idling.transport.clear()
        other.send(b"w APPEND Work {5}\r\n")
        other.send(b"there\r\n")
        self.assertEqual(idling.transport.value(), b"")  # Work is not the folder it idles on
        self.assertIn(b"s OK", other.send(b"s SELECT Work\r\n"))
        self.assertEqual(other.send(b"c COPY 1 INBOX\r\n"), b"c OK COPY completed\r\n")
        self.assertEqual(idling.transport.value(), b"* 2 EXISTS\r\n* 0 RECENT\r\n")
        idling.transport.clear()
        self.assertIn(b"s OK", other.send(b"s SELECT INBOX\r\n"))
        other.send(b"f STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertIn(b"e OK", other.send(b"e EXPUNGE\r\n"))
        self.assertEqual(idling.transport.value(), b"* 1 EXPUNGE\r\n* 1 EXISTS\r\n")

    def test_notices_during_a_look_are_coalesced(self) -> None:
        """Three notices while a look is in the I/O pool give one more look after it, never two at once."""
        harness = self.harness(idlePollInterval=NEVER)
        client = self.idling(harness)
        manual = ManualRun()
        client.proto.account.run = manual
        harness.deliver(U1, ONE)
        for _ in range(3):
            harness.server.notices.notify(BOB)
        self.assertEqual(len(manual.pending), 1)
        manual.release_one()
        self.assertEqual(client.transport.value(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(len(manual.pending), 1)  # the one look the notices asked for
        self.assertEqual(idle_polls(harness), [])  # no poll during the looks
        harness.deliver(U2, ONE)
        manual.release_one()
        self.assertEqual(client.transport.value(), b"* 1 EXISTS\r\n* 1 RECENT\r\n* 2 EXISTS\r\n* 2 RECENT\r\n")
        self.assertEqual(manual.pending, [])
        self.assertEqual(len(idle_polls(harness)), 1)

    def test_done_during_a_look_answers_after_it(self) -> None:
        """DONE while a woken look is in the I/O pool: its changes first, then the tagged answer; no more looks."""
        harness = self.harness(idlePollInterval=NEVER)
        client = self.idling(harness)
        manual = ManualRun()
        client.proto.account.run = manual
        harness.deliver(U1, ONE)
        harness.server.notices.notify(BOB)
        self.assertEqual(client.send(b"DONE\r\n"), b"")
        harness.server.notices.notify(BOB)
        manual.release_one()
        self.assertEqual(client.take(), b"* 1 EXISTS\r\n* 1 RECENT\r\ni OK IDLE terminated\r\n")
        self.assertEqual((manual.pending, idle_polls(harness)), ([], []))

    def test_unsubscribed_when_idle_ends(self) -> None:
        """DONE, DONE then LOGOUT, a lost connection and a server shutdown each end the subscription and the poll."""
        harness = self.harness(idlePollInterval=NEVER)
        notices = harness.server.notices

        def ends(client: IMAPClient, end) -> None:
            self.assertEqual((notices.listeners(BOB), len(idle_polls(harness))), (1, 1))
            end(client)
            self.assertEqual((notices.listeners(), idle_polls(harness)), (0, []))

        ends(self.idling(harness), lambda c: c.send(b"DONE\r\n"))
        ends(self.idling(harness), lambda c: c.send(b"DONE\r\nl LOGOUT\r\n"))
        ends(self.idling(harness), lambda c: c.proto.connectionLost(None))
        ends(self.idling(harness), lambda c: harness.server.stop())

    def test_poll_stays_the_fallback(self) -> None:
        """Mail written by another program (no notice) is found by the poll: idlePollInterval, 30 s by default."""
        self.assertEqual(IMAPSettings().idlePollInterval, 30)
        harness = self.harness()
        client = self.idling(harness)
        harness.deliver(U1, ONE)
        harness.clock.advance(29)
        self.assertEqual(client.take(), b"")
        harness.clock.advance(1)
        self.assertEqual(client.take(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")


class WiringTests(SynchronousTestCase):
    """build_service: one MailboxNotices for local delivery and the IMAP server."""

    def test_one_notices_shared(self) -> None:
        """The Maildir agent publishes to the very object the IMAP server's sessions listen on."""
        config = config_in(os.path.abspath(self.mktemp()))
        service = build_service(config, MemoryReactorClock())
        [imap] = [child for child in service if type(child).__name__ == "IMAPService"]
        self.assertIsInstance(imap.server.notices, MailboxNotices)
        self.assertIs(service.delivery.router.local.notices, imap.server.notices)


class ChangeOrderTests(HarnessMixin, SynchronousTestCase):
    """What a refresh reports, in the order RFC 3501 7.4.1 needs."""

    def test_flag_changes_after_expunges(self):
        """
        Another session flags message 3 and expunges message 1: this session
        hears "* 1 EXPUNGE" first, then the flags of what is now message 2
        (numbered after the expunge), so its client flags the right message.
        """
        harness = self.harness()
        harness.deliver(U1, ONE, mtime=1_700_000_000)
        harness.deliver(U2, ONE, mtime=1_700_000_100)
        harness.deliver("1700000200.cccc_0.mx.test", ONE, mtime=1_700_000_200)
        watcher, other = self.selected(harness), self.selected(harness)
        other.send(b"a STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        other.send(b"b STORE 3 +FLAGS.SILENT (\\Flagged)\r\n")
        self.assertIn(b"e OK", other.send(b"e EXPUNGE\r\n"))
        answer = watcher.send(b"n NOOP\r\n")
        self.assertEqual(answer, b"* 1 EXPUNGE\r\n* 2 FETCH (FLAGS (\\Flagged))\r\n* 2 EXISTS\r\nn OK Completed\r\n")
