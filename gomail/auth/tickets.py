# -*- test-case-name: tests.test_auth_tickets -*-
"""
Login tickets: how a login nginx's mail proxy already checked reaches
gomail's own IMAP and POP3 listeners.

nginx asks auth_http (L{gomail.web.authhttp}) once per client login; the
portal checks the password and, for TOTP users, the code appended to it,
which is then spent (each code works once). nginx then logs in to the
backend with the password auth_http answers in C{Auth-Pass}. A TOTP user's
password without its code would be refused by gomail's own backend, and the
same code would be a replay; so, for a backend that is a gomail listener,
auth_http answers a ticket instead: a short-lived, single-use token signed
with the per-install auth secret (C{auth.secretFile}) that names the user
and the protocol.

The IMAP and POP3 login code hands the portal a L{TicketLogin} only when the
peer is one of its C{trustedProxies} and the password looks like a ticket
(L{looks_like_ticket}); from any other peer it is an ordinary (wrong)
password, so direct logins never get weaker. L{TicketChecker} is composed
into the one portal beside the password chain
(L{gomail.auth.checker.make_portal}).

A ticket is C{gmt1.<expiry>.<nonce>.<mac>}: the expiry in whole seconds of
the clock, 16 random bytes, and an HMAC-SHA256 over the protocol, the
user's canonical name, the expiry and the nonce (the name is not in the
ticket: the backend login gives it). Single use is the state store's C{add}
on the nonce, so nodes sharing a Redis store and the secret file accept a
ticket once between them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, implementer

from gomail.auth.credentials import Account, AuthFailure, TemporaryAuthError
from gomail.auth.gates import from_store
from gomail.auth.names import canonical_username
from gomail.auth.stats import AuthStats
from gomail.state.interface import IStateStore

VERSION = "gmt1"
#: Seconds a ticket is valid: nginx logs in to the backend right after auth_http's answer.
TICKET_TTL = 60
_NONCE_BYTES = 16
_TICKET = re.compile(r"gmt1\.([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})\Z")


def looks_like_ticket(password: str) -> bool:
    """Whether C{password} has a ticket's form (says nothing about whether it is valid)."""
    return _TICKET.match(password) is not None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ILoginTicket(ICredentials):
    """A login with a ticket auth_http issued (from a trusted proxy only: see the module docstring)."""

    username = Attribute("The user name as the proxy gave it (str).")
    ticket = Attribute("The ticket, given as the password (str).")
    client_ip = Attribute("The proxy's IP address as text, or None.")
    protocol = Attribute('The protocol the ticket must name: "imap" or "pop3".')


@implementer(ILoginTicket)
class TicketLogin:
    """
    A ticket login (L{ILoginTicket}); like L{gomail.auth.credentials.LoginAttempt}
    it is also the login's mind, C{account} set by the checker for the realm.
    """

    def __init__(self, username: str, ticket: str, client_ip: str | None, protocol: str) -> None:
        self.username = username
        self.ticket = ticket
        self.client_ip = client_ip
        self.protocol = protocol
        self.account: Account | None = None

    def __repr__(self) -> str:  # the ticket is a credential: never shown
        return f"<TicketLogin {self.protocol} from {self.client_ip}>"


class LoginTickets:
    """
    Issues and redeems tickets.

    @param secret: the per-install auth secret; the ticket key is derived
        from it, so a ticket never doubles as an auth cache key.
    @param state: where spent nonces are kept (shared: Redis, between nodes).
    @param clock: the clock expiries are read from.
    """

    def __init__(self, secret: bytes, state: IStateStore, clock: Any, ttl: int = TICKET_TTL) -> None:
        self._key = hmac.digest(secret, b"gomail login ticket key", "sha256")
        self.state = state
        self.clock = clock
        self.ttl = ttl

    def _mac(self, protocol: str, name: str, expiry: str, nonce: str) -> str:
        message = f"{VERSION}\0{protocol}\0{name}\0{expiry}\0{nonce}".encode("utf-8", "surrogatepass")
        return _b64(hmac.digest(self._key, message, hashlib.sha256))

    def issue(self, name: str, protocol: str) -> str:
        """A ticket for the user C{name} (canonical) over C{protocol}, valid for C{ttl} seconds."""
        expiry = str(int(self.clock.seconds()) + self.ttl)
        nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
        return f"{VERSION}.{expiry}.{nonce}.{self._mac(protocol, name, expiry, nonce)}"

    async def redeem(self, username: str, protocol: str, ticket: str) -> str:
        """
        Spend C{ticket} for C{username} over C{protocol}: fires with the
        user's canonical name.

        @raise AuthFailure: C{bad-ticket} (malformed, forged, or for another
            user or protocol), C{ticket-expired}, C{ticket-reused}.
        @raise TemporaryAuthError: the state store cannot answer.
        """
        match = _TICKET.match(ticket)
        if match is None:
            raise AuthFailure("bad-ticket")
        expiry, nonce, mac = match.groups()
        try:
            name = canonical_username(username)
        except ValueError:
            raise AuthFailure("bad-ticket") from None
        if not hmac.compare_digest(mac, self._mac(protocol, name, expiry, nonce)):
            raise AuthFailure("bad-ticket")
        left = int(expiry) - self.clock.seconds()
        if left < 0:
            raise AuthFailure("ticket-expired")
        # Kept as long as the ticket could still be valid (and a second more for rounding).
        if not await from_store(self.state.add(f"auth:ticket:{nonce}", b"1", int(left) + 1)):
            raise AuthFailure("ticket-reused")
        return name


@implementer(ICredentialsChecker)
class TicketChecker:
    """
    Fires with the user's canonical name for a valid, unspent ticket of a
    user who still exists and is enabled (or whom a credential-source plugin
    vouched for at auth_http, L{gomail.auth.sources.AuthSources.vouched}).
    The account is recorded on the credentials with C{via} C{"ticket"}.

    No lockout or blacklist here: the client's address was checked by
    auth_http, the peer is nginx's (counting its failures would lock every
    user out), and a ticket cannot be guessed.
    """

    credentialInterfaces = (ILoginTicket,)
    log = Logger()

    def __init__(self, tickets: LoginTickets, users: Any, sources: Any = None,
                 stats: AuthStats | None = None) -> None:
        self.tickets = tickets
        self.users = users
        self.sources = sources
        self.stats = stats or AuthStats()

    def requestAvatarId(self, credentials: Any) -> Deferred:
        return Deferred.fromCoroutine(self._avatar_id(credentials))

    async def _avatar_id(self, credentials: TicketLogin) -> str:
        return (await self.check(credentials)).name

    async def check(self, credentials: TicketLogin) -> Account:
        """The ticket's L{Account}, also recorded on C{credentials}."""
        try:
            account = await self._check(credentials)
        except AuthFailure as failure:
            self.stats.attempt(credentials.protocol, "failure", failure.reason, 0.0)
            raise
        except TemporaryAuthError:
            self.stats.attempt(credentials.protocol, "tempfail", "unavailable", 0.0)
            raise
        self.stats.attempt(credentials.protocol, "success", "ticket", 0.0)
        credentials.account = account
        return account

    async def _check(self, credentials: TicketLogin) -> Account:
        name = await self.tickets.redeem(credentials.username, credentials.protocol, credentials.ticket)
        try:
            user = await self.users.get_user(name)
        except Exception as e:
            self.log.error("user database unavailable: {error}", error=str(e) or type(e).__name__)
            raise TemporaryAuthError("user database unavailable") from e
        if user is None:
            vouched = self.sources.vouched(name) if self.sources is not None else None
            if vouched is None:
                raise AuthFailure("unknown-user")
            return Account(vouched.user, "ticket", "")
        if not user.enabled:
            raise AuthFailure("disabled")
        return Account(user, "ticket", "")


__all__ = ["TICKET_TTL", "ILoginTicket", "LoginTickets", "TicketChecker", "TicketLogin", "looks_like_ticket"]
