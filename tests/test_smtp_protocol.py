"""
gomail's SMTP server over the wire: bytes in, replies and spool files out.

Each test drives a real L{GomailESMTP} session of a real L{SMTPServer} whose
spool is a temporary directory, through a StringTransport, on a task.Clock.
"""

from __future__ import annotations

import errno

from twisted.trial.unittest import SynchronousTestCase

from tests.smtphelpers import (
    FailingFsync,
    HarnessMixin,
    ManualRun,
    queued_id,
    replies,
)

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
SMUGGLED = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n"
#: Line endings that an SMTP server somewhere might take for the end of data.
FAKE_ENDINGS = [
    b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
]


class GreetingTests(HarnessMixin, SynchronousTestCase):
    """The banner, EHLO/HELO and the commands outside a transaction."""

    def test_banner(self):
        """A new connection is greeted with 220 and the configured host name."""
        client = self.harness().connect(greet=False)
        self.assertEqual(client.take(), b"220 mx.test ESMTP gomail\r\n")
        self.assertFalse(client.closed)

    def test_ehlo_lists_extensions(self):
        """EHLO answers a multi-line 250 with SIZE (the configured limit), 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES."""
        client = self.harness(maxMessageSize=123456).connect()
        self.assertEqual(client.send(b"EHLO client.test\r\n"), (
            b"250-mx.test Hello client.test [127.0.0.1]\r\n"
            b"250-SIZE 123456\r\n"
            b"250-8BITMIME\r\n"
            b"250-PIPELINING\r\n"
            b"250 ENHANCEDSTATUSCODES\r\n"))

    def test_ehlo_does_not_offer_auth(self):
        """AUTH is not advertised, and the AUTH command is refused with 502 5.5.1."""
        client = self.harness().connect()
        self.assertNotIn(b"AUTH", client.send(b"EHLO client.test\r\n"))
        self.assertTrue(client.send(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").startswith(b"502 5.5.1 "))

    def test_helo(self):
        """HELO answers a single 250 line without extensions."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"HELO client.test\r\n"), b"250 mx.test Hello client.test [127.0.0.1]\r\n")

    def test_helo_without_name(self):
        """HELO and EHLO without a name are a syntax error (501 5.5.4)."""
        client = self.harness().connect()
        self.assertTrue(client.send(b"EHLO\r\n").startswith(b"501 5.5.4 "))
        self.assertTrue(client.send(b"HELO \r\n").startswith(b"501 5.5.4 "))

    def test_simple_commands(self):
        """NOOP, RSET, VRFY and HELP get their replies, each with an enhanced status code."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertEqual(client.send(b"RSET\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertTrue(client.send(b"VRFY bob\r\n").startswith(b"252 2.5.2 "))
        self.assertTrue(client.send(b"EXPN staff\r\n").startswith(b"502 5.5.1 "))
        self.assertTrue(client.send(b"HELP\r\n").startswith(b"214 2.0.0 "))

    def test_commands_are_case_insensitive(self):
        """Verbs are recognised in any case."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"noop\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertTrue(client.send(b"ehlo client.test\r\n").startswith(b"250-mx.test Hello client.test"))

    def test_quit(self):
        """QUIT answers 221 2.0.0 and closes the connection; pipelined commands after it are ignored."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"QUIT\r\nNOOP\r\n"), b"221 2.0.0 Bye\r\n")
        self.assertTrue(client.closed)

    def test_unknown_command(self):
        """An unknown verb answers 500 5.5.2 and the session goes on."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"FROB x\r\n"), b"500 5.5.2 Error: command not recognized\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_unknown_command_named_like_twisted_fallback(self):
        """
        The verb UNKNOWN gets our 500 5.5.2, not the reply of twisted's
        C{do_UNKNOWN} fallback (which has no enhanced status code).
        """
        client = self.harness().connect()
        self.assertEqual(client.send(b"UNKNOWN\r\n"), b"500 5.5.2 Error: command not recognized\r\n")

    def test_non_ascii_verb(self):
        """A verb with non-ASCII bytes answers 500 5.5.2 instead of breaking the session."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"\xc3\xa9HLO x\r\n"), b"500 5.5.2 Error: command not recognized\r\n")
        self.assertFalse(client.closed)
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_empty_line(self):
        """An empty command line is a syntax error (500 5.5.2)."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"\r\n"), b"500 5.5.2 Error: bad syntax\r\n")

    def test_control_characters_in_command(self):
        """A command line holding a control character (NUL, bare CR, bare LF, DEL) answers 501 5.5.2."""
        client = self.harness().connect()
        for line in (b"NOOP \x00\r\n", b"NOOP a\rb\r\n", b"NOOP a\nb\r\n", b"NOOP \x7f\r\n"):
            self.assertEqual(client.send(line), b"501 5.5.2 Invalid character in command line\r\n", line)


class CommandLineLengthTests(HarnessMixin, SynchronousTestCase):
    """Command lines are bounded at 2048 octets."""

    def test_too_long_in_one_read(self):
        """A command line over 2048 octets answers 500 5.5.2; the next command works."""
        client = self.harness().connect()
        reply = client.send(b"NOOP " + b"x" * 2044 + b"\r\nNOOP\r\n")
        self.assertEqual(reply, b"500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n")

    def test_longest_allowed(self):
        """A command line of exactly 2048 octets is not too long."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"NOOP " + b"x" * 2043 + b"\r\n"), b"250 2.0.0 Ok\r\n")

    def test_too_long_over_several_reads(self):
        """
        A long line arriving in pieces gets one 500 5.5.2 (as soon as it is too
        long) and its rest is dropped up to its CRLF, never run as a command.
        """
        client = self.harness().connect()
        first = client.send(b"NOOP " + b"x" * 3000)
        self.assertEqual(first, b"500 5.5.2 Line too long\r\n")
        self.assertEqual(client.send(b"y" * 3000 + b" QUIT"), b"")
        self.assertEqual(client.send(b"\r\nNOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertFalse(client.closed)

    def test_too_long_with_split_crlf(self):
        """
        When a long line's CR and LF arrive in different reads, the command
        after it is still executed (it is not taken for the rest of the long line).
        """
        client = self.harness().connect()
        self.assertEqual(client.send(b"NOOP " + b"x" * 3000 + b"\r"), b"500 5.5.2 Line too long\r\n")
        self.assertEqual(client.send(b"\nNOOP\r\n"), b"250 2.0.0 Ok\r\n")


class HeloInjectionTests(HarnessMixin, SynchronousTestCase):
    """What a client says in HELO/EHLO can never reach our Received: header unchecked."""

    def test_bad_helo_names_refused(self):
        """CR, LF, NUL, TAB, a space or a non-ASCII byte in the HELO/EHLO name answer 501."""
        client = self.harness(maxErrors=100).connect()
        for name in (b"evil\rX-Injected: 1", b"evil\nX-Injected: 1", b"evil\x00", b"evil\tname",
                     b"two words", b"caf\xc3\xa9.test", b"evil\x1b"):
            for verb in (b"HELO ", b"EHLO "):
                reply = client.send(verb + name + b"\r\n")
                self.assertTrue(reply.startswith(b"501 5.5."), (verb, name, reply))
                self.assertEqual(len(replies(reply)), 1)
        self.assertFalse(client.closed)

    def test_refused_helo_does_not_count_as_greeting(self):
        """After a refused EHLO, MAIL still needs a greeting (503 5.5.1)."""
        client = self.harness().connect()
        client.send(b"EHLO evil\rX-Injected: 1\r\n")
        self.assertTrue(client.send(b"MAIL FROM:<a@example.org>\r\n").startswith(b"503 5.5.1 "))

    def test_refused_name_not_in_received_header(self):
        """
        A refused EHLO name does not replace the accepted one: the Received
        header holds only the good name, and the smuggled header never appears.
        """
        harness = self.harness()
        client = harness.connect()
        client.send(b"EHLO good.client.test\r\n")
        client.send(b"EHLO evil\rX-Injected: 1\r\n")
        client.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        content = harness.content(queue_id)
        self.assertNotIn(b"X-Injected", content)
        self.assertNotIn(b"evil", content)
        self.assertTrue(content.startswith(b"Received: from good.client.test ([127.0.0.1])\r\n"))


class TransactionOrderTests(HarnessMixin, SynchronousTestCase):
    """MAIL, RCPT and DATA only in their proper order."""

    def test_mail_before_helo(self):
        """MAIL before HELO/EHLO answers 503 5.5.1."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"),
                         b"503 5.5.1 Error: send HELO/EHLO first\r\n")

    def test_rcpt_before_mail(self):
        """RCPT before MAIL answers 503 5.5.1."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"), b"503 5.5.1 Error: need MAIL command\r\n")

    def test_data_before_mail(self):
        """DATA before MAIL answers 503 5.5.1."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"DATA\r\n"), b"503 5.5.1 Error: need MAIL command\r\n")

    def test_data_without_recipients(self):
        """DATA after MAIL but without an accepted RCPT answers 554 5.5.1 and stays in command mode."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"DATA\r\n"), b"554 5.5.1 Error: no valid recipients\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_data_with_argument(self):
        """DATA with an argument answers 501 5.5.4."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        self.assertEqual(client.send(b"DATA now\r\n"), b"501 5.5.4 Syntax: DATA\r\n")

    def test_nested_mail(self):
        """A second MAIL inside a transaction answers 503 5.5.1."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<b@example.org>\r\n"), b"503 5.5.1 Error: nested MAIL command\r\n")

    def test_rset_clears_transaction(self):
        """RSET forgets sender and recipients: RCPT then needs a new MAIL, and MAIL is accepted again."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        self.assertEqual(client.send(b"RSET\r\n"), b"250 2.0.0 Ok\r\n")
        self.assertTrue(client.send(b"RCPT TO:<bob@example.com>\r\n").startswith(b"503 5.5.1 "))
        self.assertTrue(client.send(b"DATA\r\n").startswith(b"503 5.5.1 "))
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_ehlo_clears_transaction(self):
        """A new EHLO in a transaction resets it, as RSET does."""
        client = self.harness().connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")


class AddressTests(HarnessMixin, SynchronousTestCase):
    """MAIL FROM and RCPT TO arguments, as answered over the wire."""

    def setUp(self):
        self.client = self.harness().connect()
        self.client.send(b"EHLO client.test\r\n")

    def test_null_sender(self):
        """The null reverse-path <> is accepted (bounces)."""
        self.assertEqual(self.client.send(b"MAIL FROM:<>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_null_recipient(self):
        """RCPT TO:<> answers 501 5.1.3."""
        self.client.send(b"MAIL FROM:<>\r\n")
        self.assertTrue(self.client.send(b"RCPT TO:<>\r\n").startswith(b"501 5.1.3 "))

    def test_non_ascii_sender(self):
        """A non-ASCII sender address answers 553 5.6.7 (no SMTPUTF8)."""
        reply = self.client.send("MAIL FROM:<jürgen@example.org>\r\n".encode())
        self.assertTrue(reply.startswith(b"553 5.6.7 "), reply)

    def test_non_ascii_recipient(self):
        """A non-ASCII recipient address answers 553 5.6.7."""
        self.client.send(b"MAIL FROM:<a@example.org>\r\n")
        reply = self.client.send("RCPT TO:<jürgen@example.com>\r\n".encode())
        self.assertTrue(reply.startswith(b"553 5.6.7 "), reply)

    def test_bad_sender_syntax(self):
        """A malformed sender address answers 501 5.1.7."""
        for address in (b"no-at-sign", b"a@", b"@example.org", b"a b@example.org", b"a..b@example.org",
                        b"a@-bad-.example"):
            reply = self.client.send(b"MAIL FROM:<" + address + b">\r\n")
            self.assertTrue(reply.startswith(b"501 5.1.7 "), (address, reply))

    def test_bad_recipient_syntax(self):
        """A malformed recipient address answers 501 5.1.3, and the transaction goes on."""
        self.client.send(b"MAIL FROM:<a@example.org>\r\n")
        for address in (b"no-at-sign", b"a@", b"@example.com", b"a b@example.com"):
            reply = self.client.send(b"RCPT TO:<" + address + b">\r\n")
            self.assertTrue(reply.startswith(b"501 5.1.3 "), (address, reply))
        self.assertEqual(self.client.send(b"RCPT TO:<bob@example.com>\r\n"), b"250 2.1.5 Recipient ok\r\n")

    def test_missing_angle_brackets(self):
        """An address without <> or a missing FROM: keyword answers 501 5.5.4."""
        for line in (b"MAIL FROM:a@example.org\r\n", b"MAIL a@example.org\r\n", b"MAIL TO:<a@example.org>\r\n",
                     b"MAIL FROM:<a@example.org\r\n"):
            reply = self.client.send(line)
            self.assertTrue(reply.startswith(b"501 5.5.4 "), (line, reply))

    def test_control_character_in_address(self):
        """A control character in MAIL never reaches the address parser: 501 5.5.2."""
        reply = self.client.send(b"MAIL FROM:<a\x01b@example.org>\r\n")
        self.assertEqual(reply, b"501 5.5.2 Invalid character in command line\r\n")

    def test_space_after_colon(self):
        """MAIL FROM: <a@b> with a space after the colon is tolerated."""
        self.assertEqual(self.client.send(b"MAIL FROM: <a@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")


class MailParameterTests(HarnessMixin, SynchronousTestCase):
    """ESMTP parameters of MAIL and RCPT (RFC 1870 SIZE, RFC 6152 BODY)."""

    def setUp(self):
        self.h = self.harness(maxMessageSize=10000)
        self.client = self.h.connect()
        self.client.send(b"EHLO client.test\r\n")

    def test_declared_size_over_limit(self):
        """MAIL FROM with SIZE= over the limit answers 552 5.3.4 and opens no transaction."""
        reply = self.client.send(b"MAIL FROM:<a@example.org> SIZE=10001\r\n")
        self.assertEqual(reply, b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        self.assertTrue(self.client.send(b"RCPT TO:<bob@example.com>\r\n").startswith(b"503 5.5.1 "))

    def test_declared_size_within_limit(self):
        """SIZE= at the limit is accepted."""
        self.assertEqual(self.client.send(b"MAIL FROM:<a@example.org> SIZE=10000\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_size_not_a_number(self):
        """SIZE without a decimal value answers 501 5.5.4."""
        for param in (b"SIZE", b"SIZE=abc", b"SIZE=-1"):
            reply = self.client.send(b"MAIL FROM:<a@example.org> " + param + b"\r\n")
            self.assertTrue(reply.startswith(b"501 5.5.4 "), (param, reply))

    def test_body_8bitmime(self):
        """BODY=8BITMIME is accepted and recorded in the queued message's envelope."""
        self.client.send(b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        queue_id = queued_id(self.client.send("Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n.\r\n".encode()))
        self.assertEqual(self.h.envelope(queue_id).body_type, "8BITMIME")
        self.assertIn("déjà vu".encode(), self.h.content(queue_id))

    def test_body_7bit_lower_case(self):
        """BODY=7bit is accepted in any case."""
        self.assertEqual(self.client.send(b"MAIL FROM:<a@example.org> BODY=7bit\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_body_unknown(self):
        """An unknown BODY= value answers 501 5.5.4."""
        self.assertTrue(self.client.send(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n").startswith(b"501 5.5.4 "))

    def test_unknown_mail_parameter(self):
        """An unknown MAIL parameter answers 555 5.5.4."""
        reply = self.client.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n")
        self.assertEqual(reply, b"555 5.5.4 Unsupported MAIL parameter SMTPUTF8\r\n")

    def test_auth_parameter_ignored(self):
        """RFC 4954's AUTH=<> on MAIL is accepted and ignored."""
        self.assertEqual(self.client.send(b"MAIL FROM:<a@example.org> AUTH=<>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_rcpt_parameter(self):
        """Any RCPT parameter (we offer none, e.g. no DSN) answers 555 5.5.4."""
        self.client.send(b"MAIL FROM:<a@example.org>\r\n")
        reply = self.client.send(b"RCPT TO:<bob@example.com> NOTIFY=NEVER\r\n")
        self.assertEqual(reply, b"555 5.5.4 Unsupported RCPT parameter NOTIFY\r\n")


class RecipientLimitTests(HarnessMixin, SynchronousTestCase):
    """smtp.maxRecipients."""

    def test_recipient_over_limit(self):
        """With maxRecipients=100 the 101st RCPT answers 452 4.5.3; the message goes to the first 100."""
        h = self.harness(maxRecipients=100, maxErrors=1000)
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        rcpts = b"".join(b"RCPT TO:<user%d@example.com>\r\n" % i for i in range(101))
        got = replies(client.send(rcpts))
        self.assertEqual(got[:100], [b"250 2.1.5 Recipient ok"] * 100)
        self.assertEqual(got[100], b"452 4.5.3 Error: too many recipients")
        self.assertEqual(len(got), 101)
        client.send(b"DATA\r\n")
        envelope = h.envelope(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertEqual([r.address for r in envelope.recipients], [f"user{i}@example.com" for i in range(100)])

    def test_recipient_limit_is_not_an_error(self):
        """
        452 4.5.3 is the normal answer to a long recipient list: a client with
        more recipients than maxRecipients + maxErrors is not disconnected.
        """
        h = self.harness(maxRecipients=2, maxErrors=3)
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        got = replies(client.send(b"".join(b"RCPT TO:<u%d@example.com>\r\n" % i for i in range(10))))
        self.assertEqual(got[2:], [b"452 4.5.3 Error: too many recipients"] * 8)
        self.assertFalse(client.closed)
        client.send(b"DATA\r\n")
        self.assertEqual(len(h.envelope(queued_id(client.send(MESSAGE + b".\r\n"))).recipients), 2)

    def test_duplicate_recipient_counted_once(self):
        """The same recipient twice is one recipient: it neither uses up the limit nor is stored twice."""
        h = self.harness(maxRecipients=2)
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        got = replies(client.send(b"RCPT TO:<bob@example.com>\r\n" * 3 + b"RCPT TO:<carol@example.com>\r\nDATA\r\n"))
        self.assertEqual(got[:4], [b"250 2.1.5 Recipient ok"] * 4)
        envelope = h.envelope(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertEqual([r.address for r in envelope.recipients], ["bob@example.com", "carol@example.com"])


class MessageTests(HarnessMixin, SynchronousTestCase):
    """Accepted messages: replies, the stored content and envelope."""

    def test_pipelined_transaction(self):
        """
        EHLO, MAIL, two RCPTs and DATA in one write get their replies in order,
        and the message is answered 250 2.0.0 Ok: queued as <id>.
        """
        h = self.harness()
        client = h.connect()
        got = replies(client.send(
            b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.com>\r\nRCPT TO:<carol@elsewhere.test>\r\nDATA\r\n"))
        self.assertEqual(got, [
            b"250-mx.test Hello client.test [127.0.0.1]", b"250-SIZE 26214400", b"250-8BITMIME",
            b"250-PIPELINING", b"250 ENHANCEDSTATUSCODES",
            b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok", b"250 2.1.5 Recipient ok",
            b"354 End data with <CR><LF>.<CR><LF>"])
        reply = client.send(MESSAGE + b".\r\n")
        queue_id = queued_id(reply)
        self.assertEqual(reply, b"250 2.0.0 Ok: queued as %s\r\n" % queue_id.encode())
        self.assertEqual(h.files("queue"), [queue_id + ".eml", queue_id + ".json"])
        self.assertEqual(h.files("tmp"), [])
        self.assertEqual(h.spool.queued, 1)

    def test_transparency_in_the_envelope(self):
        """
        The envelope records whether the stored content can be relayed
        unchanged: yes without dot lines, no with one (stuffed on the way out),
        no when bare line ends were normalized (they may have made one).
        """
        for body, transparent, settings in (
                (b"Subject: plain\r\n\r\nx.y\r\n . \r\n", True, {}),
                (b"Subject: dots\r\n\r\n..x\r\n", False, {}),
                (b"Subject: lf\r\n\r\na\nb\r\n", False, {"bareLineEndings": "normalize"})):
            h = self.harness(**settings)
            client = h.connect()
            client.start_transaction()
            queue_id = queued_id(client.send(body + b".\r\n"))
            self.assertEqual(h.envelope(queue_id).transparent, transparent, body)

    def test_stored_content(self):
        """queue/<id>.eml is our Received header followed by exactly the content, dot-unstuffed."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        body = b"Subject: dots\r\n\r\n..x\r\n...\r\n.\tTab\r\nlast line\r\n"
        queue_id = queued_id(client.send(body + b".\r\n"))
        received, content = h.content(queue_id).split(b"\r\nSubject: dots", 1)
        self.assertEqual(content, b"\r\n\r\n.x\r\n..\r\n\tTab\r\nlast line\r\n")
        self.assertTrue(received.startswith(b"Received: "))

    def test_received_header(self):
        """The Received header names the HELO name, the client IP, our host, the queue id and the recipient."""
        h = self.harness()
        h.clock.advance(1700000000)
        client = h.connect()
        client.start_transaction()
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertEqual(h.content(queue_id), (
            b"Received: from client.test ([127.0.0.1])\r\n"
            b"\tby mx.test (gomail) with ESMTP id " + queue_id.encode() + b"\r\n"
            b"\tfor <bob@example.com>; Tue, 14 Nov 2023 22:13:20 +0000\r\n") + MESSAGE)

    def test_received_header_after_helo(self):
        """After HELO (not EHLO) the Received header says "with SMTP" (RFC 3848)."""
        h = self.harness()
        client = h.connect()
        client.send(b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertIn(b"\tby mx.test (gomail) with SMTP id " + queue_id.encode(), h.content(queue_id))

    def test_postmaster_without_domain(self):
        """RCPT TO:<Postmaster> is accepted (RFC 5321 4.5.1) and stored as postmaster@<hostname>."""
        h = self.harness()
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"RCPT TO:<Postmaster>\r\n"), b"250 2.1.5 Recipient ok\r\n")
        client.send(b"DATA\r\n")
        envelope = h.envelope(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertEqual([r.address for r in envelope.recipients], ["postmaster@mx.test"])

    def test_received_header_several_recipients(self):
        """With several recipients the Received header names none of them."""
        h = self.harness()
        client = h.connect()
        client.start_transaction(recipients=(b"bob@example.com", b"carol@example.com"))
        content = h.content(queued_id(client.send(MESSAGE + b".\r\n")))
        header = content[:content.index(b"From: ")]
        self.assertNotIn(b"bob@", header)
        self.assertIn(b"with ESMTP id ", header)

    def test_received_header_ipv6(self):
        """An IPv6 client appears as an IPv6 address literal in the Received header."""
        h = self.harness()
        client = h.connect("::1")
        client.start_transaction()
        content = h.content(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertTrue(content.startswith(b"Received: from client.test ([IPv6:::1])\r\n"))

    def test_envelope(self):
        """
        The stored envelope has the sender, recipients (their domains canonical,
        local parts as given), client address and HELO name, and the content size.
        """
        h = self.harness()
        client = h.connect()
        client.start_transaction(sender=b"alice@example.org", recipients=(b"bob@example.com", b"Carol@Example.com."))
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        envelope = h.envelope(queue_id)
        self.assertEqual(envelope.id, queue_id)
        self.assertEqual(envelope.sender, "alice@example.org")
        self.assertEqual([r.address for r in envelope.recipients], ["bob@example.com", "Carol@example.com"])
        self.assertEqual((envelope.client_address, envelope.client_helo, envelope.tls),
                         ("127.0.0.1", "client.test", False))
        self.assertEqual(envelope.size, len(h.content(queue_id)))

    def test_message_without_headers(self):
        """Content that does not start with a header gets a blank line after our Received header."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        content = h.content(queued_id(client.send(b"just a body line\r\n.\r\n")))
        self.assertTrue(content.endswith(b"; Thu, 01 Jan 1970 00:00:00 +0000\r\n\r\njust a body line\r\n"), content)

    def test_empty_message(self):
        """An empty message (".") is accepted and stored as our Received header alone."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        content = h.content(queued_id(client.send(b".\r\n")))
        self.assertTrue(content.startswith(b"Received: "))
        self.assertTrue(content.endswith(b"+0000\r\n"))

    def test_two_messages_in_one_session(self):
        """After a message the session takes the next one, under a different id."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        first = queued_id(client.send(MESSAGE + b".\r\n"))
        got = replies(client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                                  b"Subject: two\r\n\r\n.\r\nQUIT\r\n"))
        self.assertEqual(got[:3], [b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok",
                                   b"354 End data with <CR><LF>.<CR><LF>"])
        second = queued_id(got[3] + b"\r\n")
        self.assertEqual(got[4:], [b"221 2.0.0 Bye"])
        self.assertNotEqual(first, second)
        self.assertEqual(len(h.files("queue")), 4)

    def test_message_split_into_many_reads(self):
        """A message delivered one byte per read is stored exactly as when delivered at once."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        data = MESSAGE + b"..dot\r\n.\r\n"
        reply = client.send_chunks([data[i:i + 1] for i in range(len(data))])
        content = h.content(queued_id(reply))
        self.assertTrue(content.endswith(MESSAGE + b".dot\r\n"))

    def test_commands_pipelined_behind_data_wait_for_commit(self):
        """
        While a message is being committed (its disk work pending), the
        commands pipelined after its end are held: their replies come after
        the 250, in order.
        """
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        self.assertEqual(client.send(MESSAGE + b".\r\nNOOP\r\nMAIL FROM:<a@example.org>\r\n"), b"")
        manual.release()
        got = replies(client.take())
        self.assertEqual(len(got), 3, got)
        queued_id(got[0] + b"\r\n")
        self.assertEqual(got[1:], [b"250 2.0.0 Ok", b"250 2.1.0 Sender ok"])

    def test_pipelined_input_bounded_while_reply_pending(self):
        """
        While a reply is pending, more than 64 KiB of pipelined input pauses the
        client; once the reply is sent the client is resumed and every held
        command is answered in order.
        """
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual, maxErrors=10000)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        client.send(MESSAGE + b".\r\n")
        self.assertEqual(client.transport.producerState, "producing")
        # Held commands that are not junk (NOOPs would pass the junk limit).
        held = b"MAIL FROM:<a@example.org>\r\n" * 2700
        self.assertEqual(client.send(held), b"")
        self.assertEqual(client.transport.producerState, "paused")
        manual.release()
        got = replies(client.take())
        self.assertEqual(len(got), 2701)
        self.assertEqual(got[1], b"250 2.1.0 Sender ok")
        self.assertEqual(set(got[2:]), {b"503 5.5.1 Error: nested MAIL command"})
        self.assertEqual(client.transport.producerState, "producing")


class ProtocolNameTests(SynchronousTestCase):
    """The "with" clause of our Received header (RFC 3848)."""

    def test_names(self):
        """SMTP for HELO, ESMTP plus S for TLS and A for authentication."""
        from gomail.smtp.received import protocol_name

        self.assertEqual(protocol_name(False, False, False), "SMTP")
        self.assertEqual(protocol_name(True, False, False), "ESMTP")
        self.assertEqual(protocol_name(True, True, False), "ESMTPS")
        self.assertEqual(protocol_name(True, False, True), "ESMTPA")
        self.assertEqual(protocol_name(True, True, True), "ESMTPSA")


class SmugglingTests(HarnessMixin, SynchronousTestCase):
    """
    SMTP smuggling (CVE-2023-51764 family): only <CRLF>.<CRLF> ends DATA, and
    nothing after a fake ending is ever run as a command.
    """

    def smuggle(self, ending: bytes, **settings):
        h = self.harness(**settings)
        client = h.connect()
        client.start_transaction()
        # Nothing is answered at the fake ending: the message is still open.
        self.assertEqual(client.send(b"Subject: s\r\n\r\nhello" + ending + SMUGGLED), b"", ending)
        return h, client, client.send(b".\r\n")

    def test_fake_endings_rejected(self):
        """
        With bareLineEndings=reject (the default), a message holding any fake
        ending answers one 550 5.5.2 at the real end; nothing is queued and the
        smuggled MAIL/RCPT/DATA got no reply.
        """
        for ending in FAKE_ENDINGS:
            h, client, reply = self.smuggle(ending)
            self.assertEqual(reply, b"550 5.5.2 Bare CR or LF in message is not allowed; use CRLF line endings\r\n",
                             ending)
            self.assertTrue(h.spool_is_empty(), ending)
            self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"),
                             b"503 5.5.1 Error: need MAIL command\r\n", ending)

    def test_fake_end_at_start_of_data(self):
        """A "." and bare LF as the very first line of data does not end it."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(b".\n" + SMUGGLED), b"")
        self.assertTrue(client.send(b".\r\n").startswith(b"550 5.5.2 "))
        self.assertTrue(h.spool_is_empty())

    def test_fake_endings_normalized(self):
        """
        With bareLineEndings=normalize, the same messages are accepted (250)
        as one message whose content has only CRLF line endings and still holds
        the would-be commands as text.
        """
        for ending in FAKE_ENDINGS:
            h, _client, reply = self.smuggle(ending, bareLineEndings="normalize")
            queue_id = queued_id(reply)
            self.assertEqual(replies(reply), [b"250 2.0.0 Ok: queued as " + queue_id.encode()], ending)
            content = h.content(queue_id)
            self.assertEqual(content.count(b"\r\n"), content.count(b"\n"), ending)
            self.assertEqual(content.count(b"\r\n"), content.count(b"\r"), ending)
            self.assertIn(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n", content)
            self.assertEqual(len(h.files("queue")), 2, ending)

    def test_fake_endings_split_across_reads(self):
        """A fake ending delivered one byte per read ends nothing either."""
        for ending in FAKE_ENDINGS:
            h = self.harness()
            client = h.connect()
            client.start_transaction()
            data = b"hello" + ending + SMUGGLED
            self.assertEqual(client.send_chunks([data[i:i + 1] for i in range(len(data))]), b"", ending)
            self.assertTrue(client.send(b".\r\n").startswith(b"550 5.5.2 "), ending)
            self.assertTrue(h.spool_is_empty(), ending)

    def test_bare_cr_and_lf_in_body(self):
        """A bare LF or CR anywhere in the body fails the message with 550 5.5.2 (reject mode)."""
        for body in (b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n"):
            h = self.harness()
            client = h.connect()
            client.start_transaction()
            self.assertTrue(client.send(body + b".\r\n").startswith(b"550 5.5.2 "), body)
            self.assertTrue(h.spool_is_empty(), body)

    def test_session_works_after_rejected_message(self):
        """After a 550 for bare line endings the next transaction is accepted."""
        h, client, _ = self.smuggle(b"\n.\n")
        client.start_transaction()
        self.assertEqual(len(replies(client.send(MESSAGE + b".\r\n"))), 1)
        self.assertEqual(len(h.files("queue")), 2)


class LongLineInDataTests(HarnessMixin, SynchronousTestCase):
    """An over-long line in DATA fails the message but never leaves DATA mode."""

    COMMANDS = b"RSET\r\nMAIL FROM:<x@y.z>\r\nRCPT TO:<q@r.s>\r\n"

    def check_rejected(self, h, client, reply):
        self.assertEqual(reply, b"552 5.6.0 Message line too long\r\n")
        self.assertTrue(h.spool_is_empty())
        # The session still works: a new transaction succeeds.
        client.start_transaction()
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertEqual(h.files("queue"), [queue_id + ".eml", queue_id + ".json"])

    def test_long_line_then_commands(self):
        """
        A 20 KiB line followed by command-looking lines: none is executed (no
        reply at all), the end of data answers 552 5.6.0, nothing is queued,
        and the session goes on.
        """
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(b"Subject: x\r\n\r\n" + b"A" * 20480 + b"\r\n" + self.COMMANDS), b"")
        self.check_rejected(h, client, client.send(b".\r\n"))

    def test_long_line_in_small_reads(self):
        """The same, delivered in 1000-byte reads."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        data = b"Subject: x\r\n\r\n" + b"A" * 20480 + b"\r\n" + self.COMMANDS + b".\r\n"
        reply = client.send_chunks([data[i:i + 1000] for i in range(0, len(data), 1000)])
        self.check_rejected(h, client, reply)

    def test_long_line_ending_at_end_of_data(self):
        """A long line whose CRLF is the start of the end-of-data line (split as CR | LF.CRLF) ends the message."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(b"A" * 20480 + b"\r"), b"")
        self.check_rejected(h, client, client.send(b"\n.\r\n"))

    def test_longest_line_accepted(self):
        """A line of exactly maxLineLength octets is accepted."""
        h = self.harness(maxLineLength=100)
        client = h.connect()
        client.start_transaction()
        line = b"Subject: " + b"x" * 91
        queue_id = queued_id(client.send(line + b"\r\n\r\nbody\r\n.\r\n"))
        self.assertIn(line + b"\r\n", h.content(queue_id))

    def test_one_octet_too_long(self):
        """A line of maxLineLength + 1 octets fails the message with 552 5.6.0."""
        h = self.harness(maxLineLength=100)
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(b"x" * 101 + b"\r\n.\r\n"), b"552 5.6.0 Message line too long\r\n")
        self.assertTrue(h.spool_is_empty())


class SizeLimitTests(HarnessMixin, SynchronousTestCase):
    """smtp.maxMessageSize, enforced while the message streams in."""

    def test_exceeded_while_streaming(self):
        """A message over the limit answers 552 5.3.4 at its end; nothing stays in tmp/ or queue/."""
        h = self.harness(maxMessageSize=400_000)
        client = h.connect()
        client.start_transaction()
        line = b"y" * 78 + b"\r\n"
        self.assertEqual(client.send(b"Subject: big\r\n\r\n" + line * 4000), b"")
        self.assertNotEqual(h.files("tmp"), [], "the test should have made the spool write to tmp/")
        self.assertEqual(client.send(line * 4000), b"")
        self.assertEqual(client.send(b".\r\n"), b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_exactly_at_limit(self):
        """Content of exactly maxMessageSize octets (the final CRLF included) is accepted; one more is not."""
        for size, accepted in ((2048, True), (2049, False)):
            h = self.harness(maxMessageSize=2048)
            client = h.connect()
            client.start_transaction()
            filler = size - 14
            content = b"Subject: s\r\n\r\n" + (b"z" * 98 + b"\r\n") * (filler // 100)
            content += b"z" * (filler % 100 - 2) + b"\r\n"
            self.assertEqual(len(content), size)
            reply = client.send(content + b".\r\n")
            if accepted:
                self.assertTrue(h.content(queued_id(reply)).endswith(content))
            else:
                self.assertTrue(reply.startswith(b"552 5.3.4 "), reply)
                self.assertTrue(h.spool_is_empty())


class StartTLSTests(HarnessMixin, SynchronousTestCase):
    """STARTTLS (RFC 3207) and the plaintext injection it must not allow."""

    def tls_client(self):
        h = self.harness(tls=True)
        return h, h.connect(tls_transport=True)

    def test_offered_when_available(self):
        """With a TLS context and a transport able to start TLS, EHLO lists STARTTLS."""
        _, client = self.tls_client()
        self.assertIn(b"250 STARTTLS", replies(client.send(b"EHLO client.test\r\n")))

    def test_not_offered_without_context(self):
        """Without a TLS context STARTTLS is not listed and answers 454 4.7.0."""
        client = self.harness().connect(tls_transport=True)
        self.assertNotIn(b"STARTTLS", client.send(b"EHLO client.test\r\n"))
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(client.transport.tls_started_with, [])

    def test_not_offered_without_tls_transport(self):
        """With a context but a transport that cannot start TLS, STARTTLS is not listed and answers 454 4.7.0."""
        client = self.harness(tls=True).connect()
        self.assertNotIn(b"STARTTLS", client.send(b"EHLO client.test\r\n"))
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"454 4.7.0 TLS not available\r\n")

    def test_starttls_with_argument(self):
        """STARTTLS with an argument answers 501 5.5.4 and starts nothing."""
        _, client = self.tls_client()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"STARTTLS now\r\n"), b"501 5.5.4 Syntax: STARTTLS\r\n")
        self.assertEqual(client.transport.tls_started_with, [])

    def test_starttls(self):
        """STARTTLS answers 220 2.0.0 and starts TLS on the transport with the server's context."""
        h, client = self.tls_client()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(client.transport.tls_started_with, [h.tls_context])

    def test_pipelined_plaintext_discarded(self):
        """
        STARTTLS followed by a MAIL in the same read: only the 220 is sent, the
        MAIL is discarded, and the session is reset, so a MAIL after the
        handshake without a new EHLO answers 503 5.5.1.
        """
        h, client = self.tls_client()
        client.send(b"EHLO client.test\r\n")
        reply = client.send(b"STARTTLS\r\nMAIL FROM:<a@b.c>\r\n")
        self.assertEqual(reply, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(client.transport.tls_started_with, [h.tls_context])
        self.assertEqual(client.send(b"MAIL FROM:<a@b.c>\r\n"), b"503 5.5.1 Error: send HELO/EHLO first\r\n")

    def test_injected_transaction_discarded(self):
        """A whole injected transaction behind STARTTLS gets no reply and queues nothing."""
        h, client = self.tls_client()
        client.send(b"EHLO client.test\r\n")
        reply = client.send(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<bob@example.com>\r\n"
                            b"DATA\r\n" + MESSAGE + b".\r\n")
        self.assertEqual(reply, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertTrue(h.spool_is_empty())

    def test_transaction_before_starttls_forgotten(self):
        """A MAIL given in plaintext does not survive STARTTLS: after EHLO, RCPT needs a new MAIL."""
        _, client = self.tls_client()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        client.send(b"STARTTLS\r\n")
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"), b"503 5.5.1 Error: need MAIL command\r\n")

    def test_not_offered_after_starttls(self):
        """After STARTTLS, EHLO no longer lists STARTTLS and a second STARTTLS answers 503 5.5.1."""
        _, client = self.tls_client()
        client.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        ehlo = client.send(b"EHLO client.test\r\n")
        self.assertTrue(ehlo.startswith(b"250-mx.test Hello client.test"))
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")
        self.assertEqual(len(client.transport.tls_started_with), 1)

    def test_message_after_starttls(self):
        """A message sent after STARTTLS is marked ESMTPS in Received and tls in its envelope."""
        h, client = self.tls_client()
        client.send(b"EHLO client.test\r\nSTARTTLS\r\n")
        client.start_transaction()
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertIn(b"with ESMTPS id " + queue_id.encode(), h.content(queue_id))
        self.assertTrue(h.envelope(queue_id).tls)

    def test_implicit_tls(self):
        """A session on an implicit-TLS listener is secure: no STARTTLS offered, 503 5.5.1 if tried."""
        h = self.harness(tls=True)
        client = h.connect(tls_transport=True, implicit_tls=True)
        self.assertNotIn(b"STARTTLS", client.send(b"EHLO client.test\r\n"))
        self.assertEqual(client.send(b"STARTTLS\r\n"), b"503 5.5.1 TLS already active\r\n")
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        self.assertTrue(h.envelope(queued_id(client.send(MESSAGE + b".\r\n"))).tls)


class TimeoutTests(HarnessMixin, SynchronousTestCase):
    """smtp.idleTimeout on the clock."""

    def test_idle_timeout(self):
        """After idleTimeout seconds of silence the server answers 421 4.4.2 and closes."""
        h = self.harness(idleTimeout=60)
        client = h.connect()
        h.clock.advance(59)
        self.assertFalse(client.closed)
        h.clock.advance(1)
        self.assertEqual(client.take(), b"421 4.4.2 mx.test Error: timeout exceeded\r\n")
        self.assertTrue(client.closed)

    def test_activity_resets_timer(self):
        """Each command restarts the idle timer."""
        h = self.harness(idleTimeout=60)
        client = h.connect()
        h.clock.advance(50)
        client.send(b"NOOP\r\n")
        h.clock.advance(50)
        self.assertFalse(client.closed)
        h.clock.advance(10)
        self.assertTrue(client.closed)

    def test_data_resets_timer(self):
        """Message content arriving restarts the idle timer too (with no minimum data rate)."""
        h = self.harness(idleTimeout=60, minDataRate=0)
        client = h.connect()
        client.start_transaction()
        for _ in range(5):
            h.clock.advance(50)
            client.send(b"more content\r\n")
        self.assertFalse(client.closed)
        self.assertTrue(client.send(b".\r\n").startswith(b"250 2.0.0 "))

    def test_timeout_in_data(self):
        """A timeout in the middle of DATA answers 421 4.4.2; the partial message is removed from tmp/."""
        h = self.harness(idleTimeout=60)
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: x\r\n\r\n" + (b"y" * 78 + b"\r\n") * 4000)
        self.assertNotEqual(h.files("tmp"), [], "the test should have made the spool write to tmp/")
        h.clock.advance(60)
        self.assertEqual(client.take(), b"421 4.4.2 mx.test Error: timeout exceeded\r\n")
        self.assertTrue(client.closed)
        client.lose()
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(h.server.sessions, set())

    def test_no_timer_after_close(self):
        """Once the connection is lost no timeout fires (no delayed call is left on the clock)."""
        h = self.harness(idleTimeout=60)
        client = h.connect()
        client.lose()
        self.assertEqual(h.clock.getDelayedCalls(), [])


class ErrorLimitTests(HarnessMixin, SynchronousTestCase):
    """smtp.maxErrors."""

    def test_too_many_errors(self):
        """The maxErrors-th error reply is followed by 421 4.7.0 and the connection closes; nothing after it runs."""
        h = self.harness(maxErrors=3)
        client = h.connect()
        reply = client.send(b"FROB\r\nNOOP\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n")
        self.assertEqual(replies(reply), [
            b"500 5.5.2 Error: command not recognized",
            b"250 2.0.0 Ok",
            b"503 5.5.1 Error: send HELO/EHLO first",
            b"503 5.5.1 Error: need MAIL command",
            b"421 4.7.0 Too many errors, closing connection",
        ])
        self.assertTrue(client.closed)

    def test_failed_message_counts(self):
        """A rejected message counts as an error too."""
        h = self.harness(maxErrors=1)
        client = h.connect()
        client.start_transaction()
        reply = client.send(b"a\nb\r\n.\r\n")
        self.assertEqual(replies(reply)[1], b"421 4.7.0 Too many errors, closing connection")
        self.assertTrue(client.closed)


class ConnectionLimitTests(HarnessMixin, SynchronousTestCase):
    """Admission: per-IP and global connection caps, security.allowLocalOnly."""

    def test_per_ip_cap(self):
        """The connection over maxConnectionsPerIP is refused with 421 4.7.0 and closed; other addresses are not."""
        h = self.harness(maxConnectionsPerIP=2, greetingDelay=0)
        first, second = h.connect("192.0.2.1"), h.connect("192.0.2.1")
        third = h.connect("192.0.2.1", greet=False)
        self.assertEqual(third.take(),
                         b"421 4.7.0 mx.test Too many connections from your address, try again later\r\n")
        self.assertTrue(third.closed)
        third.lose()
        self.assertEqual(h.connect("192.0.2.2", greet=False).take()[:4], b"220 ")
        self.assertFalse(first.closed or second.closed)

    def test_closed_connection_frees_slot(self):
        """When a connection from an address closes, that address may connect again."""
        h = self.harness(maxConnectionsPerIP=1, greetingDelay=0)
        first = h.connect("192.0.2.1")
        self.assertTrue(h.connect("192.0.2.1", greet=False).take().startswith(b"421 4.7.0 "))
        first.lose()
        self.assertEqual(h.connect("192.0.2.1", greet=False).take(), b"220 mx.test ESMTP gomail\r\n")

    def test_refused_connection_frees_nothing(self):
        """Losing a refused connection does not free a slot it never had."""
        h = self.harness(maxConnectionsPerIP=1)
        h.connect("192.0.2.1")
        refused = h.connect("192.0.2.1", greet=False)
        refused.lose()
        self.assertTrue(h.connect("192.0.2.1", greet=False).take().startswith(b"421 4.7.0 "))
        self.assertEqual(len(h.server.sessions), 1)

    def test_max_connections(self):
        """The connection over maxConnections is refused with 421 4.7.0, whatever its address."""
        h = self.harness(maxConnections=2)
        h.connect("192.0.2.1")
        h.connect("192.0.2.2")
        third = h.connect("192.0.2.3", greet=False)
        self.assertEqual(third.take(), b"421 4.7.0 mx.test Too many connections, try again later\r\n")
        self.assertTrue(third.closed)

    def test_allow_local_only_refuses_remote(self):
        """With allowLocalOnly, a non-loopback client is refused with 554 5.7.1 and closed."""
        h = self.harness(allow_local_only=True)
        client = h.connect("203.0.113.5", greet=False)
        self.assertEqual(client.take(),
                         b"554 5.7.1 mx.test Access denied: this server accepts only local clients\r\n")
        self.assertTrue(client.closed)
        self.assertEqual(h.server.sessions, set())

    def test_allow_local_only_admits_loopback(self):
        """With allowLocalOnly, IPv4 and IPv6 loopback clients are greeted."""
        h = self.harness(allow_local_only=True)
        for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            self.assertEqual(h.connect(host, greet=False).take(), b"220 mx.test ESMTP gomail\r\n", host)


class RelayPolicyTests(HarnessMixin, SynchronousTestCase):
    """Who may send to whom without authentication."""

    def rcpt(self, host, recipient, **kwargs):
        client = self.harness(**kwargs).connect(host)
        client.send(b"EHLO client.test\r\n")
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        return client.send(b"RCPT TO:<" + recipient + b">\r\n")

    def test_untrusted_to_remote_domain(self):
        """An untrusted client may not relay to a domain that is not local: 554 5.7.1."""
        self.assertEqual(self.rcpt("203.0.113.5", b"victim@elsewhere.test"),
                         b"554 5.7.1 <victim@elsewhere.test>: Relay access denied\r\n")

    def test_untrusted_to_local_domain(self):
        """An untrusted client may send to a local domain, in any case."""
        self.assertEqual(self.rcpt("203.0.113.5", b"bob@example.com"), b"250 2.1.5 Recipient ok\r\n")
        self.assertEqual(self.rcpt("203.0.113.5", b"bob@EXAMPLE.Com"), b"250 2.1.5 Recipient ok\r\n")

    def test_trusted_network(self):
        """A client in trustedNetworks may send anywhere."""
        self.assertEqual(self.rcpt("127.0.0.1", b"x@elsewhere.test"), b"250 2.1.5 Recipient ok\r\n")
        self.assertEqual(self.rcpt("10.1.2.3", b"x@elsewhere.test", trustedNetworks=("10.0.0.0/8",)),
                         b"250 2.1.5 Recipient ok\r\n")

    def test_relay_denied_recipient_skipped(self):
        """A refused recipient does not end the transaction: the message goes to the accepted ones only."""
        h = self.harness()
        client = h.connect("203.0.113.5")
        client.send(b"EHLO client.test\r\n")
        got = replies(client.send(b"MAIL FROM:<a@example.org>\r\n"
                                  b"RCPT TO:<x@elsewhere.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"))
        self.assertTrue(got[-3].startswith(b"554 5.7.1 "))
        envelope = h.envelope(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertEqual([r.address for r in envelope.recipients], ["bob@example.com"])

    def test_require_auth(self):
        """With requireAuth, MAIL answers 530 5.7.0 even from a trusted client."""
        client = self.harness(require_auth=True).connect("127.0.0.1")
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")


class StorageTests(HarnessMixin, SynchronousTestCase):
    """Local failures and resource limits are temporary (4xx), never bounces."""

    def test_fsync_failure(self):
        """An fsync failing with EIO answers 451 4.3.0 and leaves nothing in tmp/ or queue/."""
        fs = FailingFsync()
        h = self.harness(fs=fs)
        client = h.connect()
        client.start_transaction()
        fs.armed = True
        reply = client.send(MESSAGE + b".\r\n")
        self.assertEqual(reply, b"451 4.3.0 Local error in processing; message not accepted, try again later\r\n")
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(h.spool.queued, 0)
        self.flushLoggedErrors(OSError)

    def test_fsync_failure_large_message(self):
        """The same for a message already partly written to tmp/."""
        fs = FailingFsync()
        h = self.harness(fs=fs)
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: x\r\n\r\n" + (b"y" * 78 + b"\r\n") * 4000)
        self.assertNotEqual(h.files("tmp"), [])
        fs.armed = True
        self.assertTrue(client.send(b".\r\n").startswith(b"451 4.3.0 "))
        self.assertTrue(h.spool_is_empty())
        self.flushLoggedErrors(OSError)

    def test_file_too_large(self):
        """EFBIG (a file-size limit) answers 552 5.3.4, not a 451 the client would retry forever; nothing kept."""
        fs = FailingFsync()
        fs.error = OSError(errno.EFBIG, "File too large")
        h = self.harness(fs=fs)
        client = h.connect()
        client.start_transaction()
        fs.armed = True
        self.assertEqual(client.send(MESSAGE + b".\r\n"), b"552 5.3.4 Message too big for system\r\n")
        self.assertTrue(h.spool_is_empty())

    def test_disk_full_stays_temporary(self):
        """ENOSPC stays 451 4.3.0: space may come back."""
        fs = FailingFsync()
        fs.error = OSError(errno.ENOSPC, "No space left on device")
        h = self.harness(fs=fs)
        client = h.connect()
        client.start_transaction()
        fs.armed = True
        self.assertTrue(client.send(MESSAGE + b".\r\n").startswith(b"451 4.3.0 "))
        self.flushLoggedErrors(OSError)

    def test_session_continues_after_local_error(self):
        """After a 451 the client may retry in the same session and succeed."""
        fs = FailingFsync()
        h = self.harness(fs=fs)
        client = h.connect()
        client.start_transaction()
        fs.armed = True
        client.send(MESSAGE + b".\r\n")
        fs.armed = False
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        queue_id = queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertEqual(h.files("queue"), [queue_id + ".eml", queue_id + ".json"])
        self.flushLoggedErrors(OSError)

    def test_low_disk_space(self):
        """When the spool disk has less free space than required, MAIL answers 452 4.3.1."""
        client = self.harness(min_free_bytes=2 ** 62).connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"452 4.3.1 Insufficient system storage\r\n")

    def test_queue_full(self):
        """Once queue_size messages are queued, MAIL answers 452 4.3.1."""
        h = self.harness(queue_size=1)
        client = h.connect()
        client.start_transaction()
        queued_id(client.send(MESSAGE + b".\r\n"))
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"452 4.3.1 Insufficient system storage\r\n")


class ConnectionLostTests(HarnessMixin, SynchronousTestCase):
    """A client going away."""

    def test_lost_in_data(self):
        """A connection lost in the middle of DATA leaves nothing in tmp/ or queue/ and frees its slot."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: x\r\n\r\n" + (b"y" * 78 + b"\r\n") * 4000)
        self.assertNotEqual(h.files("tmp"), [])
        client.lose()
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(h.server.sessions, set())

    def test_lost_in_small_data(self):
        """The same when nothing had been written to disk yet."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: x\r\n\r\nshort")
        client.lose()
        self.assertTrue(h.spool_is_empty())


class ShutdownTests(HarnessMixin, SynchronousTestCase):
    """SMTPServer.shutdown: the graceful drain."""

    def test_no_sessions(self):
        """Without sessions, shutdown fires at once."""
        h = self.harness()
        self.successResultOf(h.server.shutdown(30))

    def test_idle_session_closed(self):
        """An idle session gets 421 4.3.2 and is closed at once; the Deferred fires when it is gone."""
        h = self.harness()
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        d = h.server.shutdown(30)
        self.assertEqual(client.take(), b"421 4.3.2 mx.test Service shutting down, try again later\r\n")
        self.assertTrue(client.closed)
        self.assertNoResult(d)
        client.lose()
        self.successResultOf(d)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_new_connection_refused(self):
        """A connection arriving during shutdown is refused with 421 4.3.2."""
        h = self.harness()
        h.connect()
        h.server.shutdown(30)
        late = h.connect(greet=False)
        self.assertEqual(late.take(), b"421 4.3.2 mx.test Service shutting down, try again later\r\n")
        self.assertTrue(late.closed)

    def test_session_in_data_finishes(self):
        """
        A session in the middle of DATA may finish its message: it gets its
        250, then 421 4.3.2 and is closed; then the Deferred fires.
        """
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        client.send(b"Subject: x\r\n\r\nfirst part\r\n")
        d = h.server.shutdown(30)
        self.assertEqual(client.take(), b"")
        self.assertFalse(client.closed)
        got = replies(client.send(b"second part\r\n.\r\nMAIL FROM:<a@example.org>\r\n"))
        queue_id = queued_id(got[0] + b"\r\n")
        self.assertEqual(got[1:], [b"421 4.3.2 mx.test Service shutting down, try again later"])
        self.assertTrue(client.closed)
        self.assertTrue(h.content(queue_id).endswith(b"first part\r\nsecond part\r\n"))
        self.assertNoResult(d)
        client.lose()
        self.successResultOf(d)

    def test_session_committing_finishes(self):
        """A session whose message is being committed gets its 250 once the disk work is done, then 421 4.3.2."""
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        self.assertEqual(client.send(MESSAGE + b".\r\n"), b"")
        d = h.server.shutdown(30)
        self.assertEqual(client.take(), b"")
        manual.release()
        got = replies(client.take())
        queued_id(got[0] + b"\r\n")
        self.assertEqual(got[1:], [b"421 4.3.2 mx.test Service shutting down, try again later"])
        client.lose()
        self.successResultOf(d)

    def test_session_after_mail_closes_after_rset(self):
        """A session that has given MAIL is let be until its transaction ends (here by RSET), then closed."""
        h = self.harness()
        client = h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        h.server.shutdown(30)
        self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\n"), b"250 2.1.5 Recipient ok\r\n")
        self.assertEqual(replies(client.send(b"RSET\r\nNOOP\r\n")),
                         [b"250 2.0.0 Ok", b"421 4.3.2 mx.test Service shutting down, try again later"])
        self.assertTrue(client.closed)

    def test_stuck_session_cut(self):
        """A session that never finishes is aborted after the timeout, and then the Deferred fires."""
        h = self.harness()
        client = h.connect()
        client.start_transaction()
        d = h.server.shutdown(30)
        h.clock.advance(29)
        self.assertNoResult(d)
        self.assertFalse(client.closed)
        h.clock.advance(1)
        self.successResultOf(d)
        self.assertTrue(client.transport.disconnected)
        client.lose()
        self.assertTrue(h.spool_is_empty())
