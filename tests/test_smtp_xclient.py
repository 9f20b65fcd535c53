"""
XCLIENT (issue 14 item 9, L{gomail.smtp.xclient}): nginx names its client and
the user it logged in; requireAuth, sender ownership, rate limits, relay
rules, the blacklist and the logs then apply to that client. Sessions are
driven as nginx drives them, from its loopback address, one command at a time.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.configschema import RateLimits
from gomail.smtp import xclient
from tests.smtphelpers import replies
from tests.test_smtp_auth import AuthHarnessMixin, plain

NGINX = "127.0.0.1"
CLIENT = "203.0.113.7"
MESSAGE = b"Subject: via nginx\r\n\r\nhello\r\n"
#: What nginx 1.22 sends after a login at its SMTP listener (no resolver: NAME unknown).
NGINX_XCLIENT = b"XCLIENT ADDR=203.0.113.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]\r\n"
EHLO_KEYWORD = b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"


class Listed:
    """An IP blacklist holding the addresses given."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    def check(self, ip: str) -> Deferred:
        return succeed(ip in self.addresses)


class XClientSessionTests(AuthHarnessMixin, TestCase):
    """What nginx's mail proxy sends, as it sends it, and what its clients may try through it."""

    def auth_harness(self, **kwargs):
        harness = super().auth_harness(xclientHosts=("127.0.0.0/8", "::1/128"), **kwargs)
        harness.server.xclient.users = self.users
        return harness

    def nginx(self, harness, host=NGINX):
        """nginx's backend connection, after its own EHLO (which must offer XCLIENT)."""
        client = harness.connect(host)
        self.assertIn(EHLO_KEYWORD, client.send(b"EHLO mail.example.com\r\n"))
        return client

    def proxied(self, harness, line=NGINX_XCLIENT, helo=b"EHLO laptop.example.org\r\n"):
        """A session after nginx's XCLIENT and the client's EHLO, as nginx sends them."""
        client = self.nginx(harness)
        self.assertEqual(client.send(line), b"220 mx.test ESMTP gomail\r\n")
        self.assertTrue(client.send(helo).startswith(b"250"))
        return client

    def test_login_carried_through_require_auth(self):
        """With requireAuth, nginx's XCLIENT LOGIN lets MAIL through; envelope and Received: name user and client."""
        harness = self.auth_harness(require_auth=True)
        client = self.nginx(harness)
        self.assertEqual(client.send(NGINX_XCLIENT), b"220 mx.test ESMTP gomail\r\n")
        self.assertTrue(client.send(b"EHLO laptop.example.org\r\n").startswith(
            b"250-mx.test Hello laptop.example.org [203.0.113.7]\r\n"))
        self.assertEqual(client.send(b"MAIL FROM:<alice@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")
        self.assertEqual(client.send(b"RCPT TO:<carol@elsewhere.test>\r\n"), b"250 2.1.5 Recipient ok\r\n")
        client.send(b"DATA\r\n")
        queue_id = replies(client.send(MESSAGE + b".\r\n"))[0].split()[-1].decode()
        envelope = harness.envelope(queue_id)
        self.assertEqual((envelope.auth_user, envelope.client_address), ("alice@example.org", CLIENT))
        self.assertIn(b"Received: from laptop.example.org ([203.0.113.7])\r\n"
                      b"\tby mx.test (gomail) with ESMTPA id " + queue_id.encode(), harness.content(queue_id))

    def test_sender_ownership_applies(self):
        """The XCLIENT user may send only as its own addresses: 553 5.7.1 otherwise."""
        client = self.proxied(self.auth_harness(require_auth=True))
        self.assertEqual(client.send(b"MAIL FROM:<ceo@example.org>\r\n"),
                         b"553 5.7.1 <ceo@example.org>: Sender address rejected: not owned by user\r\n")

    def test_per_user_rate_limit(self):
        """Messages sent through XCLIENT count against the user, whatever client address nginx names."""
        harness = self.auth_harness(require_auth=True, limits=RateLimits(enabled=True, maxPerHour=1))
        first = self.proxied(harness)
        first.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<carol@elsewhere.test>\r\nDATA\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued", first.send(MESSAGE + b".\r\n"))
        other = self.proxied(harness, b"XCLIENT ADDR=198.51.100.4 LOGIN=alice@example.org\r\n")
        self.assertEqual(other.send(b"MAIL FROM:<alice@example.org>\r\n"),
                         b"451 4.7.1 Rate limit exceeded, try again later\r\n")

    def test_no_login_is_not_authenticated(self):
        """XCLIENT without LOGIN: requireAuth answers 530, as for the client itself."""
        client = self.proxied(self.auth_harness(require_auth=True), b"XCLIENT ADDR=203.0.113.7 NAME=[UNAVAILABLE]\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")

    def test_earlier_auth_dropped(self):
        """The session starts over: an AUTH the proxy did before XCLIENT is gone unless LOGIN names a user."""
        harness = self.auth_harness(require_auth=True, allowPlaintextAuthLoopback=True)
        client = self.nginx(harness)
        self.assertEqual(client.send(b"AUTH PLAIN " + plain("bob", "battery staple") + b"\r\n"),
                         b"235 2.7.0 Authentication successful\r\n")
        client.send(b"XCLIENT ADDR=203.0.113.7\r\n")
        client.send(b"EHLO laptop.example.org\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")

    def test_client_address_decides_relaying(self):
        """Without LOGIN the real client (not nginx's loopback address) is judged: no relaying for it."""
        client = self.proxied(self.auth_harness(), b"XCLIENT ADDR=203.0.113.7 NAME=[UNAVAILABLE]\r\n")
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"RCPT TO:<victim@elsewhere.test>\r\n"),
                         b"554 5.7.1 <victim@elsewhere.test>: Relay access denied\r\n")

    def test_proxied_client_cannot_send_xclient(self):
        """
        nginx relays whatever its logged-in client sends: that client's own
        XCLIENT (to become another user, or a trusted address) is not offered
        and gets 550 5.7.0, and the session stays as nginx named it.
        """
        harness = self.auth_harness(require_auth=True)
        client = self.nginx(harness)
        client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=bob\r\n")
        self.assertNotIn(b"XCLIENT", client.send(b"EHLO laptop.example.org\r\n"))
        for attempt in (b"XCLIENT LOGIN=alice@example.org\r\n", b"XCLIENT ADDR=127.0.0.1\r\n"):
            self.assertEqual(client.send(attempt), b"550 5.7.0 Error: insufficient authorization\r\n")
        self.assertEqual((client.proto.client_host, client.proto.account.name), (CLIENT, "bob"))
        self.assertEqual(client.send(b"MAIL FROM:<alice@example.org>\r\n"),
                         b"553 5.7.1 <alice@example.org>: Sender address rejected: not owned by user\r\n")
        self.assertEqual(harness.server.rejections["xclient_denied"], 2)

    def test_attributes_in_several_commands(self):
        """Before ADDR names an outside client the proxy may go on (Postfix: HELO and PROTO first, then ADDR)."""
        harness = self.auth_harness(require_auth=True)
        client = self.nginx(harness)
        self.assertEqual(client.send(b"XCLIENT HELO=laptop.example.org PROTO=ESMTP\r\n"),
                         b"220 mx.test ESMTP gomail\r\n")
        self.assertIn(EHLO_KEYWORD, client.send(b"EHLO laptop.example.org\r\n"))
        self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=bob\r\n"), b"220 mx.test ESMTP gomail\r\n")

    def test_helo_and_proto_kept(self):
        """HELO and PROTO given in XCLIENT stand for the client's greeting: MAIL needs no new EHLO."""
        harness = self.auth_harness(require_auth=True)
        client = self.nginx(harness)
        client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=bob HELO=laptop.example.org PROTO=ESMTP\r\n")
        client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<carol@elsewhere.test>\r\nDATA\r\n")
        queue_id = replies(client.send(MESSAGE + b".\r\n"))[0].split()[-1].decode()
        self.assertIn(b"Received: from laptop.example.org ([203.0.113.7])\r\n\tby mx.test (gomail) with ESMTPA",
                      harness.content(queue_id))

    def test_greeting_reset_without_helo(self):
        """Without HELO in XCLIENT the greeting starts over: MAIL before the client's EHLO is 503 5.5.1."""
        client = self.nginx(self.auth_harness(require_auth=True))
        client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=bob\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<bob@example.org>\r\n"), b"503 5.5.1 Error: send HELO/EHLO first\r\n")

    def test_blacklisted_client_refused(self):
        """A blacklisted client behind nginx is refused at XCLIENT: 554 5.7.1 and close."""
        harness = self.auth_harness()
        harness.server.blacklist = Listed(CLIENT)
        client = self.nginx(harness)
        self.assertEqual(client.send(NGINX_XCLIENT), b"554 5.7.1 mx.test Access denied: your address is blacklisted\r\n")
        self.assertTrue(client.closed)

    def test_unknown_or_disabled_login_refused(self):
        """A LOGIN that is no enabled user: 550 5.7.0, logged, and the session stays nginx's."""
        harness = self.auth_harness(require_auth=True)
        self.users.add("off@example.org", "pw", enabled=False)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client = self.nginx(harness)
        for user in (b"nobody@example.org", b"off@example.org"):
            self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=" + user + b"\r\n"),
                             b"550 5.7.0 Error: XCLIENT LOGIN names no enabled user\r\n")
        self.assertEqual((client.proto.client_host, client.proto.account), (NGINX, None))
        logged = [e["user"] for e in events if e.get("log_namespace") == "gomail.smtp.xclient" and "user" in e]
        self.assertEqual(logged, ["nobody@example.org", "off@example.org"])

    def test_user_store_down(self):
        """A user store that cannot answer: 421 4.3.0 and close, never a login."""
        harness = self.auth_harness(require_auth=True)
        self.users.broken = True
        client = self.nginx(harness)
        self.assertEqual(client.send(NGINX_XCLIENT),
                         b"421 4.3.0 mx.test Error: user lookup failed, try again later\r\n")
        self.assertTrue(client.closed)
        self.assertIsNone(client.proto.account)
        self.flushLoggedErrors()

    def test_refused_from_other_peers(self):
        """A peer outside smtp.xclientHosts is not offered XCLIENT and gets 550 5.7.0 for it."""
        harness = self.auth_harness(greetingDelay=0)
        client = harness.connect(CLIENT)
        self.assertNotIn(b"XCLIENT", client.send(b"EHLO spoofer.test\r\n"))
        self.assertEqual(client.send(b"XCLIENT ADDR=127.0.0.1 LOGIN=alice@example.org\r\n"),
                         b"550 5.7.0 Error: insufficient authorization\r\n")
        self.assertEqual((client.proto.client_host, client.proto.account), (CLIENT, None))

    def test_empty_xclient_hosts(self):
        """With smtp.xclientHosts empty nobody, not even loopback, may send XCLIENT."""
        harness = super().auth_harness()
        client = harness.connect(NGINX)
        self.assertNotIn(b"XCLIENT", client.send(b"EHLO mail.example.com\r\n"))
        self.assertEqual(client.send(NGINX_XCLIENT), b"550 5.7.0 Error: insufficient authorization\r\n")

    def test_nobody_by_default(self):
        """Out of the box smtp.xclientHosts is empty (Postfix's default): loopback may not send XCLIENT."""
        from gomail.configschema import SMTPSettings
        self.assertEqual(SMTPSettings().xclientHosts, ())

    def test_bad_syntax(self):
        """Postfix's 501 5.5.4 replies for malformed commands; nothing changes."""
        client = self.nginx(self.auth_harness(maxErrors=100))
        cases = {
            b"": b"Syntax: XCLIENT attribute=value...",
            b"FOO=bar": b"Bad XCLIENT attribute name: FOO",
            b"ADDR": b"Error: attribute=value expected",
            b"LOGIN=": b"Error: attribute=value expected",
            b"NAME=" + b"a" * 256: b"Error: attribute value too long",
            b"ADDR=999.1.1.1": b"Bad ADDR syntax: 999.1.1.1",
            b"ADDR=[UNAVAILABLE]": b"Bad ADDR syntax: the client address is required",
            b"PORT=70000": b"Bad PORT syntax: 70000",
            b"PROTO=LMTP": b"Bad PROTO syntax: LMTP",
            b"NAME=a+zz": b"Bad NAME syntax: a+zz",
            b"HELO=a+0D+0Ab": b"Bad HELO syntax: a??b",
        }
        for arguments, text in cases.items():
            self.assertEqual(client.send(b"XCLIENT " + arguments + b"\r\n"), b"501 5.5.4 " + text + b"\r\n")
        self.assertEqual(client.proto.client_host, NGINX)

    def test_not_in_a_transaction(self):
        """XCLIENT between MAIL and the end of the message: 503 5.5.1."""
        client = self.nginx(self.auth_harness())
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7\r\n"),
                         b"503 5.5.1 Error: MAIL transaction in progress\r\n")

    def test_connections_counted_against_the_named_client(self):
        """
        maxConnectionsPerIP limits nginx's clients, not nginx: sessions naming
        different clients all go through; one client over the limit gets
        421 4.7.0 for its XCLIENT and is closed; a closed session frees its slot.
        """
        harness = self.auth_harness(maxConnectionsPerIP=2)
        first = self.proxied(harness)
        self.proxied(harness)
        for n in range(3):
            self.proxied(harness, b"XCLIENT ADDR=198.51.100.%d LOGIN=bob\r\n" % n)
        refused = self.nginx(harness)
        self.assertEqual(refused.send(NGINX_XCLIENT),
                         b"421 4.7.0 mx.test Too many connections from your address, try again later\r\n")
        self.assertTrue(refused.closed)
        refused.lose()
        first.lose()
        self.proxied(harness)
        self.assertEqual(harness.server.rejections["too_many_connections_per_ip"], 1)

    def test_other_peers_still_counted_at_connect(self):
        """A peer not in xclientHosts is counted at connect as before: its third connection gets 421 4.7.0."""
        harness = self.auth_harness(maxConnectionsPerIP=2)
        harness.connect(CLIENT)
        harness.connect(CLIENT)
        self.assertTrue(harness.connect(CLIENT, greet=False).take().startswith(b"421 4.7.0 "))

    def test_ipv6_client(self):
        """ADDR=IPV6:... names an IPv6 client (nginx's form), from an IPv6 proxy too."""
        harness = self.auth_harness()
        client = self.nginx(harness, host="::1")
        client.send(b"XCLIENT ADDR=IPV6:2001:db8::7 LOGIN=alice@example.org\r\n")
        self.assertEqual(client.proto.client_host, "2001:db8::7")
        self.assertEqual(client.proto.peer_host, "::1")


class ParseTests(SynchronousTestCase):
    """The XCLIENT parser on its own."""

    def test_nginx_line(self):
        """nginx's line: ADDR, LOGIN and NAME=[UNAVAILABLE] (given, but unknown)."""
        self.assertEqual(xclient.parse(b"ADDR=192.0.2.9 LOGIN=bob NAME=[UNAVAILABLE]"),
                         xclient.XClient(given=frozenset({"ADDR", "LOGIN", "NAME"}), addr="192.0.2.9", login="bob"))

    def test_every_attribute(self):
        """All eight attributes, names in any case, the last of a repeated one counting."""
        got = xclient.parse(b"name=laptop.example.org ADDR=192.0.2.1 Addr=IPv6:2001:DB8::1 PORT=4711 PROTO=esmtp "
                            b"HELO=[192.0.2.1] LOGIN=bob DESTADDR=192.0.2.25 DESTPORT=587")
        self.assertEqual(got, xclient.XClient(given=frozenset(xclient.ATTRIBUTES), name="laptop.example.org",
                                              addr="2001:db8::1", port=4711, proto="ESMTP", helo="[192.0.2.1]",
                                              login="bob", destaddr="192.0.2.25", destport=587))

    def test_unknown_values(self):
        """[UNAVAILABLE] and [TEMPUNAVAIL], in any case, mean unknown (ADDR excepted: see test_bad_syntax)."""
        got = xclient.parse(b"NAME=[tempunavail] LOGIN=[Unavailable] PORT=[UNAVAILABLE] HELO=[UNAVAILABLE]")
        self.assertEqual((got.name, got.login, got.port, got.helo), (None, None, None, None))
        self.assertEqual(got.given, frozenset({"NAME", "LOGIN", "PORT", "HELO"}))

    def test_xtext(self):
        """Values are xtext: +XX escapes decode (UTF-8 in LOGIN); a + starting none is an error."""
        self.assertEqual(xclient.parse(b"LOGIN=a+2Bb+3Dc").login, "a+b=c")
        self.assertEqual(xclient.parse(b"LOGIN=j+C3+BCrgen@example.org").login, "j\u00fcrgen@example.org")
        for bad in (b"LOGIN=a+b", b"LOGIN=a+", b"LOGIN=+FF"):
            self.assertRaises(xclient.XClientError, xclient.parse, bad)

    def test_control_characters_refused(self):
        """An escaped control character or space never reaches a log line or the Received: header."""
        for value in (b"HELO=a+0Db", b"NAME=a+20b", b"LOGIN=+00", b"LOGIN=a+20b", b"LOGIN=+C2+85"):
            self.assertRaises(xclient.XClientError, xclient.parse, value)

    def test_addresses(self):
        """Addresses are IP literals: IPv4-mapped ones unwrapped, names and zones refused."""
        self.assertEqual(xclient.parse(b"ADDR=IPV6:::ffff:192.0.2.1").addr, "192.0.2.1")
        for bad in (b"ADDR=mail.example.org", b"ADDR=[192.0.2.1]", b"ADDR=IPV6:fe80::1%25eth0", b"DESTADDR=1.2.3"):
            self.assertRaises(xclient.XClientError, xclient.parse, bad)

    @given(st.binary(max_size=600))
    def test_fuzz_only_xclient_errors(self, data):
        """Any bytes either parse or fail with XClientError, never with anything else."""
        try:
            xclient.parse(data)
        except xclient.XClientError:
            pass

    @given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cc", "Zs")),
                   min_size=1, max_size=20))
    def test_fuzz_login_round_trip(self, login):
        """A login xtext-encoded as nginx does it comes back as it was."""
        encoded = b"".join(bytes([b]) if 0x21 <= b <= 0x7E and b not in b"+=" else b"+%02X" % b
                           for b in login.encode("utf-8"))
        if login.upper() in xclient.UNKNOWN:
            return
        self.assertEqual(xclient.parse(b"LOGIN=" + encoded).login, login)
