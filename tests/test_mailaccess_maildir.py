"""
The read side of the Maildirs (L{gomail.mailaccess.maildir}), the POP3
mailbox and realm over it (L{gomail.mailaccess.pop3mailbox}), and the
block-by-block POP3 encoding of messages (L{gomail.mailaccess.content}).
"""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.mail.pop3 import IMailbox
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.delivery.maildir import mailbox_name
from gomail.mailaccess.content import DotStuffer, TopFilter
from gomail.mailaccess.maildir import (
    MailboxLocks,
    Maildir,
    UnsafeMailbox,
    mailbox_path,
    open_message,
    remove,
    scan,
    uidl,
    unique_name,
)
from gomail.mailaccess.pop3mailbox import MailboxInUse, MaildirRealm
from tests.smtphelpers import run


def write(path: str, content: bytes, mtime: float | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


class PathTests(SynchronousTestCase):
    """The mailbox directory comes from the canonical user name only, and stays under the root."""

    def test_same_directory_as_delivery(self):
        """A user's mailbox is the directory delivery writes to (its mailbox_name escaping)."""
        self.assertEqual(mailbox_path("/srv/mailbox", "Bob@Example.com"), "/srv/mailbox/bob@example.com")
        self.assertEqual(mailbox_path("/srv/mailbox/", "a b@x"), "/srv/mailbox/" + mailbox_name("a b@x"))

    def test_unsafe_names_refused(self):
        """Empty names, . and .., names with / or NUL or other control characters are refused."""
        for name in ("", ".", "..", "../etc", "a/b", "a\0b", "a\nb", "/abs", "x\x7f"):
            self.assertRaises(UnsafeMailbox, mailbox_path, "/srv/mailbox", name)

    def test_dots_stay_inside(self):
        """Names starting with dots are escaped (never a hidden or parent directory) and stay under the root."""
        for name in ("...", ".hidden", "..x"):
            path = mailbox_path("/srv/mailbox", name)
            self.assertEqual(os.path.dirname(path), "/srv/mailbox")
            self.assertFalse(os.path.basename(path).startswith("."))


class UIDLTests(SynchronousTestCase):
    """Unique ids come from the Maildir unique name only."""

    def test_unique_name(self):
        """The unique name is everything before the info (the first colon)."""
        self.assertEqual(unique_name("1700.abc_0.mx.test:2,S"), "1700.abc_0.mx.test")
        self.assertEqual(unique_name("1700.abc_0.mx.test"), "1700.abc_0.mx.test")

    def test_uidl_is_the_unique_name_when_valid(self):
        """A unique name of at most 70 printable characters is its own UIDL."""
        self.assertEqual(uidl("1700000000.6176339d930005f4d569c_0.mx.test"), "1700000000.6176339d930005f4d569c_0.mx.test")

    def test_uidl_digest_for_long_or_odd_names(self):
        """Longer names (a long host name) or names with spaces get a stable digest within RFC 1939's limits."""
        for unique in ("1700000000.6176339d930005f4d569c_0." + "h" * 60, "with space", "ünïcode"):
            value = uidl(unique)
            self.assertEqual(value, uidl(unique))
            self.assertTrue(0 < len(value) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in value), value)
        self.assertNotEqual(uidl("a b"), uidl("a  b"))


class ScanTests(SynchronousTestCase):
    """Listing a Maildir: new/ moves to cur/, oldest first, duplicates and strays handled."""

    def setUp(self):
        self.box = os.path.abspath(self.mktemp())

    def test_missing_mailbox_is_empty(self):
        """A mailbox that was never delivered to lists as empty and is not created."""
        self.assertEqual(scan(self.box), [])
        self.assertFalse(os.path.exists(self.box))

    def test_new_moves_to_cur(self):
        """Messages of new/ move to cur/ with :2, appended; those already in cur/ keep their names; oldest first."""
        write(os.path.join(self.box, "new", "200.b.host"), b"bb", mtime=200)
        write(os.path.join(self.box, "cur", "100.a.host:2,S"), b"a", mtime=100)
        os.makedirs(os.path.join(self.box, "tmp"))
        write(os.path.join(self.box, "new", ".hidden"), b"x")
        messages = scan(self.box)
        self.assertEqual([(m.unique, m.filename, m.size) for m in messages],
                         [("100.a.host", "100.a.host:2,S", 1), ("200.b.host", "200.b.host:2,", 2)])
        self.assertEqual(sorted(os.listdir(os.path.join(self.box, "new"))), [".hidden"])

    def test_repeated_delivery_is_one_message(self):
        """A copy in new/ of a message already in cur/ (delivery repeated after a crash) is removed, not listed twice."""
        write(os.path.join(self.box, "cur", "100.a.host:2,S"), b"same")
        write(os.path.join(self.box, "new", "100.a.host"), b"same")
        self.assertEqual([m.filename for m in scan(self.box)], ["100.a.host:2,S"])
        self.assertEqual(os.listdir(os.path.join(self.box, "new")), [])

    def test_open_and_remove_follow_flag_changes(self):
        """A message whose flags changed after the listing is still opened and removed by its unique name."""
        write(os.path.join(self.box, "new", "100.a.host"), b"content")
        [message] = scan(self.box)
        os.rename(os.path.join(self.box, "cur", "100.a.host:2,"), os.path.join(self.box, "cur", "100.a.host:2,S"))
        with open_message(self.box, message) as f:
            self.assertEqual(f.read(), b"content")
        self.assertEqual(remove(self.box, [message]), [])
        self.assertEqual(os.listdir(os.path.join(self.box, "cur")), [])
        self.assertEqual(remove(self.box, [message]), [])  # already gone: removed
        self.assertRaises(FileNotFoundError, open_message, self.box, message)


class MailboxTests(SynchronousTestCase):
    """The POP3 mailbox and its realm over a Maildir."""

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.box = os.path.join(self.root, "bob@example.com")
        write(os.path.join(self.box, "new", "100.a.host"), b"one", mtime=100)
        write(os.path.join(self.box, "new", "200.b.host"), b"three", mtime=200)
        self.realm = MaildirRealm(self.root, run, MailboxLocks())

    def open(self):
        interface, mailbox, logout = self.successResultOf(self.realm.requestAvatar("bob@example.com", None, IMailbox))
        self.assertIs(interface, IMailbox)
        return mailbox, logout

    def test_mailbox_interface(self):
        """The mailbox provides twisted's IMailbox: sizes, unique ids, deletion marks, sync removes."""
        mailbox, logout = self.open()
        self.assertTrue(verifyObject(IMailbox, mailbox))
        self.assertEqual(mailbox.listMessages(), [3, 5])
        self.assertEqual(mailbox.getUidl(1), b"200.b.host")
        mailbox.deleteMessage(0)
        self.assertEqual((mailbox.listMessages(0), mailbox.count, mailbox.size), (0, 1, 5))
        self.assertRaises(ValueError, mailbox.getMessage, 0)
        self.assertRaises(ValueError, mailbox.listMessages, 2)
        f = self.successResultOf(mailbox.getMessage(1))
        self.addCleanup(f.close)
        self.assertEqual(f.read(), b"three")
        self.assertEqual(self.successResultOf(mailbox.sync()), 1)
        self.assertEqual(os.listdir(os.path.join(self.box, "cur")), ["200.b.host:2,"])
        logout()

    def test_quit_lowers_the_quota_count(self):
        """The octets a QUIT removed come off the user's quota count at once (not a minute later)."""
        lowered = []

        class Quota:
            def add(self, address, octets):
                lowered.append((address, octets))

        realm = MaildirRealm(self.root, run, MailboxLocks(), quota=Quota())
        _, mailbox, logout = self.successResultOf(realm.requestAvatar("bob@example.com", None, IMailbox))
        mailbox.deleteMessage(0)
        mailbox.deleteMessage(1)
        self.assertEqual(self.successResultOf(mailbox.sync()), 2)
        self.assertEqual(lowered, [("bob@example.com", -8)])
        logout()

    def test_one_session_per_mailbox(self):
        """The realm hands a mailbox out once until its logout; logout twice is harmless."""
        _, logout = self.open()
        self.failureResultOf(self.realm.requestAvatar("bob@example.com", None, IMailbox), MailboxInUse)
        logout()
        logout()
        _, again = self.open()
        again()

    def test_failed_listing_frees_the_lock(self):
        """A mailbox that cannot be listed fails the request and leaves the mailbox free."""
        realm = MaildirRealm(self.root, lambda f, *a: run(_fail, *a), self.realm.locks)
        self.failureResultOf(realm.requestAvatar("bob@example.com", None, IMailbox), OSError)
        self.assertNotIn(self.box, self.realm.locks)

    def test_read_in_the_pool(self):
        """Maildir.read hands the read to the given run (the I/O pool), block by block."""
        calls = []

        def counting(f, *args):
            calls.append(getattr(f, "__name__", f))
            return run(f, *args)

        maildir = Maildir(self.box, counting)
        [first, _] = self.successResultOf(maildir.messages())
        f = self.successResultOf(maildir.open(first))
        self.addCleanup(f.close)
        self.assertEqual(self.successResultOf(maildir.read(f, 2)), b"on")
        self.assertEqual(calls, ["scan", "open_message", "read"])

    def test_unsafe_avatar_refused(self):
        """An avatar id no mailbox directory may be made from fails the request."""
        self.failureResultOf(self.realm.requestAvatar("../etc", None, IMailbox), UnsafeMailbox)


def _fail(*args):
    raise OSError("I/O error")


def encode(blocks: list[bytes], top: int | None = None) -> bytes:
    stuffer, part = DotStuffer(), None if top is None else TopFilter(top)
    out = []
    for block in blocks:
        done = False
        if part is not None:
            block, done = part.feed(block)
        out.append(stuffer.encode(block))
        if done:
            break
    return b"".join(out) + stuffer.end()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


_MESSAGES = st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\n", b"\r", b"..", b"x: y", b" "]), max_size=40).map(
    b"".join)


class ContentTests(SynchronousTestCase):
    """A message's blocks as POP3 sends them."""

    def test_dot_stuffing_and_line_ends(self):
        """Leading dots are doubled, bare LF becomes CRLF, CRLF stays, and the terminator follows."""
        self.assertEqual(encode([b".a\r\nb\n.c"]), b"..a\r\nb\r\n..c\r\n.\r\n")
        self.assertEqual(encode([b"a\r\n"]), b"a\r\n.\r\n")
        self.assertEqual(encode([b""]), b".\r\n")

    def test_boundaries(self):
        """A CRLF or a leading dot split across blocks is encoded as if the message were one block."""
        self.assertEqual(encode([b"a\r", b"\n.b"]), encode([b"a\r\n.b"]))
        self.assertEqual(encode([b"a\r\n", b".b"]), b"a\r\n..b\r\n.\r\n")

    def test_top(self):
        """TOP: header, empty line, n body lines, whatever the line ends."""
        message = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
        self.assertEqual(encode([message], 0), b"A: 1\r\nB: 2\r\n\r\n.\r\n")
        self.assertEqual(encode([message], 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n.\r\n")
        self.assertEqual(encode([b"A: 1\n\nl1\nl2\n"], 1), b"A: 1\r\n\r\nl1\r\n.\r\n")
        self.assertEqual(encode([b"A: 1\r\nno body"], 5), b"A: 1\r\nno body\r\n.\r\n")

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_MESSAGES, st.lists(st.integers(min_value=0, max_value=200), max_size=6))
    def test_any_cut_gives_the_same_bytes(self, message, points):
        """However a message is cut into blocks, RETR's bytes are the same, and no line of them is a lone dot."""
        whole = encode([message])
        self.assertEqual(encode(cut(message, points)), whole)
        body = whole[:-3]
        self.assertNotIn(b"\r\n.\r\n", b"\r\n" + body)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_MESSAGES, st.lists(st.integers(min_value=0, max_value=200), max_size=6),
           st.integers(min_value=0, max_value=5))
    def test_top_any_cut(self, message, points, lines):
        """TOP gives the same bytes however the message is cut, and a prefix of what RETR gives."""
        whole = encode([message], lines)
        self.assertEqual(encode(cut(message, points), lines), whole)
        self.assertTrue(encode([message]).startswith(whole[:-3]))
