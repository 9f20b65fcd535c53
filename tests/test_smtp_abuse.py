"""
What an attacker did to the SMTP listener, and what it answers now (issue 14, items 2-4, 6, 7).

Every test sends what the outside tester sent, through the real protocol on an
in-memory transport, and checks the replies, the connection and the spool.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ClientFactory
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.smtp import guard
from gomail.smtp.framing import MAX_COMMAND_LINE, MAX_LONG_LINE
from tests.smtphelpers import HarnessMixin, ManualRun, replies
from tests.test_flow import Sink, _socket_transport, buffered
from tests.test_smtp_auth import AuthHarnessMixin, plain

UNTRUSTED = "203.0.113.5"
MESSAGE = b"Subject: test\r\n\r\nHello\r\n"
SYNC_ERROR = b"554 5.5.0 Error: SMTP protocol synchronization\r\n"


class SlowClientTests(HarnessMixin, SynchronousTestCase):
    """Item 2: a minimum DATA rate and a bounded session."""

    def test_data_trickle_cut_at_min_rate(self):
        """DATA at 1 byte per 1.5 s with a 4 s idle timeout is cut with 421 4.4.2 soon after 4 s, nothing kept."""
        h = self.harness(idleTimeout=4, minDataRate=500)
        client = h.connect()
        client.start_transaction()
        elapsed = 0.0
        while not client.closed and elapsed < 60:
            client.send(b"x")
            h.clock.advance(1.5)
            elapsed += 1.5
        self.assertTrue(client.closed)
        self.assertLessEqual(elapsed, 6.0)
        self.assertEqual(client.take(), b"421 4.4.2 mx.test Error: data rate too low\r\n")
        client.lose()
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(h.server.rejections["data_rate"], 1)

    def test_data_at_rate_passes(self):
        """A slow but steady client (above the minimum rate) finishes its message after the idle timeout."""
        h = self.harness(idleTimeout=4, minDataRate=500)
        client = h.connect()
        client.start_transaction()
        for _ in range(20):  # 1,000 bytes a second for 20 s
            client.send(b"x" * 998 + b"\r\n")
            h.clock.advance(1)
        self.assertTrue(client.send(b".\r\n").startswith(b"250 2.0.0 Ok: queued as "))

    def test_noop_every_three_seconds_ends_at_session_limit(self):
        """A NOOP every 3 s no longer keeps a session forever: 421 4.4.2 at maxSessionTime."""
        h = self.harness(idleTimeout=4, maxSessionTime=60, junkCommandLimit=1000)
        client = h.connect()
        for _ in range(20):  # at 0, 3, ... 57 s
            self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
            h.clock.advance(3)
        self.assertEqual(client.take(), b"421 4.4.2 mx.test Error: session time limit exceeded\r\n")
        self.assertTrue(client.closed)

    def test_session_limit_waits_for_a_pending_commit(self):
        """A session that reaches maxSessionTime while its message is being committed gets the 250, then the 421."""
        manual = ManualRun()
        manual.synchronous = True
        h = self.harness(run=manual, maxSessionTime=60)
        client = h.connect()
        client.start_transaction()
        manual.synchronous = False
        self.assertEqual(client.send(MESSAGE + b".\r\n"), b"")
        h.clock.advance(60)
        self.assertFalse(client.closed)
        manual.release()
        got = replies(client.take())
        self.assertTrue(got[0].startswith(b"250 2.0.0 Ok: queued as "), got)
        self.assertEqual(got[1], b"421 4.4.2 mx.test Error: session time limit exceeded")
        self.assertTrue(client.closed)

    def test_transactions_per_session(self):
        """After maxTransactions accepted messages the session ends with 421 4.4.2, after the last 250."""
        h = self.harness(maxTransactions=2)
        client = h.connect()
        client.start_transaction()
        self.assertTrue(client.send(MESSAGE + b".\r\n").startswith(b"250 2.0.0 "))
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        got = replies(client.send(MESSAGE + b".\r\n"))
        self.assertTrue(got[0].startswith(b"250 2.0.0 Ok: queued as "))
        self.assertEqual(got[1], b"421 4.4.2 mx.test Error: too many messages in one session")
        self.assertTrue(client.closed)
        self.assertEqual(len(h.files("queue")), 4)  # two messages, content and envelope each


class PipeliningTests(HarnessMixin, SynchronousTestCase):
    """Item 3: Postfix's smtpd_forbid_unauth_pipelining and the pregreet test."""

    def test_pregreet_untrusted_refused(self):
        """An untrusted client that talks before the banner gets 554 5.5.0 and is closed; no banner follows."""
        h = self.harness()
        client = h.connect(UNTRUSTED, greet=False)
        self.assertEqual(client.take(), b"")
        self.assertEqual(client.send(b"EHLO spam.test\r\n"), SYNC_ERROR)
        self.assertTrue(client.closed)
        h.clock.advance(5)
        self.assertEqual(client.take(), b"")
        self.assertEqual(h.server.rejections["pipelining"], 1)

    def test_untrusted_greeted_after_delay(self):
        """An untrusted client that waits gets its banner after greetingDelay and is served."""
        h = self.harness(greetingDelay=1.0)
        client = h.connect(UNTRUSTED, greet=False)
        h.clock.advance(0.9)
        self.assertEqual(client.take(), b"")
        h.clock.advance(0.1)
        self.assertEqual(client.take(), b"220 mx.test ESMTP gomail\r\n")
        self.assertTrue(client.send(b"EHLO client.test\r\n").startswith(b"250-mx.test"))

    def test_trusted_greeted_at_once_and_early_input_kept(self):
        """A trusted client is greeted at once; input it sent early is served after the banner."""
        h = self.harness(greetingDelay=5.0)
        client = h.connect("127.0.0.1", greet=False)
        self.assertEqual(client.take(), b"220 mx.test ESMTP gomail\r\n")

    def test_pipelining_after_helo_refused(self):
        """After HELO (no PIPELINING offered), an untrusted client's pipelined commands get 554 5.5.0."""
        client = self.harness().connect(UNTRUSTED)
        client.send(b"HELO client.test\r\n")
        got = client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        self.assertEqual(got, SYNC_ERROR)
        self.assertTrue(client.closed)

    def test_pipelining_after_ehlo_allowed(self):
        """After EHLO, MAIL, RCPT and DATA may be pipelined (RFC 2920), DATA last."""
        h = self.harness()
        client = h.connect(UNTRUSTED)
        client.send(b"EHLO client.test\r\n")
        got = replies(client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"))
        self.assertEqual(got, [b"250 2.1.0 Sender ok", b"250 2.1.5 Recipient ok",
                               b"354 End data with <CR><LF>.<CR><LF>"])
        self.assertTrue(client.send(MESSAGE + b".\r\n").startswith(b"250 2.0.0 "))

    def test_commands_behind_ehlo_refused(self):
        """EHLO ends a group: commands sent behind it before its reply get 554 5.5.0."""
        client = self.harness().connect(UNTRUSTED)
        self.assertEqual(replies(client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")),
                         [SYNC_ERROR[:-2]])
        self.assertTrue(client.closed)

    def test_body_behind_refused_data_never_runs_as_commands(self):
        """
        The tester's case: DATA refused (no valid recipients) with a body behind
        it that holds a whole second transaction. The body is not read as
        commands and nothing is queued, even from a trusted client.
        """
        h = self.harness()
        client = h.connect("127.0.0.1")
        client.send(b"EHLO client.test\r\n")
        smuggled = (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n"
                    b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                    + MESSAGE + b".\r\n")
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        got = replies(client.send(b"DATA\r\n" + smuggled))
        self.assertEqual(got, [b"554 5.5.1 Error: no valid recipients", SYNC_ERROR[:-2]])
        self.assertTrue(client.closed)
        self.assertTrue(h.spool_is_empty())

    def test_data_pipelined_with_body_untrusted(self):
        """An untrusted client sending its body before the 354 is refused; nothing is queued."""
        h = self.harness()
        client = h.connect(UNTRUSTED)
        client.send(b"EHLO client.test\r\n")
        got = replies(client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
                                  + MESSAGE + b".\r\n"))
        self.assertEqual(got[-1], SYNC_ERROR[:-2])
        self.assertTrue(client.closed)
        client.lose()
        self.assertTrue(h.spool_is_empty())

    def test_trusted_client_may_pipeline(self):
        """A trusted client's pipelining is not refused (Postfix exempts trusted and authenticated clients)."""
        client = self.harness().connect("127.0.0.1")
        got = replies(client.send(b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\nNOOP\r\n"))
        self.assertEqual(got[-1], b"250 2.0.0 Ok")
        self.assertFalse(client.closed)

    def test_violation_logged_with_client(self):
        """A violation is logged with the client's address."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = self.harness().connect(UNTRUSTED)
        client.send(b"HELO a\r\nNOOP\r\n")
        texts = [e.get("log_format", "") for e in events if e.get("client") == UNTRUSTED]
        self.assertIn("improper command pipelining {where} from {client}: {data}", texts)


class JunkTests(HarnessMixin, SynchronousTestCase):
    """Item 4: junk commands, foreign protocols, endless lines."""

    def test_junk_limit(self):
        """200 NOOP/RSET/VRFY/HELP: the first 100 answered, then 421 4.7.0 and close."""
        client = self.harness().connect()
        junk = [b"NOOP", b"RSET", b"VRFY bob", b"HELP"] * 50
        got = replies(client.send(b"".join(line + b"\r\n" for line in junk)))
        self.assertEqual(len(got), 101)
        self.assertEqual(got[-1], b"421 4.7.0 Error: too many junk commands, closing connection")
        self.assertTrue(client.closed)

    def test_junk_counter_resets_after_a_message(self):
        """Junk is counted between accepted messages: a busy client that sends RSETs is not cut off."""
        client = self.harness(junkCommandLimit=3).connect()
        for _ in range(3):
            client.send(b"RSET\r\nRSET\r\nRSET\r\n")
            client.start_transaction()
            self.assertTrue(client.send(MESSAGE + b".\r\n").startswith(b"250 2.0.0 "))
        self.assertFalse(client.closed)

    def test_http_verbs_disconnect_at_once(self):
        """GET, POST and CONNECT lines end the session at the first line, with one reply."""
        for request in (b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"CONNECT mx.test:25 HTTP/1.1", b"get / HTTP/1.1"):
            client = self.harness().connect()
            got = client.send(request + b"\r\nHost: mx.test\r\nNOOP\r\n")
            self.assertEqual(got, b"221 2.7.0 Error: non-SMTP command, closing connection\r\n", request)
            self.assertTrue(client.closed)

    def test_header_line_disconnects(self):
        """A header line such as Host: (a browser posting to the SMTP port) ends the session."""
        client = self.harness().connect()
        self.assertEqual(client.send(b"Host: mx.test\r\n"),
                         b"221 2.7.0 Error: non-SMTP command, closing connection\r\n")
        self.assertTrue(client.closed)

    def test_endless_line_disconnects(self):
        """A line with no end: one 500 5.5.2, then 421 4.7.0 and close past the hard bound; input not kept."""
        client = self.harness().connect()
        chunk = b"A" * 65536
        got = b""
        for _ in range(4):
            got += client.send(chunk)
            self.assertLessEqual(len(client.proto._input), MAX_COMMAND_LINE + 2)
        self.assertEqual(replies(got), [b"500 5.5.2 Line too long",
                                        b"421 4.7.0 Error: line too long, closing connection"])
        self.assertTrue(client.closed)

    def test_long_line_under_bound_skipped(self):
        """A line over the command limit but under the hard bound is answered once and skipped."""
        client = self.harness().connect()
        got = client.send(b"NOOP " + b"x" * (MAX_LONG_LINE // 2) + b"\r\nNOOP\r\n")
        self.assertEqual(replies(got), [b"500 5.5.2 Line too long", b"250 2.0.0 Ok"])
        self.assertFalse(client.closed)


class GuardRuleTests(SynchronousTestCase):
    """The pure rules of L{gomail.smtp.guard}."""

    def test_non_smtp(self):
        """HTTP verbs and header lines are non-SMTP; SMTP commands with colons are not."""
        for line in (b"GET /", b"post /", b"CONNECT a:1 HTTP/1.1", b"Host: a", b"User-Agent: x"):
            self.assertTrue(guard.is_non_smtp(line), line)
        for line in (b"MAIL FROM:<a@b>", b"RCPT TO:<a@b>", b"EHLO a", b"NOOP"):
            self.assertFalse(guard.is_non_smtp(line), line)

    def test_breaks_sync(self):
        """Without PIPELINING every command ends a group; with it, only the RFC 2920 group enders."""
        self.assertTrue(guard.breaks_sync(b"MAIL", pipelining_offered=False))
        self.assertFalse(guard.breaks_sync(b"MAIL", pipelining_offered=True))
        self.assertFalse(guard.breaks_sync(b"RCPT", pipelining_offered=True))
        for verb in (b"EHLO", b"DATA", b"NOOP", b"STARTTLS", b"AUTH"):
            self.assertTrue(guard.breaks_sync(verb, pipelining_offered=True), verb)


class AuthExchangeTests(AuthHarnessMixin, TestCase):
    """Item 6: an AUTH exchange always ends at the client's reply."""

    def test_overlong_response_ends_exchange(self):
        """A 13 KB AUTH response: 501 5.5.6, and the next NOOP is a command again."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        self.assertEqual(client.send(b"AUTH PLAIN\r\n"), b"334 \r\n")
        got = client.send(b"A" * 13000 + b"\r\n")
        self.assertEqual(got, b"501 5.5.6 Authentication exchange line is too long\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_overlong_response_in_pieces(self):
        """The same response arriving in pieces is answered once, and the exchange is over."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        client.send(b"AUTH LOGIN\r\n")
        got = client.send_chunks([b"A" * 4000] * 4 + [b"\r\n"])
        self.assertEqual(got, b"501 5.5.6 Authentication exchange line is too long\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_malformed_response(self):
        """A response that is not base64: 501 5.5.2, exchange over."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        client.send(b"AUTH PLAIN\r\n")
        self.assertEqual(client.send(b"!!!\r\n"), b"501 5.5.2 Cannot decode AUTH PLAIN response\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_cancel(self):
        """A client's * cancels the exchange: 501 5.0.0."""
        harness = self.auth_harness()
        client = self.secure_client(harness)
        client.send(b"AUTH LOGIN\r\n")
        self.assertEqual(client.send(b"*\r\n"), b"501 5.0.0 Authentication cancelled\r\n")
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_authenticated_client_may_pipeline(self):
        """After AUTH, an untrusted client's pipelining is not refused."""
        harness = self.auth_harness()
        client = self.secure_client(harness, host=UNTRUSTED)
        client.send(b"AUTH PLAIN " + plain("alice@example.org", "correct horse") + b"\r\n")
        harness.clock.advance(0)
        got = replies(client.send(b"RSET\r\nNOOP\r\nNOOP\r\n"))
        self.assertEqual(got[-1], b"250 2.0.0 Ok")


class Listed:
    """A blacklist stand-in: these addresses are listed."""

    def __init__(self, *hosts: str, broken: bool = False) -> None:
        self.hosts = set(hosts)
        self.broken = broken

    def check(self, ip: str):
        if self.broken:
            return fail(RuntimeError("database locked"))
        return succeed(ip in self.hosts)


class BlacklistAtConnectTests(HarnessMixin, SynchronousTestCase):
    """Item 7: the IP blacklist applies at SMTP connect."""

    def test_blacklisted_refused_before_banner(self):
        """A blacklisted client gets 554 5.7.1 instead of a banner and is closed; it is counted."""
        h = self.harness()
        h.server.blacklist = Listed(UNTRUSTED)
        client = h.connect(UNTRUSTED, greet=False)
        self.assertEqual(client.take(), b"554 5.7.1 mx.test Access denied: your address is blacklisted\r\n")
        self.assertTrue(client.closed)
        self.assertEqual(h.server.rejections["blacklisted"], 1)

    def test_blacklist_applies_to_trusted_networks(self):
        """A listed address is refused even inside trustedNetworks."""
        h = self.harness()
        h.server.blacklist = Listed("127.0.0.1")
        self.assertTrue(h.connect("127.0.0.1", greet=False).take().startswith(b"554 5.7.1 "))

    def test_others_greeted(self):
        """An address that is not listed is greeted as usual."""
        h = self.harness()
        h.server.blacklist = Listed(UNTRUSTED)
        self.assertEqual(h.connect("127.0.0.1", greet=False).take(), b"220 mx.test ESMTP gomail\r\n")

    def test_broken_blacklist_lets_clients_in(self):
        """A blacklist that cannot be read does not stop intake: the client is greeted."""
        h = self.harness()
        h.server.blacklist = Listed(broken=True)
        self.assertEqual(h.connect("127.0.0.1", greet=False).take(), b"220 mx.test ESMTP gomail\r\n")

    def test_refusals_logged_at_most_five_a_second(self):
        """Refusals are logged at most 5 a second; the next line says how many were left out."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        h = self.harness()
        h.server.blacklist = Listed(UNTRUSTED)
        for _ in range(20):
            h.connect(UNTRUSTED, greet=False).lose()
        h.clock.advance(1)
        h.connect(UNTRUSTED, greet=False)
        lines = [e for e in events if e.get("log_format", "").startswith("refused blacklisted client")]
        self.assertEqual(len(lines), 6)
        self.assertEqual(lines[-1]["more"], " (15 more refused meanwhile)")
        self.assertEqual(h.server.rejections["blacklisted"], 21)


class UnreadRepliesTests(HarnessMixin, SynchronousTestCase):
    """Item 1 on StringTransport: replies a client does not read stop its input being read."""

    def test_paused_session_stops_processing(self):
        """While the transport says its buffer is full, buffered commands wait and reading is paused."""
        h = self.harness()
        client = h.connect()
        self.assertIs(client.transport.producer, client.proto.flow)
        client.proto.flow.pauseProducing()  # what a TCP transport does over its 64 KiB bound
        self.assertEqual(client.transport.producerState, "paused")
        self.assertEqual(client.send(b"EHLO a\r\nMAIL FROM:<a@example.org>\r\n"), b"")
        client.proto.flow.resumeProducing()
        got = replies(client.take())
        self.assertEqual(got[-1], b"250 2.1.0 Sender ok")
        self.assertEqual(client.transport.producerState, "producing")

    def test_stuck_past_idle_timeout_aborted(self):
        """A client over the bound for idleTimeout seconds is aborted (its unsent replies dropped)."""
        h = self.harness(idleTimeout=30)
        client = h.connect()
        client.proto.flow.pauseProducing()
        h.clock.advance(30)
        self.assertTrue(client.transport.disconnected)  # StringTransport: aborted
        self.assertEqual(h.server.rejections["output_unread"], 1)

    def test_close_of_non_reading_client_aborts(self):
        """A session closed while its client does not read is aborted, not left waiting to flush."""
        h = self.harness()
        client = h.connect()
        client.proto.flow.pauseProducing()
        client.proto.close_connection()
        self.assertTrue(client.transport.disconnected)  # StringTransport: aborted
        self.assertIsNone(client.transport.producer)


class UnreadRepliesLoopbackTests(HarnessMixin, TestCase):
    """Item 1 on a real loopback connection: the attacker pipelines and never reads."""

    def listen(self, **settings):
        harness = self.harness(**settings)
        port = reactor.listenTCP(0, harness.server.factory(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return harness, port.getHost().port

    def connect(self, port, client):
        connector = reactor.connectTCP("127.0.0.1", port, ClientFactory.forProtocol(lambda: client))
        self.addCleanup(connector.disconnect)

    async def session(self, harness):
        while not harness.server.sessions:
            await _turn()
        return next(iter(harness.server.sessions))

    async def test_pipelined_ehlo_never_read_stays_bounded(self):
        """
        40,000 pipelined EHLOs (about 7 MB of replies) and nothing read: the
        server stops reading once its buffer is over the bound, holds at most
        the bound and one reply, and aborts the connection after the idle timeout.
        """
        harness, port = self.listen(idleTimeout=60)
        client = Sink(b"EHLO client.test\r\n" * 40000)
        self.connect(port, client)
        session = await self.session(harness)
        while not session.flow.paused:
            await _turn()
        bound = _socket_transport(session.transport).bufferSize
        most = 0
        for _ in range(20):  # the server gets every chance to read more
            await _turn()
            most = max(most, buffered(session.transport))
        self.assertTrue(session.flow.paused)
        self.assertLessEqual(most, bound + 1024)
        self.assertLessEqual(len(session._input), 64 * 1024 + 65536)  # held input is bounded too
        harness.clock.advance(60)
        await client.lost
        self.assertEqual(harness.server.sessions, set())

    async def test_noop_flood_never_read_ends_at_junk_limit(self):
        """The tester's NOOP flood: 100 are answered, then the session ends; nothing grows."""
        harness, port = self.listen()
        client = Sink(b"NOOP\r\n" * 100000)
        self.connect(port, client)
        await client.lost
        self.assertEqual(harness.server.sessions, set())


def _turn() -> Deferred:
    """One turn of the reactor."""
    d: Deferred = Deferred()
    reactor.callLater(0, d.callback, None)
    return d
