"""
The POP3 server (L{gomail.mailaccess.pop3}) seen from the client's side:
bytes in, bytes out, over in-memory transports on a task.Clock, with
gomail's real login chain and real Maildirs on disk.
"""

from __future__ import annotations

import base64
import os

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.configload import ConfigError, load_config
from gomail.extension.loader import load_plugins
from gomail.interfaces import IServiceProvider
from gomail.mailaccess.pop3login import FAILED
from gomail.plugin import ServiceContext
from gomail.spool.store import Spool
from tests.authtesting import SyncVerifier
from tests.pop3testing import BOB, BOB_PASSWORD, CAROL, CAROL_PASSWORD, TLS_CONTEXT, POP3Harness
from tests.smtphelpers import run

ONE = b"Subject: one\r\n\r\nhello\r\n.leading dot\r\n"
TWO = b"Subject: two\r\nX-Long: yes\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
UNIQUE_ONE, UNIQUE_TWO = "1700000000.6176339d930005f4d569c_0.mx.test", "1700000100.6176339d930005f4d569d_0.mx.test"


class HeldVerifier(SyncVerifier):
    """bcrypt whose answers wait for L{release} (as if the CPU pool were busy)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Deferred, Deferred]] = []

    def verify(self, password: str, hashed_password: bytes) -> Deferred:
        held: Deferred = Deferred()
        self.pending.append((held, super().verify(password, hashed_password)))
        return held

    def release(self) -> None:
        while self.pending:
            held, result = self.pending.pop(0)
            result.chainDeferred(held)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


class HarnessMixin:
    def harness(self, **kwargs) -> POP3Harness:
        return POP3Harness(self.mktemp(), **kwargs)

    def with_mail(self, **kwargs) -> POP3Harness:
        """A harness whose Bob has two messages in new/ (the first older)."""
        harness = self.harness(**kwargs)
        harness.deliver(UNIQUE_ONE, ONE, mtime=1_700_000_000)
        harness.deliver(UNIQUE_TWO, TWO, mtime=1_700_000_100)
        return harness

    def logged_in(self, harness: POP3Harness, **kwargs):
        client = harness.connect(**kwargs)
        answer = client.login()
        self.assertTrue(answer.startswith(b"+OK Logged in"), answer)
        return client


class TLSTests(HarnessMixin, SynchronousTestCase):
    """STLS (RFC 2595) and what is offered before and after it."""

    def test_greeting_offers_no_apop(self):
        """The greeting carries no <timestamp>: APOP is not offered (RFC 1939 7), and APOP is refused."""
        client = self.harness().connect(greet=False)
        self.assertEqual(client.take(), b"+OK gomail POP3 server ready\r\n")
        self.assertEqual(client.send(b"APOP bob@example.com c4c9334bac560ecc979e58001b3e22fb\r\n"),
                         b"-ERR APOP is not available\r\n")

    def test_capa_before_tls(self):
        """Before STLS, CAPA lists STLS and the RFC 2449 capabilities, but neither USER nor SASL."""
        answer = self.harness().connect().send(b"CAPA\r\n")
        lines = answer.split(b"\r\n")
        self.assertEqual(lines[0], b"+OK Capability list follows")
        self.assertTrue(answer.endswith(b"\r\n.\r\n"))
        for capability in (b"STLS", b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"):
            self.assertIn(capability, lines)
        self.assertNotIn(b"USER", lines)
        self.assertFalse([line for line in lines if line.startswith(b"SASL")])

    def test_capa_after_tls(self):
        """After STLS, CAPA lists USER and SASL PLAIN, and no longer STLS; the server's context was used."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"STLS\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(client.transport.tls_started_with, [TLS_CONTEXT])
        lines = client.send(b"CAPA\r\n").split(b"\r\n")
        self.assertIn(b"USER", lines)
        self.assertIn(b"SASL PLAIN", lines)
        self.assertNotIn(b"STLS", lines)

    def test_login_refused_before_tls(self):
        """USER, PASS and AUTH before STLS are refused with -ERR, and nothing reaches the login chain."""
        client = self.harness().connect()
        refusal = b"-ERR Plaintext login is not allowed: issue STLS first\r\n"
        self.assertEqual(client.send(b"USER bob@example.com\r\n"), refusal)
        self.assertEqual(client.send(b"PASS " + BOB_PASSWORD.encode() + b"\r\n"), refusal)
        self.assertEqual(client.send(b"AUTH PLAIN " + plain(BOB, BOB_PASSWORD) + b"\r\n"), refusal)
        self.assertEqual(client.proto.server.audit.entries, [])

    def test_stls_discards_pipelined_plaintext(self):
        """Commands sent with STLS, before the handshake, are not read (RFC 2595 4, CVE-2011-0411)."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"STLS\r\nUSER bob@example.com\r\n"), b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(client.send(b"PASS x\r\n"), b"-ERR Send USER first\r\n")

    def test_stls_twice_and_after_implicit_tls(self):
        """STLS inside TLS is refused: after an earlier STLS and on an implicit-TLS listener."""
        harness = self.harness()
        client = harness.connect()
        client.send(b"STLS\r\n")
        self.assertEqual(client.send(b"STLS\r\n"), b"-ERR Command not permitted when TLS active\r\n")
        implicit = harness.connect(implicit_tls=True)
        self.assertNotIn(b"STLS", implicit.send(b"CAPA\r\n"))
        self.assertEqual(implicit.send(b"STLS\r\n"), b"-ERR Command not permitted when TLS active\r\n")
        self.assertTrue(implicit.send(b"USER bob@example.com\r\n").startswith(b"+OK"))

    def test_plaintext_loopback_when_configured(self):
        """With allowPlaintextLoopback a loopback client logs in without TLS; another address still may not."""
        harness = self.harness(allowPlaintextLoopback=True)
        local = harness.connect("127.0.0.1")
        self.assertIn(b"USER", local.send(b"CAPA\r\n"))
        self.assertTrue(local.login(stls=False).startswith(b"+OK Logged in"))
        self.assertFalse(local.proto.secure)
        remote = harness.connect("192.0.2.8")
        self.assertNotIn(b"USER", remote.send(b"CAPA\r\n"))
        self.assertTrue(remote.send(b"USER carol@example.com\r\n").startswith(b"-ERR"))

    def test_no_plaintext_loopback_by_default(self):
        """By default a loopback client must use STLS too."""
        client = self.harness().connect("127.0.0.1")
        self.assertTrue(client.send(b"USER bob@example.com\r\n").startswith(b"-ERR Plaintext login"))


class LoginTests(HarnessMixin, SynchronousTestCase):
    """USER/PASS and AUTH PLAIN through gomail's portal."""

    def test_user_pass(self):
        """The right password logs in (message count and size in the answer), audited as protocol pop3."""
        harness = self.with_mail()
        answer = harness.connect().login()
        self.assertEqual(answer, b"+OK Logged in, 2 messages (%d octets)\r\n" % (len(ONE) + len(TWO)))
        [entry] = harness.audit.entries
        self.assertEqual((entry.user, entry.protocol, entry.client_ip, entry.result, entry.reason),
                         (BOB, "pop3", "192.0.2.7", "success", "password"))

    def test_failures_are_uniform(self):
        """Wrong password, unknown user and bad AUTH credentials get one text; each is audited as a failure."""
        harness = self.harness()
        client = harness.connect()
        self.assertEqual(client.login(BOB, "wrong"), b"-ERR " + FAILED.encode() + b"\r\n")
        self.assertEqual(client.login("nobody@example.com", BOB_PASSWORD), b"-ERR " + FAILED.encode() + b"\r\n")
        other = harness.connect()
        other.send(b"STLS\r\n")
        self.assertEqual(other.send(b"AUTH PLAIN " + plain(BOB, "wrong") + b"\r\n"),
                         b"-ERR " + FAILED.encode() + b"\r\n")
        self.assertEqual([(e.result, e.protocol) for e in harness.audit.entries], [("failure", "pop3")] * 3)

    def test_failures_per_session_close_it(self):
        """After auth.maxFailuresPerSession (3) refused logins the session is closed."""
        client = self.harness().connect()
        for _ in range(2):
            client.login(BOB, "wrong")
            self.assertFalse(client.closed)
        self.assertEqual(client.login(BOB, "wrong"), b"-ERR " + FAILED.encode() + b"\r\n")
        self.assertTrue(client.closed)

    def test_lockout_answers_like_a_wrong_password(self):
        """Once the user is locked out on this IP, even the right password gets the same uniform refusal."""
        harness = self.harness()
        for _ in range(3):  # auth.maxFailAttempts is 5: two sessions of failures
            harness.connect().login(BOB, "wrong")
            harness.connect().login(BOB, "wrong-again")
        client = harness.connect()
        self.assertEqual(client.login(), b"-ERR " + FAILED.encode() + b"\r\n")
        self.assertEqual(harness.audit.entries[-1].reason, "locked")

    def test_auth_plain(self):
        """AUTH PLAIN with an initial response, and as a challenge and response, log in."""
        harness = self.harness()
        client = harness.connect()
        client.send(b"STLS\r\n")
        self.assertEqual(client.send(b"AUTH\r\n"), b"+OK Mechanisms follow\r\nPLAIN\r\n.\r\n")
        self.assertTrue(client.send(b"AUTH PLAIN " + plain(BOB, BOB_PASSWORD) + b"\r\n").startswith(b"+OK Logged in"))
        other = harness.connect()
        other.send(b"STLS\r\n")
        self.assertEqual(other.send(b"AUTH PLAIN\r\n"), b"+ \r\n")
        self.assertTrue(other.send(plain(CAROL, CAROL_PASSWORD) + b"\r\n").startswith(b"+OK Logged in"))

    def test_auth_plain_cancel_and_garbage(self):
        """AUTH PLAIN: * cancels, undecodable answers and unknown mechanisms get -ERR, acting for another user fails."""
        client = self.harness().connect()
        client.send(b"STLS\r\n")
        client.send(b"AUTH PLAIN\r\n")
        self.assertEqual(client.send(b"*\r\n"), b"-ERR Authentication cancelled\r\n")
        self.assertEqual(client.send(b"AUTH PLAIN !!!\r\n"), b"-ERR Cannot decode AUTH PLAIN response\r\n")
        self.assertEqual(client.send(b"AUTH CRAM-MD5\r\n"), b"-ERR Unsupported authentication mechanism\r\n")
        self.assertEqual(client.send(b"AUTH PLAIN " + plain(BOB, BOB_PASSWORD, authzid=CAROL) + b"\r\n"),
                         b"-ERR " + FAILED.encode() + b"\r\n")

    def test_temporary_failure(self):
        """A user store that cannot answer gives a temporary -ERR [SYS/TEMP], audited as tempfail."""
        harness = self.harness()
        harness.users.broken = True
        self.assertEqual(harness.connect().login(),
                         b"-ERR [SYS/TEMP] Temporary authentication failure, try again later\r\n")
        self.assertEqual(harness.audit.entries[-1].result, "tempfail")

    def test_unaudited_login_is_refused(self):
        """A success the audit log cannot record is not let in (as SMTP AUTH), and the mailbox stays free."""
        harness = self.harness()
        harness.audit.broken = True
        self.assertTrue(harness.connect().login().startswith(b"-ERR [SYS/TEMP]"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        harness.audit.broken = False
        self.assertTrue(harness.connect().login().startswith(b"+OK Logged in"))

    def test_pipelined_commands_wait_for_the_login(self):
        """Commands pipelined behind PASS wait until the login is answered, then run in order."""
        verifier = HeldVerifier()
        client = self.with_mail(verifier=verifier).connect()
        client.send(b"STLS\r\n")
        self.assertEqual(client.send(b"USER bob@example.com\r\nPASS " + BOB_PASSWORD.encode() + b"\r\nSTAT\r\n"),
                         b"+OK Send PASS\r\n")
        verifier.release()
        self.assertEqual(client.take(), b"+OK Logged in, 2 messages (%d octets)\r\n+OK 2 %d\r\n"
                         % ((len(ONE) + len(TWO),) * 2))

    def test_client_gone_during_login(self):
        """A client that leaves while its login is checked is neither answered nor audited, and locks nothing."""
        verifier = HeldVerifier()
        harness = self.with_mail(verifier=verifier)
        client = harness.connect()
        client.send(b"STLS\r\n")
        client.send(b"USER bob@example.com\r\nPASS " + BOB_PASSWORD.encode() + b"\r\n")
        self.assertEqual(len(verifier.pending), 1)
        client.lose()
        verifier.release()
        self.assertEqual((client.take(), harness.audit.entries), (b"", []))
        self.assertNotIn(harness.maildir(), harness.locks)

    def test_in_use(self):
        """A second session on a mailbox gets -ERR [IN-USE]; once the first has gone the mailbox is free again."""
        harness = self.with_mail()
        first = self.logged_in(harness)
        second = harness.connect()
        self.assertEqual(second.login(), b"-ERR [IN-USE] Mailbox in use by another session\r\n")
        self.assertEqual(harness.audit.entries[-1].reason, "in-use")
        self.assertTrue(harness.connect().login(CAROL, CAROL_PASSWORD).startswith(b"+OK"))  # another mailbox
        first.lose()
        self.assertTrue(second.login().startswith(b"+OK Logged in"))


class TransactionTests(HarnessMixin, SynchronousTestCase):
    """STAT, LIST, UIDL, RETR, TOP, DELE, RSET and QUIT on a real Maildir."""

    def test_stat_list_uidl(self):
        """STAT, LIST and UIDL, whole and per message; UIDLs are the Maildir unique names."""
        client = self.logged_in(self.with_mail())
        self.assertEqual(client.send(b"STAT\r\n"), b"+OK 2 %d\r\n" % (len(ONE) + len(TWO)))
        self.assertEqual(client.send(b"LIST\r\n"), b"+OK 2 messages (%d octets)\r\n1 %d\r\n2 %d\r\n.\r\n"
                         % (len(ONE) + len(TWO), len(ONE), len(TWO)))
        self.assertEqual(client.send(b"LIST 2\r\n"), b"+OK 2 %d\r\n" % len(TWO))
        self.assertEqual(client.send(b"UIDL\r\n"), b"+OK Unique-id listing follows\r\n1 %s\r\n2 %s\r\n.\r\n"
                         % (UNIQUE_ONE.encode(), UNIQUE_TWO.encode()))
        self.assertEqual(client.send(b"UIDL 1\r\n"), b"+OK 1 %s\r\n" % UNIQUE_ONE.encode())

    def test_uidl_stable_across_sessions_and_restarts(self):
        """Login moves new/ to cur/ (info :2,); the UIDLs stay the same in the next session and on a new server."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        before = client.send(b"UIDL\r\n")
        client.send(b"QUIT\r\n")
        client.lose()
        self.assertEqual(harness.files("new"), [])
        self.assertEqual(harness.files("cur"), [UNIQUE_ONE + ":2,", UNIQUE_TWO + ":2,"])
        os.rename(os.path.join(harness.maildir(), "cur", UNIQUE_ONE + ":2,"),
                  os.path.join(harness.maildir(), "cur", UNIQUE_ONE + ":2,S"))  # a flag set by another reader
        harness.server = harness.build_server()  # as after a restart
        self.assertEqual(self.logged_in(harness).send(b"UIDL\r\n"), before)

    def test_retr(self):
        """RETR sends the size, the message with its leading dot doubled, and the terminating dot."""
        client = self.logged_in(self.with_mail())
        self.assertEqual(client.send(b"RETR 1\r\n"),
                         b"+OK %d octets\r\nSubject: one\r\n\r\nhello\r\n..leading dot\r\n.\r\n" % len(ONE))

    def test_retr_large_message_in_blocks(self):
        """A message of several read blocks arrives whole and exact, with a dot line across a block boundary."""
        harness = self.harness()
        body = (b"x" * 99 + b"\r\n") * 1400  # 142800 octets: three blocks of 64 KiB
        cut = 64 * 1024 - len(b"Subject: big\r\n\r\n")
        content = b"Subject: big\r\n\r\n" + body[:cut - 2] + b"\r\n.\r\n" + body[cut + 3:]
        harness.deliver(UNIQUE_ONE, content)
        client = self.logged_in(harness)
        answer = client.send(b"RETR 1\r\n")
        expected = content.replace(b"\r\n.", b"\r\n..")
        self.assertEqual(answer, b"+OK %d octets\r\n" % len(content) + expected + b".\r\n")

    def test_top(self):
        """TOP n sends the header, the empty line and n body lines; 0 the header only; more than there are, all."""
        client = self.logged_in(self.with_mail())
        self.assertEqual(client.send(b"TOP 2 1\r\n"),
                         b"+OK Top of message follows\r\nSubject: two\r\nX-Long: yes\r\n\r\nline 1\r\n.\r\n")
        self.assertEqual(client.send(b"TOP 2 0\r\n"),
                         b"+OK Top of message follows\r\nSubject: two\r\nX-Long: yes\r\n\r\n.\r\n")
        self.assertEqual(client.send(b"TOP 2 99\r\n"), b"+OK Top of message follows\r\n" + TWO + b".\r\n")
        self.assertEqual(client.send(b"TOP 2\r\n"), b"-ERR Syntax: TOP msg n\r\n")

    def test_dele_then_quit_removes(self):
        """DELE marks (hidden from STAT and LIST, refused by RETR); QUIT removes the file from disk."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        self.assertEqual(client.send(b"DELE 1\r\n"), b"+OK Message 1 deleted\r\n")
        self.assertEqual(client.send(b"STAT\r\n"), b"+OK 1 %d\r\n" % len(TWO))
        self.assertEqual(client.send(b"LIST\r\n"), b"+OK 1 messages (%d octets)\r\n2 %d\r\n.\r\n" % (len(TWO), len(TWO)))
        self.assertEqual(client.send(b"RETR 1\r\n"), b"-ERR Message 1 already deleted\r\n")
        self.assertEqual(len(harness.files("cur")), 2)  # nothing removed before QUIT
        self.assertEqual(client.send(b"QUIT\r\n"), b"+OK gomail POP3 server signing off (1 deleted)\r\n")
        self.assertTrue(client.closed)
        self.assertEqual(harness.files("cur"), [UNIQUE_TWO + ":2,"])

    def test_dele_then_disconnect_keeps(self):
        """A connection lost after DELE, without QUIT, removes nothing, and frees the mailbox."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        client.send(b"DELE 1\r\nDELE 2\r\n")
        client.lose()
        self.assertEqual(len(harness.files("cur")), 2)
        self.assertTrue(harness.connect().login().startswith(b"+OK Logged in, 2 messages"))

    def test_rset_unmarks(self):
        """RSET unmarks every deleted message: QUIT then removes nothing."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        client.send(b"DELE 1\r\n")
        self.assertEqual(client.send(b"RSET\r\n"), b"+OK 2 messages (%d octets)\r\n" % (len(ONE) + len(TWO)))
        self.assertEqual(client.send(b"QUIT\r\n"), b"+OK gomail POP3 server signing off (0 deleted)\r\n")
        self.assertEqual(len(harness.files("cur")), 2)

    def test_idle_timeout_removes_nothing(self):
        """After pop3.idleTimeout (10 minutes) without a command the session ends; DELE marks are dropped."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        client.send(b"DELE 1\r\n")
        harness.clock.advance(599)
        self.assertFalse(client.closed)
        harness.clock.advance(1)
        self.assertEqual(client.take(), b"-ERR Autologout: idle for too long\r\n")
        self.assertTrue(client.closed)
        client.lose()
        self.assertEqual(len(harness.files("cur")), 2)

    def test_empty_mailbox(self):
        """A user who never got mail logs in to an empty mailbox; nothing is created on disk."""
        harness = self.harness()
        client = self.logged_in(harness)
        self.assertEqual(client.send(b"STAT\r\nLIST\r\n"), b"+OK 0 0\r\n+OK 0 messages (0 octets)\r\n.\r\n")
        self.assertFalse(os.path.exists(harness.maildir()))


class SequenceTests(HarnessMixin, SynchronousTestCase):
    """Commands out of order, unknown or malformed, and over-long lines."""

    def test_bad_sequences(self):
        """PASS without USER, transaction commands before login, login commands after it: each -ERR."""
        harness = self.with_mail()
        client = harness.connect()
        client.send(b"STLS\r\n")
        self.assertEqual(client.send(b"PASS x\r\n"), b"-ERR Send USER first\r\n")
        self.assertEqual(client.send(b"STAT\r\n"), b"-ERR Log in first\r\n")
        self.assertEqual(client.send(b"RETR 1\r\n"), b"-ERR Log in first\r\n")
        client.login()
        self.assertEqual(client.send(b"USER bob@example.com\r\n"), b"-ERR Not allowed after login\r\n")
        self.assertEqual(client.send(b"STLS\r\n"), b"-ERR Not allowed after login\r\n")

    def test_bad_message_numbers(self):
        """Message numbers must be 1..N in digits; anything else is -ERR."""
        client = self.logged_in(self.with_mail())
        for argument, answer in ((b"0", b"Syntax: a message number"), (b"-1", b"Syntax: a message number"),
                                 (b"abc", b"Syntax: a message number"), (b"", b"Syntax: a message number"),
                                 (b"3", b"No such message"), (b"99999999999", b"Syntax: a message number")):
            self.assertEqual(client.send(b"RETR " + argument + b"\r\n"), b"-ERR " + answer + b"\r\n", argument)

    def test_unknown_command(self):
        """An unknown command is -ERR Unknown command; the session goes on."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"XYZZY\r\n"), b"-ERR Unknown command\r\n")
        self.assertEqual(client.send(b"LAST\r\n"), b"-ERR Unknown command\r\n")  # RFC 1725's, gone from 1939
        self.assertTrue(client.send(b"CAPA\r\n").startswith(b"+OK"))

    def test_too_many_errors(self):
        """Past pop3.maxErrors -ERR answers the session is closed."""
        client = self.harness(maxErrors=3).connect()
        client.send(b"XYZZY\r\nXYZZY\r\n")
        self.assertEqual(client.send(b"XYZZY\r\n"),
                         b"-ERR Unknown command\r\n-ERR Too many errors, closing connection\r\n")
        self.assertTrue(client.closed)

    def test_over_long_line(self):
        """A command line over 255 octets gets one clear -ERR, is skipped, and the session goes on."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"NOOP " + b"x" * 250 + b"\r\n"),
                         b"-ERR Command line too long (at most 255 octets)\r\n")
        self.assertEqual(client.send(b"CAPA " + b"x" * 300), b"-ERR Command line too long (at most 255 octets)\r\n")
        self.assertEqual(client.send(b"y" * 300 + b"\r\nCAPA\r\n")[:4], b"+OK ")
        self.assertTrue(client.send(b"CAPA\r\n").startswith(b"+OK Capability"))
        self.assertEqual(len(b"CAPA " + b"x" * 248 + b"\r\n"), 255)
        self.assertTrue(client.send(b"CAPA " + b"x" * 248 + b"\r\n").startswith(b"-ERR Syntax"))  # 255: not too long

    def test_endless_line_closes(self):
        """A line still going past 64 KiB ends the session."""
        client = self.harness().connect()
        client.send(b"x" * 1000)
        for _ in range(70):
            client.send(b"x" * 1024)
        self.assertTrue(client.closed)

    def test_control_characters(self):
        """A command line with a control character (NUL) is refused."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"CAPA\x00\r\n"), b"-ERR Invalid character in command line\r\n")

    def test_pipelined_commands_answer_in_order(self):
        """Commands pipelined in one packet are answered in order, RETR's content before the next answer."""
        client = self.logged_in(self.with_mail())
        answer = client.send(b"RETR 1\r\nNOOP\r\nUIDL 2\r\n")
        self.assertTrue(answer.endswith(b"..leading dot\r\n.\r\n+OK\r\n+OK 2 %s\r\n" % UNIQUE_TWO.encode()), answer)


class BoundsTests(HarnessMixin, SynchronousTestCase):
    """Connection caps and output the client does not read."""

    def test_connections_per_ip(self):
        """Past pop3.maxConnectionsPerIP a new connection from that address is refused; others are not."""
        harness = self.harness(maxConnectionsPerIP=1)
        first = harness.connect()
        refused = harness.connect(greet=False)
        self.assertEqual(refused.take(), b"-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n")
        self.assertTrue(refused.closed)
        harness.connect("192.0.2.99")
        first.lose()
        harness.connect()

    def test_output_not_read_holds_the_message(self):
        """While the client's output is over its bound, RETR waits between blocks and later commands wait too."""
        harness = self.harness()
        content = b"Subject: big\r\n\r\n" + (b"y" * 1000 + b"\r\n") * 200
        harness.deliver(UNIQUE_ONE, content)
        client = self.logged_in(harness)
        write = client.transport.write

        def write_and_fill(data: bytes) -> None:
            write(data)
            if len(client.transport.value()) > 70_000 and not client.proto.flow.paused:
                client.proto.flow.pauseProducing()  # as a TCP transport does once its buffer is over 64 KiB

        client.transport.write = write_and_fill
        held = client.send(b"RETR 1\r\nNOOP\r\n")
        self.assertTrue(held.startswith(b"+OK %d octets\r\n" % len(content)))
        self.assertLess(len(held), 140_000)  # two blocks at most: the rest waits
        self.assertEqual(client.send(b"NOOP\r\n"), b"")  # not even read while the output is over the bound
        client.proto.flow.resumeProducing()
        self.assertEqual(held + client.take(),
                         b"+OK %d octets\r\n" % len(content) + content + b".\r\n+OK\r\n+OK\r\n")

    def test_held_input_pauses_reading(self):
        """Input piling up behind a pending answer (past 64 KiB) stops the client being read until it is answered."""
        verifier = HeldVerifier()
        client = self.harness(verifier=verifier).connect()
        client.send(b"STLS\r\n")
        client.send(b"USER bob@example.com\r\nPASS " + BOB_PASSWORD.encode() + b"\r\n")
        for _ in range(14):
            client.send(b"NOOP\r\n" * 1000)
        self.assertEqual(client.transport.producerState, "paused")
        verifier.release()
        self.assertEqual(client.transport.producerState, "producing")
        self.assertEqual(client.take().count(b"+OK\r\n"), 14000)

    def test_server_stop(self):
        """Stopping the server ends idle sessions with -ERR [SYS/TEMP] (nothing deleted) and refuses new ones."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        client.send(b"DELE 1\r\n")
        harness.server.stop()
        self.assertEqual(client.take(), b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n")
        self.assertTrue(client.closed)
        client.lose()
        self.assertEqual(len(harness.files("cur")), 2)
        late = harness.connect(greet=False)
        self.assertEqual(late.take(), b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n")

    def test_output_stuck_aborts(self):
        """A client that stays over the output bound for the idle timeout is cut off; its DELE marks are dropped."""
        harness = self.with_mail()
        client = self.logged_in(harness)
        client.send(b"DELE 2\r\n")
        client.proto.flow.pauseProducing()
        client.send(b"RETR 1\r\n")
        harness.clock.advance(600)
        self.assertTrue(client.transport.disconnecting)
        client.lose()
        self.assertEqual(len(harness.files("cur")), 2)


class PluginTests(SynchronousTestCase):
    """POP3 as the built-in plugin pop3: on by default, off with [pop3] enabled = false, built from a ServiceContext."""

    def load(self, text: str):
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w") as f:
            f.write(f'dataDir = "{os.path.dirname(path)}/data"\n' + text)
        return load_config(path, environ={})

    def test_enabled_by_default(self):
        """A configuration without [pop3] enables the plugin pop3 (as an empty [plugins.pop3] would)."""
        config = self.load("")
        self.assertIn(("pop3", {}), config.plugins.enabled)
        self.assertEqual(config.pop3.listen, ("tcp:1110:interface=127.0.0.1",))
        self.assertEqual(config.pop3.idleTimeout, 600)

    def test_disabled(self):
        """[pop3] enabled = false, or [plugins.pop3] enabled = false, leaves the plugin out."""
        for text in ("[pop3]\nenabled = false\n", "[plugins.pop3]\nenabled = false\n",
                     "[pop3]\nenabled = false\n[plugins.pop3]\n"):
            config = self.load(text)
            loaded = load_plugins(config.plugins, None, "mx.test", config.dataDir)
            self.assertEqual([p.name for p in loaded if p.name == "pop3"], [], text)

    def test_idle_timeout_at_least_ten_minutes(self):
        """pop3.idleTimeout below RFC 1939's 10 minutes is a configuration error naming the key."""
        error = self.assertRaises(ConfigError, self.load, "[pop3]\nidleTimeout = 60\n")
        self.assertIn("pop3.idleTimeout: must be >= 600", str(error))

    def test_services(self):
        """The plugin's services listen on [pop3]'s endpoints (plain and implicit TLS) with SMTP's certificate."""
        config = self.load('[pop3]\nlisten = ["tcp:1110:interface=127.0.0.1"]\n'
                           'implicitTlsListen = ["tcp:1995:interface=127.0.0.1"]\n')
        [loaded] = [p for p in load_plugins(config.plugins, None, "mx.test", config.dataDir) if p.name == "pop3"]
        self.assertEqual((loaded.name, loaded.interfaces), ("pop3", (IServiceProvider,)))
        reactor = MemoryReactorClock()
        spool = Spool(os.path.join(config.dataDir, "spool"), reactor, run)
        [service] = loaded.extension.services(ServiceContext(reactor, config, None, spool, None, None))
        self.successResultOf(service.startService())
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [1110, 1995])
        self.assertTrue(os.path.exists(os.path.join(config.dataDir, "tls", "selfsigned-cert.pem")))
        self.assertEqual(loaded.extension.counters()["open_sessions"], 0)
        self.successResultOf(service.stopService())
