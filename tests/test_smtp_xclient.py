"""
XCLIENT (issue 14 item 9): nginx names its client and the user it logged in,
and requireAuth, sender ownership, relay rules, the blacklist and the logs
then apply to that client. Sessions are driven as nginx drives them.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.smtp import xclient
from tests.smtphelpers import replies
from tests.test_smtp_auth import AuthHarnessMixin

NGINX = "127.0.0.1"
CLIENT = "203.0.113.7"
MESSAGE = b"Subject: via nginx\r\n\r\nhello\r\n"


class XClientSessionTests(AuthHarnessMixin, TestCase):
    """What nginx's mail proxy sends, as it sends it, one command at a time."""

    def auth_harness(self, **kwargs):
        return super().auth_harness(xclientHosts=("127.0.0.0/8", "::1/128"), **kwargs)

    def proxied(self, harness, attributes=b"ADDR=203.0.113.7 LOGIN=alice@example.org NAME=[UNAVAILABLE]"):
        harness.server.users = self.users
        client = harness.connect(NGINX)
        self.assertIn(b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n",
                      client.send(b"EHLO mail.example.com\r\n"))
        self.assertEqual(client.send(b"XCLIENT " + attributes + b"\r\n"), b"220 mx.test ESMTP gomail\r\n")
        self.assertTrue(client.send(b"EHLO laptop.example.org\r\n").startswith(b"250-mx.test Hello laptop"))
        return client

    def test_login_carried_through_require_auth(self):
        """With requireAuth, nginx's XCLIENT LOGIN makes MAIL accepted, and the envelope names user and client."""
        harness = self.auth_harness(require_auth=True)
        client = self.proxied(harness)
        self.assertEqual(client.send(b"MAIL FROM:<alice@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")
        self.assertEqual(client.send(b"RCPT TO:<carol@elsewhere.test>\r\n"), b"250 2.1.5 Recipient ok\r\n")
        client.send(b"DATA\r\n")
        queue_id = replies(client.send(MESSAGE + b".\r\n"))[0].split()[-1].decode()
        envelope = harness.envelope(queue_id)
        self.assertEqual((envelope.auth_user, envelope.client_address), ("alice@example.org", CLIENT))
        self.assertIn(b"Received: from laptop.example.org ([203.0.113.7])", harness.content(queue_id))

    def test_sender_ownership_applies(self):
        """The XCLIENT user may send only as its own addresses: 553 5.7.1 otherwise."""
        client = self.proxied(self.auth_harness(require_auth=True))
        self.assertEqual(client.send(b"MAIL FROM:<ceo@example.org>\r\n"),
                         b"553 5.7.1 <ceo@example.org>: Sender address rejected: not owned by user\r\n")

    def test_no_login_is_not_authenticated(self):
        """XCLIENT without LOGIN: requireAuth answers 530, as for the client itself."""
        client = self.proxied(self.auth_harness(require_auth=True), b"ADDR=203.0.113.7 NAME=[UNAVAILABLE]")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"530 5.7.0 Authentication required\r\n")

    def test_client_address_decides_relaying(self):
        """Without LOGIN the real client (not nginx's loopback address) is judged: no relaying for it."""
        client = self.proxied(self.auth_harness(), b"ADDR=203.0.113.7 NAME=[UNAVAILABLE]")
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"RCPT TO:<victim@elsewhere.test>\r\n"),
                         b"554 5.7.1 <victim@elsewhere.test>: Relay access denied\r\n")

    def test_blacklisted_client_refused(self):
        """A blacklisted client behind nginx is refused at XCLIENT: 554 5.7.1 and close."""
        harness = self.auth_harness()
        harness.server.users = self.users
        harness.server.blacklist = type("Listed", (), {"check": staticmethod(lambda ip: succeed(ip == CLIENT))})()
        client = harness.connect(NGINX)
        client.send(b"EHLO mail.example.com\r\n")
        self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7 NAME=[UNAVAILABLE]\r\n"),
                         b"554 5.7.1 mx.test Access denied: your address is blacklisted\r\n")
        self.assertTrue(client.closed)

    def test_unknown_login_refused(self):
        """An XCLIENT LOGIN that is no enabled user: 550 5.7.1, and the session stays nginx's."""
        harness = self.auth_harness(require_auth=True)
        harness.server.users = self.users
        client = harness.connect(NGINX)
        client.send(b"EHLO mail.example.com\r\n")
        self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7 LOGIN=nobody@example.org\r\n"),
                         b"550 5.7.1 Error: XCLIENT LOGIN user unknown or disabled\r\n")
        self.assertEqual(client.proto.client_host, NGINX)
        self.assertIsNone(client.proto.account)

    def test_refused_from_other_peers(self):
        """A peer outside smtp.xclientHosts is not offered XCLIENT and gets 550 5.7.0 for it."""
        harness = self.auth_harness(greetingDelay=0)
        client = harness.connect(CLIENT)
        self.assertNotIn(b"XCLIENT", client.send(b"EHLO spoofer.test\r\n"))
        self.assertEqual(client.send(b"XCLIENT ADDR=127.0.0.1 LOGIN=alice@example.org\r\n"),
                         b"550 5.7.0 Error: insufficient authorization\r\n")
        self.assertEqual(client.proto.client_host, CLIENT)

    def test_bad_syntax(self):
        """Unknown attributes and bad values: 501 5.5.4, nothing changed."""
        harness = self.auth_harness()
        harness.server.users = self.users
        client = harness.connect(NGINX)
        client.send(b"EHLO mail.example.com\r\n")
        for arguments in (b"", b"FOO=bar", b"ADDR=999.1.1.1", b"PORT=70000", b"NAME=a+zz", b"ADDR"):
            self.assertTrue(client.send(b"XCLIENT " + arguments + b"\r\n").startswith(b"501 5.5.4 "), arguments)
        self.assertEqual(client.proto.client_host, NGINX)

    def test_not_in_a_transaction(self):
        """XCLIENT between MAIL and the end of the message: 503 5.5.1."""
        harness = self.auth_harness()
        harness.server.users = self.users
        client = harness.connect(NGINX)
        client.send(b"EHLO mail.example.com\r\n")
        client.send(b"MAIL FROM:<a@example.org>\r\n")
        self.assertEqual(client.send(b"XCLIENT ADDR=203.0.113.7\r\n"),
                         b"503 5.5.1 Error: MAIL transaction in progress\r\n")

    def test_connection_counted_against_the_proxy(self):
        """Per-IP connection counts stay with the connection's own peer, so closing frees nginx's slot."""
        harness = self.auth_harness()
        client = self.proxied(harness)
        self.assertEqual(dict(harness.server._per_ip), {NGINX: 1})
        client.lose()
        self.assertEqual(dict(harness.server._per_ip), {})

    def test_ipv6_address(self):
        """ADDR=IPV6:... names an IPv6 client."""
        client = self.proxied(self.auth_harness(), b"ADDR=IPV6:2001:db8::7 LOGIN=alice@example.org")
        self.assertEqual(client.proto.client_host, "2001:db8::7")


class ParseTests(SynchronousTestCase):
    """The XCLIENT parser on its own."""

    def test_nginx_line(self):
        """nginx's line: ADDR, LOGIN and NAME=[UNAVAILABLE] (unknown)."""
        self.assertEqual(xclient.parse(b"ADDR=192.0.2.9 LOGIN=bob NAME=[UNAVAILABLE]"),
                         xclient.XClient(addr="192.0.2.9", login="bob"))

    def test_xtext(self):
        """Values are xtext: +XX escapes decode; a stray + is an error."""
        self.assertEqual(xclient.parse(b"LOGIN=a+2Bb+3Dc").login, "a+b=c")
        self.assertRaises(xclient.XClientError, xclient.parse, b"LOGIN=a+b")

    def test_control_characters_refused(self):
        """An escaped control character or space never reaches a log line or header."""
        for value in (b"HELO=a+0Db", b"NAME=a+20b", b"LOGIN=+00"):
            self.assertRaises(xclient.XClientError, xclient.parse, value)

    @given(st.binary(max_size=300))
    def test_fuzz_only_xclient_errors(self, data):
        """Any bytes either parse or fail with XClientError, never anything else."""
        try:
            xclient.parse(data)
        except xclient.XClientError:
            pass
