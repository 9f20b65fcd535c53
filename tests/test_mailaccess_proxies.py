"""
IMAP and POP3 behind nginx (L{gomail.mailaccess.proxies}): logins from a
peer in C{trustedProxies} (without TLS, with auth_http's login tickets), and
that every other peer is served exactly as before; auth_http's side (the
ticket in C{Auth-Pass}, gomail's own listeners as default backends). Bytes
in, bytes out, on StringTransports and a task.Clock.
"""

from __future__ import annotations

import dataclasses

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.auth.backends import BackendRouter
from gomail.auth.tickets import LoginTickets, looks_like_ticket
from gomail.configload import load_config
from gomail.configschema import Backend, NginxAuthSettings
from gomail.mailaccess.proxies import TrustedProxies
from gomail.netaddr import parse_ip
from gomail.state.memory import MemoryStateStore
from gomail.web.authhttp import AuthHTTPAnswerer
from gomail.web.service import default_backends, tcp_address
from tests.authtesting import SECRET, MemoryUsers, authenticator, portal_for
from tests.imaptesting import IMAPHarness
from tests.pop3testing import BOB, BOB_PASSWORD, POP3Harness

NGINX = "127.0.0.1"
CLIENT = "192.0.2.7"
PROXIES = ("127.0.0.1/32",)


class TrustedProxiesTests(SynchronousTestCase):
    """Which peers are trusted."""

    def test_trusts(self):
        """Addresses inside the networks are trusted; others, other IP versions and non-IP peers are not."""
        proxies = TrustedProxies(("127.0.0.1/32", "10.0.0.0/8", "2001:db8::/32"))
        for address in ("127.0.0.1", "10.1.2.3", "2001:db8::5", "::ffff:127.0.0.1"):
            self.assertTrue(proxies.trusts(parse_ip(address)), address)
        for address in ("127.0.0.2", "192.0.2.7", "::1"):
            self.assertFalse(proxies.trusts(parse_ip(address)), address)
        self.assertFalse(proxies.trusts(None))

    def test_none_by_default(self):
        """With the default (empty) trustedProxies not even loopback is trusted."""
        self.assertFalse(TrustedProxies(()).trusts(parse_ip("127.0.0.1")))


class POP3ProxyTests(SynchronousTestCase):
    """POP3 logins from nginx (pop3.trustedProxies) and from everyone else."""

    def harness(self, **settings) -> POP3Harness:
        return POP3Harness(self.mktemp(), trustedProxies=PROXIES, **settings)

    def test_ticket_from_trusted_peer(self):
        """A ticket from a trusted peer logs in without STLS; the audit entry says "ticket", from nginx."""
        harness = self.harness()
        client = harness.connect(NGINX)
        answer = client.login(BOB, harness.tickets.issue(BOB, "pop3"), stls=False)
        self.assertTrue(answer.startswith(b"+OK Logged in"), answer)
        entry = harness.audit.entries[-1]
        self.assertEqual((entry.user, entry.client_ip, entry.result, entry.reason),
                         (BOB, NGINX, "success", "ticket"))

    def test_ticket_used_twice(self):
        """A ticket works once, even from nginx."""
        harness = self.harness()
        ticket = harness.tickets.issue(BOB, "pop3")
        harness.connect(NGINX).login(BOB, ticket, stls=False)
        answer = harness.connect(NGINX).login(BOB, ticket, stls=False)
        self.assertEqual(answer, b"-ERR [AUTH] Authentication failed\r\n")
        self.assertEqual(harness.audit.entries[-1].reason, "ticket-reused")

    def test_ticket_for_imap_refused(self):
        """A ticket issued for IMAP does not log in over POP3."""
        harness = self.harness()
        answer = harness.connect(NGINX).login(BOB, harness.tickets.issue(BOB, "imap"), stls=False)
        self.assertEqual(answer, b"-ERR [AUTH] Authentication failed\r\n")

    def test_ticket_from_other_peer_is_a_wrong_password(self):
        """From an untrusted peer (inside TLS) a valid ticket is only a wrong password, and stays unspent."""
        harness = self.harness()
        ticket = harness.tickets.issue(BOB, "pop3")
        answer = harness.connect(CLIENT).login(BOB, ticket)
        self.assertEqual(answer, b"-ERR [AUTH] Authentication failed\r\n")
        self.assertEqual(harness.audit.entries[-1].reason, "bad-password")
        answer = harness.connect(NGINX).login(BOB, ticket, stls=False)
        self.assertTrue(answer.startswith(b"+OK Logged in"), answer)

    def test_password_from_trusted_peer(self):
        """
        Without TLS a trusted proxy may hand only tickets: a clear-text password
        from its network is refused before any check (trustedProxies is no
        plaintext licence); with STLS it goes through the password chain.
        """
        harness = self.harness()
        answer = harness.connect(NGINX).login(BOB, BOB_PASSWORD, stls=False)
        self.assertEqual(answer, b"-ERR Plaintext login is not allowed: issue STLS first\r\n")
        self.assertEqual(harness.audit.entries, [])
        answer = harness.connect(NGINX).login(BOB, BOB_PASSWORD)
        self.assertTrue(answer.startswith(b"+OK Logged in"), answer)
        self.assertEqual(harness.audit.entries[-1].reason, "password")

    def test_untrusted_peer_needs_tls(self):
        """Other peers (loopback ones too) still get no USER before STLS, and no ticket login without it."""
        harness = self.harness()
        for host in (CLIENT, "127.0.0.2"):
            client = harness.connect(host)
            self.assertNotIn(b"USER", client.send(b"CAPA\r\n"))
            self.assertEqual(client.send(b"USER " + BOB.encode() + b"\r\n"),
                             b"-ERR Plaintext login is not allowed: issue STLS first\r\n")
        self.assertIn(b"USER", harness.connect(NGINX).send(b"CAPA\r\n"))

    def test_default_trusts_no_one(self):
        """Without trustedProxies, nginx's loopback address is an ordinary client: STLS first."""
        harness = POP3Harness(self.mktemp())
        answer = harness.connect(NGINX).send(b"USER " + BOB.encode() + b"\r\n")
        self.assertEqual(answer, b"-ERR Plaintext login is not allowed: issue STLS first\r\n")

    def test_proxy_not_held_to_per_ip_cap(self):
        """nginx's sessions (each for another client) are not held to maxConnectionsPerIP; others still are."""
        harness = self.harness(maxConnectionsPerIP=1)
        first, second = harness.connect(NGINX), harness.connect(NGINX)
        self.assertFalse(first.closed or second.closed)
        harness.connect(CLIENT)
        refused = harness.connect(CLIENT, greet=False)
        self.assertIn(b"Too many connections from your address", refused.take())


class IMAPProxyTests(SynchronousTestCase):
    """IMAP logins from nginx (imap.trustedProxies) and from everyone else."""

    def harness(self, **settings) -> IMAPHarness:
        return IMAPHarness(self.mktemp(), trustedProxies=PROXIES, **settings)

    def test_ticket_from_trusted_peer(self):
        """No LOGINDISABLED for nginx; its ticket logs in without STARTTLS, audited as "ticket"."""
        harness = self.harness()
        client = harness.connect(NGINX)
        self.assertNotIn(b"LOGINDISABLED", client.send(b"c1 CAPABILITY\r\n"))
        answer = client.login(BOB, harness.tickets.issue(BOB, "imap"), tls=False)
        self.assertIn(b"l1 OK", answer)
        entry = harness.audit.entries[-1]
        self.assertEqual((entry.client_ip, entry.result, entry.reason), (NGINX, "success", "ticket"))

    def test_ticket_used_twice(self):
        """The same ticket a second time is refused."""
        harness = self.harness()
        ticket = harness.tickets.issue(BOB, "imap")
        self.assertIn(b"l1 OK", harness.connect(NGINX).login(BOB, ticket, tls=False))
        self.assertIn(b"l1 NO [AUTHENTICATIONFAILED]", harness.connect(NGINX).login(BOB, ticket, tls=False))

    def test_ticket_from_other_peer_refused(self):
        """From an untrusted peer a ticket is a wrong password (inside TLS), and without TLS no login at all."""
        harness = self.harness()
        ticket = harness.tickets.issue(BOB, "imap")
        self.assertIn(b"l1 NO [PRIVACYREQUIRED]", harness.connect(CLIENT).login(BOB, ticket, tls=False))
        self.assertIn(b"l1 NO [AUTHENTICATIONFAILED]", harness.connect(CLIENT).login(BOB, ticket))
        self.assertEqual(harness.audit.entries[-1].reason, "bad-password")

    def test_password_from_trusted_peer(self):
        """Without TLS a trusted proxy may hand only tickets: a clear-text password is PRIVACYREQUIRED."""
        harness = self.harness()
        self.assertIn(b"l1 NO [PRIVACYREQUIRED]", harness.connect(NGINX).login(BOB, BOB_PASSWORD, tls=False))
        self.assertEqual(harness.audit.entries, [])
        self.assertIn(b"l1 OK", harness.connect(NGINX).login(BOB, BOB_PASSWORD))
        self.assertEqual(harness.audit.entries[-1].reason, "password")

    def test_untrusted_peer_needs_tls(self):
        """Another peer still sees LOGINDISABLED before STARTTLS."""
        client = self.harness().connect("127.0.0.2")
        self.assertIn(b"LOGINDISABLED", client.send(b"c1 CAPABILITY\r\n"))


class AuthHTTPTicketTests(SynchronousTestCase):
    """auth_http's answer for gomail's own listeners, and the default backends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_750_000_000)
        users = MemoryUsers()
        users.add("alice", "alice pw")
        self.state = MemoryStateStore(self.clock)
        self.tickets = LoginTickets(SECRET, self.state, self.clock)
        backends = (Backend(protocol="imap", address="127.0.0.1", port=1143, loginTicket=True),
                    Backend(protocol="pop3", address="192.0.2.11", port=110))
        router = BackendRouter(backends, "hash", MemoryReactorClock(), interval=0)
        self.answerer = AuthHTTPAnswerer(NginxAuthSettings(), portal_for(authenticator(self.clock, self.state,
                                                                                       users)),
                                         router, self.clock, tickets=self.tickets)

    def answer(self, protocol: bytes) -> dict[bytes, bytes]:
        headers = {b"auth-method": [b"plain"], b"auth-user": [b"alice"], b"auth-pass": [b"alice%20pw"],
                   b"auth-protocol": [protocol], b"client-ip": [b"192.0.2.1"]}
        _, answer = self.successResultOf(Deferred.fromCoroutine(self.answerer.answer(headers)))
        self.assertEqual(answer[b"Auth-Status"], b"OK")
        return answer

    def test_ticket_for_gomail_backend(self):
        """For a loginTicket backend Auth-Pass is a ticket for the user and protocol, not the password."""
        answer = self.answer(b"imap")
        ticket = answer[b"Auth-Pass"].decode()
        self.assertTrue(looks_like_ticket(ticket))
        name = self.successResultOf(Deferred.fromCoroutine(self.tickets.redeem("alice", "imap", ticket)))
        self.assertEqual(name, "alice")

    def test_password_for_other_backend(self):
        """Any other backend still gets the password (a Dovecot behind nginx knows no tickets)."""
        self.assertEqual(self.answer(b"pop3")[b"Auth-Pass"], b"alice pw")

    def test_default_backends(self):
        """With no imap/pop3 backend configured, gomail's own first tcp listeners are, with loginTicket."""
        config = load_config(None, environ={})
        config = dataclasses.replace(config, imap=dataclasses.replace(config.imap, listen=(
            "unix:/tmp/imap.sock", "tcp:0", "tcp6:port=993:interface=\\:\\:", "tcp:143")))
        own = {b.protocol: b for b in default_backends(config)}
        self.assertEqual((own["imap"].address, own["imap"].port, own["imap"].loginTicket), ("::1", 993, True))
        self.assertEqual((own["pop3"].address, own["pop3"].port, own["pop3"].loginTicket), ("127.0.0.1", 1110, True))
        self.assertFalse(own["smtp"].loginTicket)
        off = dataclasses.replace(config, pop3=dataclasses.replace(config.pop3, enabled=False))
        self.assertNotIn("pop3", {b.protocol for b in default_backends(off)})
        configured = dataclasses.replace(config, nginxAuth=dataclasses.replace(config.nginxAuth, backends=(
            Backend(protocol="imap", address="10.0.0.5", port=143),)))
        [imap] = [b for b in default_backends(configured) if b.protocol == "imap"]
        self.assertEqual((imap.address, imap.loginTicket), ("10.0.0.5", False))

    def test_tcp_address(self):
        """Endpoint descriptions nginx can be sent to: tcp ones with a port, wildcards as loopback."""
        self.assertEqual(tcp_address("tcp:1143:interface=127.0.0.1"), ("127.0.0.1", 1143))
        self.assertEqual(tcp_address("tcp:143"), ("127.0.0.1", 143))
        self.assertEqual(tcp_address("tcp:port=110:interface=0.0.0.0"), ("127.0.0.1", 110))
        self.assertEqual(tcp_address("tcp6:143:interface=2001\\:db8\\:\\:1"), ("2001:db8::1", 143))
        for description in ("tcp:0", "unix:/run/imap.sock", "ssl:993", "tcp:nope"):
            self.assertIsNone(tcp_address(description), description)
