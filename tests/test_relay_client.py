"""The relay client protocol, byte for byte, on a StringTransport and a Clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gomail.delivery.client import ConnectionFailure, DotStuffer, RelayProtocol, Transaction
from gomail.delivery.content import BytesContent

CONTENT = b"Subject: hi\r\n\r\nline\r\n.dot line\r\n"


class Server:
    """Plays the smarthost: feeds replies, reads what the client wrote."""

    def __init__(self, test: SynchronousTestCase, **options) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.client = RelayProtocol("gomail.test", self.clock, 30, **options)
        self.client.makeConnection(self.transport)

    def say(self, *lines: bytes) -> bytes:
        """Send reply lines; return (and clear) what the client wrote in answer, pumping any file transfer."""
        for line in lines:
            self.client.dataReceived(line + b"\r\n")
        while self.transport.producer is not None:
            self.transport.producer.resumeProducing()
        written = self.transport.value()
        self.transport.clear()
        return written

    def greet(self, extensions: bytes = b"250 8BITMIME") -> None:
        """Greeting and EHLO; by default without PIPELINING (Twisted's one-command-at-a-time machine)."""
        assert self.say(b"220 smarthost ESMTP") == b"EHLO gomail.test\r\n"
        self.say(b"250-smarthost", extensions)


def transaction(*recipients: str, content: bytes = CONTENT, sender: str = "alice@example.org") -> Transaction:
    return Transaction(sender, list(recipients), lambda: BytesContent(content))


class HeldContent:
    """Content whose first read never completes: the DATA is under way, its final dot not sent."""

    transparent = False

    def read(self, size: int) -> Deferred:
        return Deferred()

    def close(self) -> Deferred:
        return succeed(None)


def held_transaction(*recipients: str) -> Transaction:
    return Transaction("alice@example.org", list(recipients), HeldContent)


def assert_failure_after_the_dot(test: SynchronousTestCase, server: Server) -> None:
    """MAIL ok, one RCPT ok and one refused, 354, then 452: the accepted one gets the 452, the other its 450."""
    d = server.client.send(transaction("a@example.com", "b@example.com"))
    server.say(b"250 ok", b"250 ok", b"450 4.2.1 mailbox busy", b"354 go")
    server.say(b"452 4.3.1 out of space")
    test.assertEqual(test.successResultOf(d), {"a@example.com": (452, "4.3.1 out of space"),
                                               "b@example.com": (450, "4.2.1 mailbox busy")})


class TransactionTests(SynchronousTestCase):
    """Transactions over one connection and their per-recipient results."""

    def test_ready_after_greeting(self) -> None:
        """ready fires once EHLO is answered; the connection is then idle."""
        server = Server(self)
        server.greet()
        self.assertIs(self.successResultOf(server.client.ready), server.client)
        self.assertTrue(server.client.idle)

    def test_two_batches_on_one_connection(self) -> None:
        """Two transactions reuse the connection with RSET between them; each gets its replies."""
        server = Server(self)
        server.greet()
        first = server.client.send(transaction("a@example.com", "b@example.com"))
        self.assertEqual(server.transport.value(), b"MAIL FROM:<alice@example.org>\r\n")
        server.transport.clear()
        self.assertEqual(server.say(b"250 ok"), b"RCPT TO:<a@example.com>\r\n")
        self.assertEqual(server.say(b"250 ok"), b"RCPT TO:<b@example.com>\r\n")
        self.assertEqual(server.say(b"550 5.1.1 no such user"), b"DATA\r\n")
        self.assertEqual(server.say(b"354 go ahead"), b"Subject: hi\r\n\r\nline\r\n..dot line\r\n.\r\n")
        self.assertEqual(server.say(b"250 2.0.0 queued as X"), b"RSET\r\n")
        self.assertEqual(self.successResultOf(first), {
            "a@example.com": (250, "2.0.0 queued as X"), "b@example.com": (550, "5.1.1 no such user")})
        server.say(b"250 reset")
        self.assertTrue(server.client.idle)
        second = server.client.send(transaction("c@example.com"))
        self.assertEqual(server.transport.value(), b"MAIL FROM:<alice@example.org>\r\n")
        server.transport.clear()
        server.say(b"250 ok")
        server.say(b"250 ok")
        server.say(b"354 go")
        server.say(b"250 done")
        self.assertEqual(self.successResultOf(second), {"c@example.com": (250, "done")})

    def test_transparent_content_sent_as_it_is(self) -> None:
        """
        A source marked transparent goes out unchanged, the end line added;
        the same bytes unmarked are dot-stuffed (the client takes the mark from the source).
        """
        for transparent, wire in ((True, b"Subject: hi\r\n\r\nx.y\r\n.\r\n"),
                                  (False, b"Subject: hi\r\n\r\nx.y\r\n.\r\n")):
            server = Server(self)
            server.greet()
            content = b"Subject: hi\r\n\r\nx.y\r\n"
            server.client.send(Transaction("alice@example.org", ["a@example.com"],
                                           lambda c=content, t=transparent: BytesContent(c, t)))
            server.say(b"250 ok")
            server.say(b"250 ok")
            self.assertEqual(server.say(b"354 go"), wire)
        # A dot line: only the unmarked source is stuffed (a marked one would not hold such a line).
        server = Server(self)
        server.greet()
        server.client.send(Transaction("alice@example.org", ["a@example.com"],
                                       lambda: BytesContent(b"a\r\n.b\r\n", False)))
        server.say(b"250 ok")
        server.say(b"250 ok")
        self.assertEqual(server.say(b"354 go"), b"a\r\n..b\r\n.\r\n")

    def test_temporary_failure_at_mail(self) -> None:
        """A 451 to MAIL FROM is every recipient's reply; the connection stays usable (RSET)."""
        server = Server(self)
        server.greet()
        d = server.client.send(transaction("a@example.com", "b@example.com"))
        server.transport.clear()
        self.assertEqual(server.say(b"451 4.3.0 try later"), b"RSET\r\n")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (451, "4.3.0 try later"),
                                                   "b@example.com": (451, "4.3.0 try later")})

    def test_failure_at_data(self) -> None:
        """A 554 instead of 354 is the reply of every accepted recipient."""
        server = Server(self)
        server.greet()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok")
        self.assertEqual(server.say(b"554 5.3.0 no data today"), b"RSET\r\n")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (554, "5.3.0 no data today")})

    def test_temporary_failure_after_the_dot(self) -> None:
        """A 452 after the end of data applies to all accepted recipients, a refused one keeps its own."""
        server = Server(self)
        server.greet()
        assert_failure_after_the_dot(self, server)

    def test_no_recipient_accepted(self) -> None:
        """When every RCPT is refused no DATA is sent and each keeps its reply."""
        server = Server(self)
        server.greet()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok")
        self.assertEqual(server.say(b"550 5.1.1 unknown"), b"RSET\r\n")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (550, "5.1.1 unknown")})

    def test_connection_dropped_mid_data(self) -> None:
        """A connection lost while the content is sent fails the transaction as a 451 saying so, no duplicate."""
        server = Server(self)
        server.greet()
        d = server.client.send(held_transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok")
        server.client.dataReceived(b"354 go\r\n")  # (say() would pump the held content for ever)
        server.client.connectionLost(None)
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.reply,
                         (451, "4.4.2 Connection to smarthost lost while waiting for the message content to be sent"))
        self.assertFalse(failure.value.possible_duplicate)
        self.assertTrue(server.client.closed)

    def test_connection_dropped_after_the_dot(self) -> None:
        """A connection lost after the final dot, before its reply: a 451 marked as a possible duplicate."""
        server = Server(self)
        server.greet()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok")
        self.assertTrue(server.say(b"354 go").endswith(b"\r\n.\r\n"))
        self.assertTrue(server.client.awaiting_dot)
        server.client.connectionLost(None)
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.reply, (451, "4.4.2 Connection to smarthost lost while waiting for the final dot"))
        self.assertTrue(failure.value.possible_duplicate)

    def test_service_closing(self) -> None:
        """A 421 at any point is a connection-level failure with that reply."""
        server = Server(self)
        server.greet()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"421 4.3.2 shutting down")
        self.assertEqual(self.failureResultOf(d, ConnectionFailure).value.reply, (421, "4.3.2 shutting down"))
        self.assertTrue(server.transport.disconnecting)

    def test_greeting_timeout(self) -> None:
        """No greeting within the command timeout: ready fails and the connection is dropped."""
        server = Server(self)
        server.clock.advance(30)
        self.failureResultOf(server.client.ready, ConnectionFailure)
        self.assertTrue(server.transport.disconnecting)

    def test_refused_session_is_a_deferral(self) -> None:
        """A 5xx before any transaction (here the greeting) refuses our session, not the mail: 451 4.7.0."""
        server = Server(self)
        server.say(b"554 5.7.1 no service for you")
        failure = self.failureResultOf(server.client.ready, ConnectionFailure)
        self.assertEqual(failure.value.reply,
                         (451, "4.7.0 Smarthost refused the session at greeting: 554 5.7.1 no service for you"))

    def test_starttls_required_but_not_offered(self) -> None:
        """With credentials (so TLS required) and no STARTTLS offered: no AUTH, no MAIL, ready fails."""
        server = Server(self, username="user", password="secret", tls_context=object())
        server.say(b"220 smarthost ESMTP")
        written = server.say(b"250-smarthost", b"250 AUTH PLAIN LOGIN")
        self.assertNotIn(b"AUTH", written)
        self.assertNotIn(b"MAIL", written)
        self.failureResultOf(server.client.ready, ConnectionFailure)


class PipeliningTests(SynchronousTestCase):
    """To a server offering PIPELINING (RFC 2920): MAIL, RCPT... and DATA in one write."""

    def pipelined(self) -> Server:
        server = Server(self)
        server.greet(b"250 PIPELINING")
        self.assertTrue(server.client.pipelining)
        return server

    def test_one_write_then_the_content(self) -> None:
        """A transaction is one write of MAIL, every RCPT and DATA; the content follows the 354, no RSET after."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com", "b@example.com"))
        self.assertEqual(server.transport.value(), b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@example.com>\r\n"
                                                   b"RCPT TO:<b@example.com>\r\nDATA\r\n")
        server.transport.clear()
        self.assertEqual(server.say(b"250 2.1.0 ok", b"250 2.1.5 ok"), b"")
        self.assertEqual(server.say(b"550 5.1.1 no such user", b"354 go ahead"),
                         b"Subject: hi\r\n\r\nline\r\n..dot line\r\n.\r\n")
        self.assertEqual(server.say(b"250 2.0.0 queued as X"), b"")
        self.assertEqual(self.successResultOf(d), {
            "a@example.com": (250, "2.0.0 queued as X"), "b@example.com": (550, "5.1.1 no such user")})
        self.assertTrue(server.client.idle)

    def test_replies_split_and_joined_anyhow(self) -> None:
        """Replies arriving together, or a multi-line one cut mid-way, are matched to their commands in order."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com"))
        server.transport.clear()
        server.client.dataReceived(b"250-2.1.0 sender\r\n250 2.1.0 ok\r\n250 2.1.5 o")
        server.client.dataReceived(b"k\r\n354 go\r\n")
        while server.transport.producer is not None:
            server.transport.producer.resumeProducing()
        self.assertTrue(server.transport.value().endswith(b"\r\n.\r\n"))
        server.say(b"250 done")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (250, "done")})

    def test_queued_transactions_follow_each_other(self) -> None:
        """A second queued transaction is sent as soon as the first is answered, on the same connection."""
        server = self.pipelined()
        first = server.client.send(transaction("a@example.com"))
        second = server.client.send(transaction("c@example.com", sender="bob@example.org"))
        server.transport.clear()
        server.say(b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(server.say(b"250 first done"),
                         b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        server.say(b"250 ok", b"250 ok", b"354 go")
        server.say(b"250 second done")
        self.assertEqual(self.successResultOf(first), {"a@example.com": (250, "first done")})
        self.assertEqual(self.successResultOf(second), {"c@example.com": (250, "second done")})

    def test_failed_mail_is_every_recipients_reply(self) -> None:
        """A 451 to MAIL applies to every recipient; the RCPT and DATA replies behind it are consumed."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com", "b@example.com"))
        server.transport.clear()
        self.assertEqual(server.say(b"451 4.3.0 try later", b"503 5.5.1 no sender", b"503 5.5.1 no sender",
                                    b"503 5.5.1 no recipients"), b"")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (451, "4.3.0 try later"),
                                                   "b@example.com": (451, "4.3.0 try later")})
        self.assertTrue(server.client.idle)

    def test_transaction_ended_early_is_reset_with_the_next(self) -> None:
        """After a refused DATA the next transaction starts with RSET, in the same write."""
        server = self.pipelined()
        first = server.client.send(transaction("a@example.com"))
        server.transport.clear()
        server.say(b"250 ok", b"250 ok", b"554 5.3.0 no data today")
        self.assertEqual(self.successResultOf(first), {"a@example.com": (554, "5.3.0 no data today")})
        second = server.client.send(transaction("c@example.com"))
        self.assertEqual(server.transport.value(), b"RSET\r\nMAIL FROM:<alice@example.org>\r\n"
                                                   b"RCPT TO:<c@example.com>\r\nDATA\r\n")
        server.transport.clear()
        server.say(b"250 reset", b"250 ok", b"250 ok", b"354 go")
        server.say(b"250 done")
        self.assertEqual(self.successResultOf(second), {"c@example.com": (250, "done")})

    def test_no_recipient_accepted(self) -> None:
        """Every RCPT refused: each keeps its reply; a 354 to the pipelined DATA gets an empty end of data."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com"))
        server.transport.clear()
        self.assertEqual(server.say(b"250 ok", b"550 5.1.1 unknown", b"503 5.5.1 no recipients"), b"")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (550, "5.1.1 unknown")})
        lenient = self.pipelined()
        d = lenient.client.send(transaction("a@example.com"))
        lenient.transport.clear()
        self.assertEqual(lenient.say(b"250 ok", b"550 5.1.1 unknown", b"354 go"), b".\r\n")
        self.assertNoResult(d)
        lenient.say(b"554 5.5.1 no valid recipients")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (550, "5.1.1 unknown")})
        second = lenient.client.send(transaction("c@example.com"))
        self.assertTrue(lenient.transport.value().startswith(b"MAIL FROM:"))  # that transaction is over: no RSET
        self.assertNoResult(second)

    def test_temporary_failure_after_the_dot(self) -> None:
        """A 452 after the end of data applies to the accepted recipients, a refused one keeps its own."""
        assert_failure_after_the_dot(self, self.pipelined())

    def test_unexpected_reply_to_data(self) -> None:
        """A 2xx to DATA (no content asked for) is a connection-level failure, never a delivery."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok", b"250 sure")
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.reply[0], 451)

    def test_service_closing_mid_pipeline(self) -> None:
        """A 421 among the pipelined replies fails the transaction with that reply and drops the connection."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok", b"421 4.3.2 shutting down")
        self.assertEqual(self.failureResultOf(d, ConnectionFailure).value.reply, (421, "4.3.2 shutting down"))
        self.assertTrue(server.transport.disconnecting)

    def test_dropped_mid_data(self) -> None:
        """A connection lost while the content is on its way fails the transaction as a connection-level 451."""
        server = self.pipelined()
        d = server.client.send(held_transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok")
        server.client.dataReceived(b"354 go\r\n")  # (say() would pump the held content for ever)
        server.client.connectionLost(None)
        failure = self.failureResultOf(d, ConnectionFailure)
        self.assertEqual(failure.value.reply,
                         (451, "4.4.2 Connection to smarthost lost while waiting for the message content to be sent"))
        self.assertFalse(failure.value.possible_duplicate)

    def test_reply_to_nothing_drops_the_connection(self) -> None:
        """A reply nobody asked for (here while idle after a transaction) ends the session; nothing is misread."""
        server = self.pipelined()
        d = server.client.send(transaction("a@example.com"))
        server.say(b"250 ok", b"250 ok", b"354 go")
        server.say(b"250 done")
        self.assertEqual(self.successResultOf(d), {"a@example.com": (250, "done")})
        server.say(b"250 surprise")
        self.assertTrue(server.client.closed or server.transport.disconnecting)
        late = server.client.send(transaction("b@example.com"))
        self.failureResultOf(late, ConnectionFailure)

    def test_keyword_is_case_insensitive(self) -> None:
        """EHLO keywords are case-insensitive (RFC 5321 2.4): 'pipelining' counts; without it, one command at a time."""
        lower = Server(self)
        lower.greet(b"250 pipelining")
        self.assertTrue(lower.client.pipelining)
        plain = Server(self)
        plain.greet(b"250 8BITMIME")
        self.assertFalse(plain.client.pipelining)
        plain.client.send(transaction("a@example.com"))
        self.assertEqual(plain.transport.value(), b"MAIL FROM:<alice@example.org>\r\n")

class DotStufferTests(SynchronousTestCase):
    """Outgoing DATA never contains an early end-of-data, whatever was stored."""

    def send(self, content: bytes, chunk: int, transparent: bool = False) -> bytes:
        stuffer = DotStuffer(transparent)
        out = b"".join(stuffer.feed(content[i:i + chunk]) for i in range(0, len(content), chunk))
        return out + stuffer.finish()

    def test_stored_bare_line_endings_cannot_end_data(self) -> None:
        """Bare LF/CR around a dot become CRLF with the dot doubled, for every chunk size."""
        content = b"a\n.\nb\r.\rc\r\n.\r\nd"
        expected = b"a\r\n..\r\nb\r\n..\r\nc\r\n..\r\nd\r\n.\r\n"
        for chunk in range(1, len(content) + 1):
            wire = self.send(content, chunk)
            self.assertEqual(wire, expected, chunk)
            self.assertEqual(wire.find(b"\r\n.\r\n"), len(wire) - 5)

    def test_empty_and_unterminated(self) -> None:
        """An empty message is just the end line; a last line without CRLF gets one."""
        self.assertEqual(self.send(b"", 1), b".\r\n")
        self.assertEqual(self.send(b".x", 1), b"..x\r\n.\r\n")

    def test_transparent_content_goes_out_unchanged(self) -> None:
        """Content recorded as transparent is sent as it is, the end line added: the same wire as stuffing makes."""
        content = b"Subject: hi\r\n\r\nline. with .dots\r\n\r\nend\r\n"
        for chunk in range(1, len(content) + 1):
            self.assertEqual(self.send(content, chunk, transparent=True), content + b".\r\n", chunk)
            self.assertEqual(self.send(content, chunk, transparent=True), self.send(content, chunk), chunk)
        self.assertEqual(self.send(b"", 1, transparent=True), b".\r\n")
        self.assertEqual(self.send(b"no line end", 4, transparent=True), b"no line end\r\n.\r\n")

    def test_changed_content_is_stuffed_after_all(self) -> None:
        """
        Bytes that are not what intake recorded (a dot after a line end: the
        file changed since) are dot-stuffed from there on, so they cannot end the DATA early.
        """
        content = b"clean line\r\n.\r\nMAIL FROM:<x@y.z>\r\n"
        for chunk in range(1, len(content) + 1):
            wire = self.send(content, chunk, transparent=True)
            self.assertEqual(wire, b"clean line\r\n..\r\nMAIL FROM:<x@y.z>\r\n.\r\n", chunk)

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"x" * 9]),
                    max_size=30),
           st.integers(min_value=1, max_value=40))
    def test_transparent_mode_never_ends_data_early(self, pieces: list[bytes], chunk: int) -> None:
        """
        Whatever the stored bytes and chunking, the transparent mode never
        sends an unstuffed dot after a CRLF (no early end of data); for content
        with CRLF line ends only it sends exactly what the stuffing path sends.
        """
        content = b"".join(pieces)
        wire = self.send(content, chunk, transparent=True)
        self.assertTrue(wire.endswith(b".\r\n"))
        body = b"\r\n" + wire[:-3]
        at = body.find(b"\r\n.")
        while at >= 0:
            self.assertEqual(body[at + 3:at + 4], b".", (content, chunk, wire))
            at = body.find(b"\r\n.", at + 4)
        crlf = content.count(b"\r\n")
        if content.count(b"\r") == crlf == content.count(b"\n"):
            self.assertEqual(wire, self.send(content, chunk))
