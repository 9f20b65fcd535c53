"""
The IMAP server (L{gomail.mailaccess.imap}) seen from the client's side:
bytes in, bytes out, over in-memory transports on a task.Clock, with
gomail's real login chain and real Maildirs on disk.
"""

from __future__ import annotations

import base64
import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.configload import ConfigError, load_config
from gomail.extension.loader import load_plugins
from gomail.interfaces import IServiceProvider
from gomail.mailaccess import imapfolders
from gomail.mailaccess.imapstore import FolderError
from gomail.plugin import ServiceContext
from gomail.spool.store import Spool
from tests.imaptesting import BOB, BOB_PASSWORD, CAROL, IMAPHarness
from tests.smtphelpers import run

ONE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: one\r\n\r\nhello\r\n"
MULTI = (b"From: a@b\r\nSubject: multi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n"
         b"\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\npart one\r\n--XX\r\n"
         b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n")
U1, U2 = "1700000000.aaaa_0.mx.test", "1700000100.bbbb_0.mx.test"


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


class HarnessMixin:
    def harness(self, **kwargs) -> IMAPHarness:
        return IMAPHarness(self.mktemp(), **kwargs)

    def with_mail(self, **kwargs) -> IMAPHarness:
        harness = self.harness(**kwargs)
        harness.deliver(U1, ONE, mtime=1_700_000_000)
        harness.deliver(U2, MULTI, mtime=1_700_000_100)
        return harness

    def selected(self, harness: IMAPHarness, folder: bytes = b"INBOX"):
        client = harness.logged_in()
        answer = client.send(b"s SELECT " + folder + b"\r\n")
        assert b"s OK [READ-WRITE]" in answer, answer
        return client


class TLSTests(HarnessMixin, SynchronousTestCase):
    """STARTTLS, LOGINDISABLED and no login before TLS (RFC 2595)."""

    def test_capabilities_before_and_after_tls(self):
        """Before STARTTLS: STARTTLS and LOGINDISABLED, no AUTH=; after it: AUTH=PLAIN, no LOGINDISABLED."""
        client = self.harness().connect()
        before = client.send(b"a CAPABILITY\r\n")
        self.assertIn(b"STARTTLS", before)
        self.assertIn(b"LOGINDISABLED", before)
        self.assertNotIn(b"AUTH=", before)
        client.starttls()
        after = client.send(b"b CAPABILITY\r\n")
        self.assertIn(b"AUTH=PLAIN", after)
        self.assertNotIn(b"LOGINDISABLED", after)
        self.assertNotIn(b"STARTTLS", after)
        self.assertEqual(client.send(b"c STARTTLS\r\n"), b"c NO TLS already active\r\n")

    def test_login_and_authenticate_refused_before_tls(self):
        """LOGIN and AUTHENTICATE before STARTTLS are refused without asking the portal (nothing audited)."""
        harness = self.harness()
        client = harness.connect()
        self.assertEqual(client.send(b'a LOGIN "' + BOB.encode() + b'" "' + BOB_PASSWORD.encode() + b'"\r\n'),
                         b"a NO [PRIVACYREQUIRED] Plaintext login is not allowed: issue STARTTLS first\r\n")
        self.assertTrue(client.send(b"b AUTHENTICATE PLAIN\r\n").startswith(b"b NO [PRIVACYREQUIRED]"))
        self.assertEqual(harness.audit.entries, [])

    def test_starttls_discards_pipelined_plaintext(self):
        """A command pipelined behind STARTTLS in the same packet is never run (CVE-2011-0411 class)."""
        client = self.harness().connect()
        answer = client.send(b"a STARTTLS\r\nb LOGIN x y\r\n")
        self.assertEqual(answer, b"a OK Begin TLS negotiation now\r\n")
        self.assertEqual(client.transport.tls_started_with, [client.proto.server.tls_context])

    def test_plaintext_loopback_only_when_configured(self):
        """allowPlaintextLoopback lets a loopback client log in without TLS; others still may not."""
        harness = self.harness(allowPlaintextLoopback=True)
        local = harness.connect("127.0.0.1")
        self.assertIn(b"AUTH=PLAIN", local.send(b"a CAPABILITY\r\n"))
        self.assertIn(b"l1 OK", local.login(tls=False))
        remote = harness.connect("192.0.2.9")
        self.assertIn(b"NO [PRIVACYREQUIRED]", remote.login(tls=False))


class LoginTests(HarnessMixin, SynchronousTestCase):
    """LOGIN and AUTHENTICATE PLAIN through gomail's portal, audited with protocol imap."""

    def test_login_audited(self):
        """A good LOGIN enters the authenticated state and is audited as imap success."""
        harness = self.harness()
        client = harness.logged_in()
        self.assertEqual(client.proto.state, "auth")
        entry = harness.audit.entries[-1]
        self.assertEqual((entry.user, entry.protocol, entry.result), (BOB, "imap", "success"))

    def test_failures_are_uniform(self):
        """An unknown user and a wrong password get the same answer, both audited as failures."""
        harness = self.harness()
        client = harness.connect()
        unknown = client.login("nobody@example.com", "x")
        wrong = client.send(b'l2 LOGIN "' + BOB.encode() + b'" "wrong"\r\n')
        self.assertEqual(unknown, b"l1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertEqual(wrong, b"l2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertEqual([e.result for e in harness.audit.entries], ["failure", "failure"])

    def test_authenticate_plain(self):
        """AUTHENTICATE PLAIN with a continuation, and with an initial response (RFC 4959)."""
        harness = self.harness()
        client = harness.connect()
        client.starttls()
        self.assertEqual(client.send(b"a AUTHENTICATE PLAIN\r\n"), b"+ \r\n")
        self.assertIn(b"a OK", client.send(plain(BOB, BOB_PASSWORD) + b"\r\n"))
        other = harness.connect()
        other.starttls()
        self.assertIn(b"b OK", other.send(b"b AUTHENTICATE PLAIN " + plain(CAROL, "carol-Battery-staple-2") + b"\r\n"))

    def test_authenticate_cancel_garbage_and_authzid(self):
        """'*' cancels, bad base64 is BAD, acting as another user is refused like a wrong password."""
        client = self.harness().connect()
        client.starttls()
        client.send(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(client.send(b"*\r\n"), b"a BAD Authentication cancelled\r\n")
        self.assertTrue(client.send(b"b AUTHENTICATE PLAIN !!!\r\n").startswith(b"b BAD"))
        answer = client.send(b"c AUTHENTICATE PLAIN " + plain(BOB, BOB_PASSWORD, authzid=CAROL) + b"\r\n")
        self.assertEqual(answer, b"c NO [AUTHENTICATIONFAILED] Authentication failed\r\n")

    def test_commands_need_login(self):
        """SELECT before login is BAD (twisted's state tables), and no mailbox is touched."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"a SELECT INBOX\r\n"), b"a BAD Unsupported command\r\n")


class FolderTests(HarnessMixin, SynchronousTestCase):
    """Maildir++ folders: CREATE, LIST, RENAME, DELETE, subscriptions; names that could escape refused."""

    def test_folder_names_that_could_escape_are_refused(self):
        """'..', '/', a leading dot, control characters, wildcards: NO, and nothing is made outside the Maildir."""
        harness = self.harness()
        client = harness.logged_in()
        for name in (b'"../x"', b'"a/b"', b'".hidden"', b'"a..b"', b'"x\x01y"', b'"a*"', b'"INBOX.x"', b'"a.."'):
            answer = client.send(b"c CREATE " + name + b"\r\n")
            self.assertTrue(answer.startswith((b"c NO", b"c BAD")), (name, answer))
        self.assertEqual(sorted(os.listdir(harness.root)), [os.path.basename(harness.maildir())])
        self.assertEqual(sorted(n for n in os.listdir(harness.maildir()) if n.startswith(".")), [])
        for bad in ("..", "../x", "a/b", ".x", "a\0b"):
            self.assertRaises(FolderError, imapfolders.folder_path, harness.maildir(), bad)

    def test_create_list_rename_delete(self):
        """A folder is a '.Name' Maildir; RENAME moves its children; DELETE removes it; INBOX stays."""
        harness = self.harness()
        client = harness.logged_in()
        self.assertEqual(client.send(b"a CREATE Work\r\n"), b"a OK CREATE completed\r\n")
        self.assertEqual(client.send(b"b CREATE Work.Sub\r\n"), b"b OK CREATE completed\r\n")
        self.assertTrue(os.path.isdir(os.path.join(harness.maildir(), ".Work.Sub", "cur")))
        self.assertEqual(client.send(b"c CREATE Work\r\n"), b"c NO Mailbox already exists\r\n")
        listing = client.send(b'd LIST "" *\r\n')
        self.assertIn(b'* LIST (\\HasChildren) "." "Work"', listing)
        self.assertIn(b'* LIST (\\HasNoChildren) "." "Work.Sub"', listing)
        self.assertIn(b'"INBOX"', listing)
        self.assertEqual(client.send(b"e RENAME Work Job\r\n"), b"e OK RENAME completed\r\n")
        self.assertEqual(sorted(n for n in os.listdir(harness.maildir()) if n.startswith(".")), [".Job", ".Job.Sub"])
        self.assertTrue(client.send(b"f DELETE Job\r\n").startswith(b"f NO Mailbox has inferior"))
        self.assertEqual(client.send(b"g DELETE Job.Sub\r\n"), b"g OK DELETE completed\r\n")
        self.assertTrue(client.send(b"h DELETE INBOX\r\n").startswith(b"h NO"))

    def test_subscriptions_survive_sessions(self):
        """SUBSCRIBE writes the 'subscriptions' file; LSUB of a later session lists it; UNSUBSCRIBE removes it."""
        harness = self.harness()
        client = harness.logged_in()
        client.send(b"a CREATE Work\r\n")
        self.assertEqual(client.send(b"b SUBSCRIBE Work\r\n"), b"b OK SUBSCRIBE completed\r\n")
        later = harness.logged_in()
        self.assertIn(b'* LSUB (\\HasNoChildren) "." "Work"', later.send(b'c LSUB "" *\r\n'))
        self.assertEqual(later.send(b"d UNSUBSCRIBE Work\r\n"), b"d OK UNSUBSCRIBE completed\r\n")
        self.assertEqual(imapfolders.read_subscriptions(harness.maildir()), [])


class MessageTests(HarnessMixin, SynchronousTestCase):
    """SELECT, FETCH, STORE, SEARCH, COPY, EXPUNGE over the Maildir; UIDs and flags on disk."""

    def test_select_and_uids_stable_across_restarts(self):
        """UIDVALIDITY and UIDs come from gomail-uidlist: the same after a restart; flags are in the file names."""
        harness = self.with_mail()
        client = self.selected(harness)
        client.send(b"a STORE 2 +FLAGS (\\Flagged \\Seen)\r\n")
        first = client.send(b"b UID FETCH 1:* (UID FLAGS)\r\n")
        self.assertEqual(harness.files("cur"), [U1 + ":2,", U2 + ":2,FS"])
        harness.server = harness.build_server()
        again = self.selected(harness)
        second = again.send(b"b UID FETCH 1:* (UID FLAGS)\r\n")
        self.assertEqual(first.replace(b" \\Recent", b"").replace(b"\\Recent", b""), second)
        self.assertIn(b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Seen))", second)
        with open(os.path.join(harness.maildir(), "gomail-uidlist")) as f:
            self.assertEqual(f.read().splitlines()[1:], [f"1 {U1}", f"2 {U2}"])

    def test_fetch_sections(self):
        """BODY.PEEK[] sections as stored: HEADER.FIELDS, part numbers, MIME, TEXT, partial; PEEK keeps \\Seen off."""
        client = self.selected(self.with_mail())
        answer = client.send(b"f FETCH 2 (BODY.PEEK[1] BODY.PEEK[2.HEADER] BODY.PEEK[2.TEXT] BODY.PEEK[1.MIME] "
                             b"BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.9>)\r\n")
        self.assertEqual(answer, b"* 2 FETCH (BODY[1] {8}\r\npart one BODY[2.HEADER] {18}\r\nSubject: inner\r\n\r\n"
                                 b" BODY[2.TEXT] {10}\r\ninner body BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n"
                                 b"\r\n BODY[HEADER.FIELDS (Subject)] {18}\r\nSubject: multi\r\n\r\n"
                                 b" BODY[]<0> {9}\r\nFrom: a@b)\r\nf OK FETCH completed\r\n")
        self.assertNotIn(b"\\Seen", client.send(b"g FETCH 2 FLAGS\r\n"))

    def test_fetch_whole_message_sets_seen(self):
        """BODY[] sends the stored bytes (streamed from the file) and sets \\Seen, reported with FLAGS."""
        harness = self.with_mail()
        client = self.selected(harness)
        answer = client.send(b"f FETCH 1 BODY[]\r\n")
        self.assertEqual(answer, b"* 1 FETCH (BODY[] {%d}\r\n" % len(ONE) + ONE +
                         b" FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n")
        self.assertEqual(harness.files("cur")[0], U1 + ":2,S")

    def test_bodystructure_and_envelope(self):
        """BODYSTRUCTURE gives body sizes of the parts; ENVELOPE the header fields (twisted's encoders)."""
        client = self.selected(self.with_mail())
        answer = client.send(b"f FETCH 2 BODYSTRUCTURE\r\n")
        self.assertIn(b'("text" "plain" NIL NIL NIL NIL 8 1', answer)
        self.assertIn(b'"mixed"', answer)
        envelope = client.send(b"e FETCH 1 (ENVELOPE RFC822.SIZE)\r\n")
        self.assertIn(b'"one"', envelope)
        self.assertIn(b"RFC822.SIZE %d" % len(ONE), envelope)

    def test_search(self):
        """SEARCH by header, body text, flags and UID; an unknown key is BAD."""
        client = self.selected(self.with_mail())
        self.assertEqual(client.send(b"a SEARCH SUBJECT multi\r\n"), b"* SEARCH 2\r\na OK SEARCH completed\r\n")
        self.assertEqual(client.send(b"b SEARCH TEXT inner\r\n"), b"* SEARCH 2\r\nb OK SEARCH completed\r\n")
        client.send(b"c STORE 1 +FLAGS.SILENT (\\Seen)\r\n")
        self.assertEqual(client.send(b"d UID SEARCH UNSEEN\r\n"), b"* SEARCH 2\r\nd OK SEARCH completed\r\n")
        self.assertEqual(client.send(b"e SEARCH FOO\r\n"), b"e BAD Invalid search criteria\r\n")

    def test_store_copy_expunge(self):
        """STORE \\Deleted then EXPUNGE removes the file; COPY links the message into the folder with its flags."""
        harness = self.with_mail()
        client = self.selected(harness)
        client.send(b"a CREATE Archive\r\n")
        self.assertEqual(client.send(b"b STORE 1 +FLAGS.SILENT (\\Deleted)\r\n"), b"b OK STORE completed\r\n")
        self.assertEqual(client.send(b"c COPY 1 Archive\r\n"), b"c OK COPY completed\r\n")
        self.assertEqual(client.send(b"d COPY 1 Nowhere\r\n"), b"d NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(client.send(b"e EXPUNGE\r\n"), b"* 1 EXPUNGE\r\ne OK EXPUNGE completed\r\n")
        self.assertEqual(harness.files("cur"), [U2 + ":2,"])
        copied = harness.files("cur", folder=".Archive")
        self.assertEqual(len(copied), 1)
        self.assertTrue(copied[0].endswith(":2,T"))
        status = client.send(b"f STATUS Archive (MESSAGES UIDNEXT)\r\n")
        self.assertIn(b"* STATUS Archive (MESSAGES 1 UIDNEXT 2)", status)

    def test_close_expunges_silently_examine_is_read_only(self):
        """CLOSE removes \\Deleted messages without EXPUNGE responses; EXAMINE refuses STORE."""
        harness = self.with_mail()
        client = self.selected(harness)
        client.send(b"a STORE 2 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(client.send(b"b CLOSE\r\n"), b"b OK CLOSE completed\r\n")
        self.assertEqual(harness.files("cur"), [U1 + ":2,"])
        self.assertIn(b"[READ-ONLY]", client.send(b"c EXAMINE INBOX\r\n"))
        self.assertEqual(client.send(b"d STORE 1 +FLAGS (\\Seen)\r\n"), b"d NO Mailbox is read-only\r\n")


class AppendTests(HarnessMixin, SynchronousTestCase):
    """APPEND: stored with its flags and date; bounded by maxLiteralSize and the quota."""

    def test_append_stores_with_flags(self):
        """APPEND writes into cur/ with the flags in the name, and the selected folder hears of it."""
        harness = self.harness()
        client = self.selected(harness)
        message = b"Subject: draft\r\n\r\nbody\r\n"
        self.assertEqual(client.send(b'a APPEND INBOX (\\Draft \\Seen) "05-Jan-2024 10:00:00 +0000" {%d}\r\n'
                                     % len(message)), b"+ Ready for %d octets of data\r\n" % len(message))
        answer = client.send(message + b"\r\n")
        self.assertIn(b"* 1 EXISTS", answer)
        self.assertTrue(answer.endswith(b"a OK APPEND completed\r\n"))
        [name] = harness.files("cur")
        self.assertTrue(name.endswith(":2,DS"))
        self.assertEqual(os.stat(os.path.join(harness.maildir(), "cur", name)).st_mtime, 1704448800)

    def test_long_sequence_set_refused(self):
        """A sequence set of 500+ ranges is BAD at once (twisted's parser is quadratic); the session goes on."""
        client = self.selected(self.harness())
        ranges = b",".join(b"%d" % (2 * n + 1) for n in range(600))
        answer = client.send(b"a FETCH " + ranges + b" FLAGS\r\n")
        self.assertTrue(answer.startswith(b"a BAD "), answer[:100])
        self.assertEqual(client.send(b"b NOOP\r\n"), b"b OK Completed\r\n")

    def test_literal_size_forms_cannot_pass_the_bound(self):
        """{+2048}, { 2048} and {2_048} (int() takes them) are refused, not read past maxLiteralSize."""
        client = self.selected(self.harness(maxLiteralSize=1024))
        for literal in (b"{+2048}", b"{ 2048}", b"{2_048}"):
            answer = client.send(b"a APPEND INBOX " + literal + b"\r\n")
            self.assertTrue(answer.startswith((b"a NO ", b"a BAD ")), answer)
            self.assertNotIn(b"+ Ready", answer)

    def test_append_too_big_is_refused_before_the_data(self):
        """A literal over maxLiteralSize is NO [TOOBIG] without a continuation; the session goes on."""
        client = self.selected(self.harness(maxLiteralSize=1024))
        self.assertEqual(client.send(b"a APPEND INBOX {2048}\r\n"),
                         b"a NO [TOOBIG] Message too large (at most 1024 octets)\r\n")
        self.assertEqual(client.send(b"b NOOP\r\n"), b"b OK Completed\r\n")

    def test_append_over_quota(self):
        """
        With quotaMB, an APPEND that would pass it is NO [OVERQUOTA] before
        the client is asked for the message (no continuation), and nothing is stored.
        """
        harness = self.harness(quotaMB=1)
        harness.deliver(U1, b"x" * (1024 * 1024 - 10))
        client = self.selected(harness)
        self.assertEqual(client.send(b"a APPEND INBOX {100}\r\n"), b"a NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(len(harness.files("cur")), 1)
        self.assertEqual(client.send(b"b NOOP\r\n"), b"b OK Completed\r\n")

    def test_append_racing_the_quota_is_still_refused(self):
        """Room at the continuation but not when the message is stored (another APPEND took it): NO [OVERQUOTA]."""
        harness = self.harness(quotaMB=1)
        harness.deliver(U1, b"x" * (1024 * 1024 - 150))
        first, second = self.selected(harness), self.selected(harness)
        self.assertTrue(first.send(b"a APPEND INBOX {100}\r\n").startswith(b"+ Ready"))
        self.assertTrue(second.send(b"b APPEND INBOX {100}\r\n").startswith(b"+ Ready"))
        self.assertTrue(first.send(b"y" * 100 + b"\r\n").endswith(b"a OK APPEND completed\r\n"))
        self.assertEqual(second.send(b"z" * 100 + b"\r\n"), b"b NO [OVERQUOTA] Quota exceeded\r\n")

    def test_append_to_missing_folder(self):
        """APPEND to a folder that does not exist: NO [TRYCREATE] before the message is asked for."""
        client = self.selected(self.harness())
        self.assertEqual(client.send(b"a APPEND Nope {3}\r\n"), b"a NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(client.send(b"b NOOP\r\n"), b"b OK Completed\r\n")

    def test_append_with_a_literal_folder_name(self):
        """The folder name may itself be a literal: the checks before the message still see it."""
        client = self.selected(self.harness())
        self.assertEqual(client.send(b"a APPEND {4}\r\n"), b"+ Ready for 4 octets of text\r\n")
        self.assertEqual(client.send(b"Nope {3}\r\n"), b"a NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(client.send(b"b APPEND {5}\r\n"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(client.send(b"INBOX {3}\r\n"), b"+ Ready for 3 octets of data\r\n")
        self.assertTrue(client.send(b"abc\r\n").endswith(b"b OK APPEND completed\r\n"))


class SessionTests(HarnessMixin, SynchronousTestCase):
    """IDLE, limits, ordering and bad input."""

    def test_idle_wakes_on_delivery(self):
        """While IDLE the selected folder is looked at every idlePollInterval s: a delivery gives EXISTS; DONE ends it."""
        harness = self.harness(idlePollInterval=5)
        client = self.selected(harness)
        self.assertEqual(client.send(b"i IDLE\r\n"), b"+ idling\r\n")
        harness.deliver(U1, ONE)
        harness.clock.advance(5)
        self.assertEqual(client.take(), b"* 1 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(client.send(b"DONE\r\n"), b"i OK IDLE terminated\r\n")
        harness.deliver(U2, ONE)
        harness.clock.advance(60)
        self.assertEqual(client.take(), b"")  # no more polling after DONE

    def test_idle_timeout(self):
        """A session silent for idleTimeout is closed with BYE (the clock is the server's)."""
        harness = self.harness()
        client = harness.logged_in()
        harness.clock.advance(1799)
        self.assertFalse(client.closed)
        harness.clock.advance(2)
        self.assertEqual(client.take(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(client.closed)

    def test_pipelined_commands_answer_in_order(self):
        """Commands pipelined behind a SELECT run after its answer, against the selected state."""
        client = self.with_mail().logged_in()
        answer = client.send(b"a SELECT INBOX\r\nb FETCH 1 UID\r\nc NOOP\r\n")
        self.assertIn(b"a OK [READ-WRITE]", answer)
        self.assertTrue(answer.endswith(b"* 1 FETCH (UID 1)\r\nb OK FETCH completed\r\nc OK Completed\r\n"), answer)

    def test_line_too_long(self):
        """A command line over the limit ends the session with BYE."""
        client = self.harness().connect()
        answer = client.send(b"a " + b"x" * 20000 + b"\r\n")
        self.assertTrue(answer.startswith(b"* BYE Line too long"), answer)
        self.assertTrue(client.closed)

    def test_connections_per_ip(self):
        """Past maxConnectionsPerIP a connection gets BYE at once; another address still gets in."""
        harness = self.harness(maxConnectionsPerIP=1)
        harness.connect("192.0.2.1")
        refused = harness.connect("192.0.2.1", greet=False)
        self.assertTrue(refused.take().startswith(b"* BYE"))
        harness.connect("192.0.2.2")

    def test_bad_input(self):
        """Bad syntax is BAD, a bad message set is BAD, an unknown command is BAD; the session goes on."""
        client = self.selected(self.with_mail())
        self.assertTrue(client.send(b"a FETCH x FLAGS\r\n").startswith(b"a BAD"))
        self.assertEqual(client.send(b"b FROB\r\n"), b"b BAD Unsupported command\r\n")
        self.assertTrue(client.send(b'c LOGIN "unterminated\r\n').startswith(b"c BAD"))
        self.assertEqual(client.send(b"d NOOP\r\n"), b"d OK Completed\r\n")


class PluginTests(SynchronousTestCase):
    """The built-in plugin imap, switched by [imap] (gomail.configmailaccess)."""

    def load(self, text: str):
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w") as f:
            f.write(f'dataDir = "{os.path.dirname(path)}/data"\n' + text)
        return load_config(path, environ={})

    def test_enabled_by_default(self):
        """Without [imap] the plugin imap is on, on loopback port 1143, with RFC 3501's 30-minute timeout."""
        config = self.load("")
        self.assertIn(("imap", {}), config.plugins.enabled)
        self.assertEqual(config.imap.listen, ("tcp:1143:interface=127.0.0.1",))
        self.assertEqual((config.imap.idleTimeout, config.imap.quotaMB), (1800, 0))

    def test_disabled(self):
        """[imap] enabled = false, or [plugins.imap] enabled = false, leaves the plugin out."""
        for text in ("[imap]\nenabled = false\n", "[plugins.imap]\nenabled = false\n"):
            config = self.load(text)
            loaded = load_plugins(config.plugins, None, "mx.test", config.dataDir)
            self.assertEqual([p.name for p in loaded if p.name == "imap"], [], text)

    def test_idle_timeout_at_least_thirty_minutes(self):
        """imap.idleTimeout below RFC 3501's 30 minutes is a configuration error naming the key."""
        error = self.assertRaises(ConfigError, self.load, "[imap]\nidleTimeout = 60\n")
        self.assertIn("imap.idleTimeout: must be >= 1800", str(error))

    def test_services(self):
        """The plugin's service listens on [imap]'s endpoints (plain and implicit TLS) with SMTP's certificate."""
        config = self.load('[imap]\nlisten = ["tcp:1143:interface=127.0.0.1"]\n'
                           'implicitTlsListen = ["tcp:1993:interface=127.0.0.1"]\n')
        [loaded] = [p for p in load_plugins(config.plugins, None, "mx.test", config.dataDir) if p.name == "imap"]
        self.assertEqual(loaded.interfaces, (IServiceProvider,))
        reactor = MemoryReactorClock()
        spool = Spool(os.path.join(config.dataDir, "spool"), reactor, run)
        [service] = loaded.extension.services(ServiceContext(reactor, config, None, spool, None, None))
        self.successResultOf(service.startService())
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [1143, 1993])
        self.assertEqual(loaded.extension.counters()["open_sessions"], 0)
        self.successResultOf(service.stopService())


class CommandBoundTests(HarnessMixin, SynchronousTestCase):
    """Bounds on what one command may ask of the event loop."""

    def test_search_words_bounded(self):
        """A SEARCH of 250 BODY keys (seconds of matching on the reactor) is BAD; a short one is answered."""
        client = self.selected(self.harness())
        keys = b" ".join(b"OR BODY a%d" % n for n in range(250)) + b" ALL"
        self.assertTrue(client.send(b"s SEARCH " + keys + b"\r\n").startswith(b"s BAD "))
        self.assertTrue(client.send(b"u UID SEARCH " + keys + b"\r\n").startswith(b"u BAD "))
        self.assertIn(b"s2 OK", client.send(b"s2 SEARCH ALL\r\n"))


class MailboxNameTests(HarnessMixin, SynchronousTestCase):
    """Names that are no modified UTF-7."""

    def test_bad_encoding(self):
        """SELECT of a name that is no modified UTF-7 is a plain NO, without the client's bytes as a Python repr."""
        client = self.selected(self.harness())
        for name in (b'"&ZZZ"', b'"\xc3\xa9t\xc3\xa9"'):
            answer = client.send(b"s SELECT " + name + b"\r\n")
            self.assertTrue(answer.startswith(b"s NO "), answer)
            self.assertNotIn(b"b'", answer)
        self.flushLoggedErrors()
