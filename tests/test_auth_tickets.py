"""
nginx's login tickets (L{gomail.auth.tickets}): issued and redeemed on a
task.Clock over a memory state store; the checker composed into the one
portal.
"""

from __future__ import annotations

from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.auth.checker import login
from gomail.auth.credentials import AuthFailure, LoginAttempt, TemporaryAuthError
from gomail.auth.tickets import (
    ILoginTicket,
    LoginTickets,
    TicketChecker,
    TicketLogin,
    looks_like_ticket,
)
from gomail.state.interface import StateStoreError
from gomail.state.memory import MemoryStateStore
from tests.authtesting import SECRET, MemoryUsers, authenticator, portal_for

T0 = 1_750_000_000.0


class BrokenState:
    """A state store whose C{add} fails (Redis down)."""

    def add(self, key, value, ttl):
        return fail(StateStoreError("connection refused"))


class TicketMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.state = MemoryStateStore(self.clock)
        self.tickets = LoginTickets(SECRET, self.state, self.clock)

    def redeem(self, user: str, protocol: str, ticket: str):
        return self.successResultOf(self._redeem(user, protocol, ticket))

    def refused(self, user: str, protocol: str, ticket: str) -> str:
        """The reason redeeming is refused with."""
        return self.failureResultOf(self._redeem(user, protocol, ticket), AuthFailure).value.reason

    def _redeem(self, user, protocol, ticket):
        return Deferred.fromCoroutine(self.tickets.redeem(user, protocol, ticket))


class LoginTicketsTests(TicketMixin, SynchronousTestCase):
    """Signing, expiry, single use and binding of tickets."""

    def test_issue_and_redeem(self):
        """A fresh ticket redeems for its user and protocol, naming the user's canonical name."""
        ticket = self.tickets.issue("alice@example.org", "imap")
        self.assertTrue(looks_like_ticket(ticket))
        self.assertEqual(self.redeem("alice@example.org", "imap", ticket), "alice@example.org")

    def test_user_name_canonicalised(self):
        """nginx logs in with the name as the client typed it: its canonical form is what the ticket names."""
        ticket = self.tickets.issue("alice@example.org", "pop3")
        self.assertEqual(self.redeem(" Alice@Example.ORG", "pop3", ticket), "alice@example.org")

    def test_single_use(self):
        """A ticket works once: the second use is refused as reused."""
        ticket = self.tickets.issue("alice", "imap")
        self.redeem("alice", "imap", ticket)
        self.assertEqual(self.refused("alice", "imap", ticket), "ticket-reused")

    def test_single_use_across_nodes(self):
        """Two nodes sharing the secret and the state store accept a ticket once between them."""
        other = LoginTickets(SECRET, self.state, self.clock)
        ticket = other.issue("alice", "imap")
        self.redeem("alice", "imap", ticket)
        self.tickets = other
        self.assertEqual(self.refused("alice", "imap", ticket), "ticket-reused")

    def test_expiry(self):
        """A ticket is good for its TTL (60 s) and refused once that has passed."""
        ticket = self.tickets.issue("alice", "imap")
        self.clock.advance(60)
        self.redeem("alice", "imap", ticket)
        late = self.tickets.issue("alice", "imap")
        self.clock.advance(61)
        self.assertEqual(self.refused("alice", "imap", late), "ticket-expired")

    def test_wrong_user_or_protocol(self):
        """A ticket is bound to its user and protocol: another user or protocol is refused (and it is not spent)."""
        ticket = self.tickets.issue("alice", "imap")
        self.assertEqual(self.refused("bob", "imap", ticket), "bad-ticket")
        self.assertEqual(self.refused("alice", "pop3", ticket), "bad-ticket")
        self.assertEqual(self.refused("alice", "smtp", ticket), "bad-ticket")
        self.redeem("alice", "imap", ticket)

    def test_tampering(self):
        """Changing any part (expiry pushed out, nonce, MAC) or another install's key makes a ticket bad."""
        ticket = self.tickets.issue("alice", "imap")
        version, expiry, nonce, mac = ticket.split(".")
        swapped = "B" if nonce[0] != "B" else "C"
        for forged in (f"{version}.{int(expiry) + 3600}.{nonce}.{mac}",
                       f"{version}.{expiry}.{swapped}{nonce[1:]}.{mac}",
                       f"{version}.{expiry}.{nonce}.{swapped}{mac[1:]}",
                       LoginTickets(b"o" * 32, self.state, self.clock).issue("alice", "imap")):
            self.assertEqual(self.refused("alice", "imap", forged), "bad-ticket", forged)
        self.redeem("alice", "imap", ticket)

    def test_malformed(self):
        """Anything not of a ticket's form, and a user name with no canonical form, are bad tickets."""
        ticket = self.tickets.issue("alice", "imap")
        for text in ("", "alice pw", "gmt1.", ticket + "x", ticket[:-1], " " + ticket):
            self.assertFalse(looks_like_ticket(text))
            self.assertEqual(self.refused("alice", "imap", text), "bad-ticket")
        self.assertEqual(self.refused("", "imap", ticket), "bad-ticket")

    def test_state_store_down(self):
        """A state store that cannot record the use is a temporary failure, never a success."""
        self.tickets = LoginTickets(SECRET, BrokenState(), self.clock)
        ticket = self.tickets.issue("alice", "imap")
        self.failureResultOf(self._redeem("alice", "imap", ticket), TemporaryAuthError)


class TicketCheckerTests(TicketMixin, SynchronousTestCase):
    """The checker and its place in the one portal."""

    def setUp(self) -> None:
        super().setUp()
        self.users = MemoryUsers()
        self.users.add("alice", "alice pw")
        self.users.add("tom", "tom pw", totp_secret="JBSWY3DPEHPK3PXP", totp_enabled=True)
        self.chain = authenticator(self.clock, self.state, self.users)
        self.portal = portal_for(self.chain, self.tickets)

    def test_interfaces(self):
        """The checker provides ICredentialsChecker for ILoginTicket; a TicketLogin provides ILoginTicket."""
        checker = TicketChecker(self.tickets, self.users)
        verifyObject(ICredentialsChecker, checker)
        verifyObject(ILoginTicket, TicketLogin("alice", "t", None, "imap"))
        self.assertEqual(checker.credentialInterfaces, (ILoginTicket,))

    def test_portal_login(self):
        """Through the portal a ticket logs a TOTP user in (no code needed), via "ticket", counted."""
        ticket = self.tickets.issue("tom", "imap")
        account = self.successResultOf(login(self.portal, TicketLogin("tom", ticket, "127.0.0.1", "imap")))
        self.assertEqual((account.name, account.via, account.password), ("tom", "ticket", ""))
        self.assertEqual(self.chain.stats.attempts[("imap", "success")], 1)

    def test_ticket_is_not_a_password(self):
        """A ticket handed over as an ordinary password attempt is checked as a password: refused."""
        ticket = self.tickets.issue("alice", "imap")
        self.failureResultOf(login(self.portal, LoginAttempt("alice", ticket, "192.0.2.7", "imap")), AuthFailure)
        # ...and still unspent: only the ticket path spends it.
        self.successResultOf(login(self.portal, TicketLogin("alice", ticket, "127.0.0.1", "imap")))

    def test_disabled_or_removed_user(self):
        """A user disabled or removed after auth_http's check is refused at the backend."""
        ticket = self.tickets.issue("alice", "imap")
        self.users.change("alice", enabled=False)
        failure = self.failureResultOf(login(self.portal, TicketLogin("alice", ticket, None, "imap")), AuthFailure)
        self.assertEqual(failure.value.reason, "disabled")
        ticket = self.tickets.issue("ghost", "imap")
        failure = self.failureResultOf(login(self.portal, TicketLogin("ghost", ticket, None, "imap")), AuthFailure)
        self.assertEqual(failure.value.reason, "unknown-user")

    def test_user_database_down(self):
        """A user database that cannot answer is a temporary failure."""
        ticket = self.tickets.issue("alice", "imap")
        self.users.broken = True
        self.failureResultOf(login(self.portal, TicketLogin("alice", ticket, None, "imap")), TemporaryAuthError)

    def test_repr_hides_ticket(self):
        """A TicketLogin's repr never shows the ticket."""
        ticket = self.tickets.issue("alice", "imap")
        self.assertNotIn(ticket, repr(TicketLogin("alice", ticket, "127.0.0.1", "imap")))
