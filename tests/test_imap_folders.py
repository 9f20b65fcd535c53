"""
IMAP folders as users and operators see them: DELETE gives the quota back
at once, the directories gomail makes are private (0700), and mailbox
names that are no modified UTF-7 get a plain NO with nothing in the log.
"""

from __future__ import annotations

import os
import stat

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.imaptesting import BOB
from tests.test_imap import U1, U2, HarnessMixin


def mode(path: str) -> int:
    """The permission bits of C{path}."""
    return stat.S_IMODE(os.stat(path).st_mode)


class DeleteQuotaTests(HarnessMixin, SynchronousTestCase):
    """DELETE of a folder lowers the user's quota count by the octets it held."""

    def test_delete_gives_room_at_once(self) -> None:
        """
        A folder holding 900 octets of a full quota is deleted: the APPEND
        refused before it is taken after it, with the clock unmoved (the
        cached count went down; no recount made the room).
        """
        harness = self.harness(quotaMB=1)
        harness.deliver(U1, b"x" * (1024 * 1024 - 1000))
        client = harness.logged_in()
        self.assertEqual(client.send(b"c CREATE Work\r\n"), b"c OK CREATE completed\r\n")
        harness.deliver(U2, b"y" * 900, folder=".Work")
        self.assertEqual(client.send(b"a APPEND INBOX {200}\r\n"), b"a NO [OVERQUOTA] Quota exceeded\r\n")
        root = harness.maildir()
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(harness.server.quota.used(root))),
                         1024 * 1024 - 1000 + 900)
        self.assertEqual(client.send(b"d DELETE Work\r\n"), b"d OK DELETE completed\r\n")
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(harness.server.quota.used(root))), 1024 * 1024 - 1000)
        client.send(b"b APPEND INBOX {200}\r\n")
        self.assertEqual(client.send(b"z" * 200 + b"\r\n"), b"b OK APPEND completed\r\n")
        self.assertEqual(len(harness.files("cur") + harness.files("new")), 2)


class FolderModeTests(HarnessMixin, SynchronousTestCase):
    """The directories gomail makes for IMAP are mode 0700, as the Maildirs delivery makes."""

    def setUp(self) -> None:
        # The usual umask, under which os.makedirs gave the folder itself 0755.
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)

    def test_created_folders_are_private(self) -> None:
        """A Maildir made at login, CREATEd folders (two levels) and their cur/ new/ tmp/ are all 0700."""
        harness = self.harness()
        client = harness.logged_in()
        self.assertEqual(mode(harness.maildir()), 0o700)
        self.assertEqual(client.send(b"a CREATE Work\r\n"), b"a OK CREATE completed\r\n")
        self.assertEqual(client.send(b"b CREATE Work.Sub\r\n"), b"b OK CREATE completed\r\n")
        for folder in (".Work", ".Work.Sub"):
            path = os.path.join(harness.maildir(), folder)
            self.assertEqual(mode(path), 0o700, folder)
            for sub in ("cur", "new", "tmp"):
                self.assertEqual(mode(os.path.join(path, sub)), 0o700, (folder, sub))


class MailboxNameLogTests(HarnessMixin, SynchronousTestCase):
    """Every command that takes a mailbox name answers a name that is no modified UTF-7 with NO, logging nothing."""

    def test_no_traceback_for_bad_names(self) -> None:
        """
        SELECT, EXAMINE, STATUS, LIST (reference or pattern), LSUB, CREATE,
        DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, APPEND and COPY with
        C{&ZZZ} or 8-bit octets: C{NO Invalid mailbox name encoding}, no
        Python repr of the bytes, and no event at all in the log.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        harness = self.with_mail()
        for name in (b'"&ZZZ"', b'"\xc3\xa9t\xc3\xa9"'):
            client = self.selected(harness)
            del events[:]
            commands = [b"COPY 1 " + name, b"STATUS " + name + b" (MESSAGES)", b'LIST "" ' + name,
                        b"LIST " + name + b' "*"', b'LSUB "" ' + name, b"CREATE " + name, b"DELETE " + name,
                        b"RENAME " + name + b" Other", b"RENAME INBOX " + name, b"SUBSCRIBE " + name,
                        b"UNSUBSCRIBE " + name, b"EXAMINE " + name, b"SELECT " + name]
            for command in commands:
                answer = client.send(b"t " + command + b"\r\n")
                self.assertEqual(answer, b"t NO Invalid mailbox name encoding\r\n", command)
            self.assertEqual(client.send(b"a APPEND " + name + b" {5}\r\n"), b"a NO Invalid mailbox name encoding\r\n")
            # A failed SELECT leaves no folder selected (RFC 3501 6.3.1), as before.
            self.assertEqual(client.send(b"f FETCH 1 FLAGS\r\n"), b"f BAD Unsupported command\r\n")
            self.assertEqual(events, [])
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(harness.files("cur")), 2)  # nothing stored, copied or removed

    def test_good_names_still_work(self) -> None:
        """The same commands with a valid modified UTF-7 name (C{&AOk-t&AOk-}, 'été') work as before."""
        harness = self.with_mail()
        client = self.selected(harness)
        self.assertEqual(client.send(b"c CREATE &AOk-t&AOk-\r\n"), b"c OK CREATE completed\r\n")
        self.assertIn(b'* LIST (\\HasNoChildren) "." "&AOk-t&AOk-"', client.send(b'l LIST "" &AOk-*\r\n'))
        self.assertIn(b"(MESSAGES 0)", client.send(b"s STATUS &AOk-t&AOk- (MESSAGES)\r\n"))
        self.assertEqual(client.send(b"k COPY 1 &AOk-t&AOk-\r\n"), b"k OK COPY completed\r\n")
        self.assertIn(b"e OK [READ-ONLY]", client.send(b"e EXAMINE &AOk-t&AOk-\r\n"))
        self.assertIn(b"* 1 EXISTS", client.send(b"x SELECT &AOk-t&AOk-\r\n"))
        self.assertTrue(os.path.isdir(os.path.join(harness.maildir(BOB), ".&AOk-t&AOk-", "cur")))

