# -*- test-case-name: tests.test_imap -*-
"""
IMAP logins: LOGIN and AUTHENTICATE PLAIN (RFC 3501 6.2, RFC 4616; the
initial response of RFC 4959 too), inside TLS only (RFC 2595: before
STARTTLS the capabilities say LOGINDISABLED and both commands are refused;
from loopback without TLS when C{imap.allowPlaintextLoopback} is on; from
nginx, a peer in C{imap.trustedProxies}, without TLS and with auth_http's
login tickets: L{gomail.mailaccess.proxies}).

Every login goes through gomail's one portal, as SMTP AUTH and POP3 do, with
a L{LoginAttempt} of protocol C{imap}: blacklist, lockout and slowdown, app
passwords, TOTP. Every refusal gets the same answer (L{FAILED}) after the
slowdown the portal asks for; every attempt is written to the audit log. A
mixin for L{gomail.mailaccess.imap.GomailIMAP4}.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.mail import imap4

from gomail.auth.authlog import printable
from gomail.auth.checker import LoginAttempt, TemporaryAuthError, login
from gomail.auth.tickets import TicketLogin
from gomail.mailaccess.maildir import UnsafeMailbox
from gomail.mailaccess.proxies import LoginRules, login_credentials
from gomail.mailaccess.sessionapi import IMAPSessionAPI

#: The one answer to every refused login (RFC 5530 response code).
FAILED = b"[AUTHENTICATIONFAILED] Authentication failed"
TEMPORARY = b"[UNAVAILABLE] Temporary authentication failure, try again later"
PLAINTEXT = b"[PRIVACYREQUIRED] Plaintext login is not allowed: issue STARTTLS first"


class IMAPLoginMixin(LoginRules, IMAPSessionAPI):
    """LOGIN and AUTHENTICATE for an IMAP session (uses its C{server}, C{sendNegativeResponse}...)."""

    server: Any
    settings: Any
    secure: bool
    client_host: str
    client_ip: Any
    closed: bool
    state: str
    parseState: str
    log: Any

    def init_login(self) -> None:
        """Set up the login state (from the session's C{__init__})."""
        self._auth_failures = 0
        self._login_in_flight: Deferred | None = None
        self._auth_tag = b""

    def _refused(self, tag: bytes) -> bool:
        if self.server.portal is None:
            self.sendNegativeResponse(tag, b"[UNAVAILABLE] Login is not available")
            return True
        if not self.login_allowed():
            self.sendNegativeResponse(tag, PLAINTEXT)
            return True
        return False

    def do_LOGIN(self, tag: bytes, user: bytes, password: bytes) -> None:
        if not self._refused(tag):
            self._login(tag, user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))

    unauth_LOGIN: Any = (do_LOGIN, imap4.IMAP4Server.arg_astring, imap4.IMAP4Server.arg_finalastring)

    def do_AUTHENTICATE(self, tag: bytes, rest: bytes) -> None:
        if self._refused(tag):
            return
        mechanism, _, initial = rest.strip().partition(b" ")
        if mechanism.upper() != b"PLAIN":
            return self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
        if initial:
            return self._auth_plain(tag, initial)
        self._auth_tag = tag
        self.parseState = "auth"
        self.sendLine(b"+ ")

    unauth_AUTHENTICATE: Any = (do_AUTHENTICATE, imap4.IMAP4Server.arg_line)

    def parse_auth(self, line: bytes) -> None:
        """The client's line in an AUTHENTICATE exchange: its SASL response, or C{*} to cancel."""
        self.parseState = "command"
        tag, self._auth_tag = self._auth_tag, b""
        if line.strip() == b"*":
            return self.sendBadResponse(tag, b"Authentication cancelled")
        self._auth_plain(tag, line.strip())

    def _auth_plain(self, tag: bytes, data: bytes) -> None:
        try:
            decoded: str | None = "" if data == b"=" else base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = None
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3:
            return self.sendBadResponse(tag, b"Cannot decode the AUTHENTICATE PLAIN response")
        authzid, user, password = parts
        # Acting for another user is not supported: refused like bad credentials.
        self._login(tag, user, "" if authzid and authzid != user else password)

    def _login(self, tag: bytes, username: str, password: str) -> None:
        if self.clear_password_refused(password):
            self.sendNegativeResponse(tag, PLAINTEXT)
            return
        attempt = login_credentials(username, password, self.client_host, "imap", self.from_proxy())
        d = Deferred.fromCoroutine(self._finish_login(tag, attempt))
        if not d.called:
            self._login_in_flight = d
            d.addErrback(lambda failure: failure.trap(CancelledError) and None)  # the client is gone
            d.addBoth(self._login_ended)
        d.addErrback(self._login_broke, tag)

    def _login_ended(self, result: Any) -> Any:
        self._login_in_flight = None
        return result

    def _login_broke(self, failure: Any, tag: bytes) -> None:
        self.log.failure("IMAP login from {client} failed unexpectedly", failure, client=self.client_host)
        self.sendNegativeResponse(tag, TEMPORARY)

    def cancel_login(self) -> None:
        """The client has gone: stop checking its login (neither answered nor audited)."""
        if self._login_in_flight is not None:
            self._login_in_flight.cancel()

    async def _finish_login(self, tag: bytes, attempt: LoginAttempt | TicketLogin) -> None:
        server = self.server
        started = server.clock.seconds()
        try:
            account = await login(server.portal, attempt)
        except UnauthorizedLogin as failure:
            delay = getattr(failure, "delay", 0)
            if delay > 0:
                await deferLater(server.clock, delay)  # the user's slowdown (gomail.auth.lockout)
            return self._login_failed(tag, attempt.username, getattr(failure, "reason", "bad-credentials"), started)
        except TemporaryAuthError:
            self.log.warn('IMAP login of user "{user}" from {client} could not be checked now (temporary failure)',
                          user=printable(attempt.username, 100), client=self.client_host)
            server.audit_login(self, attempt.username, "tempfail", "unavailable", started)
            return self.sendNegativeResponse(tag, TEMPORARY)
        if self.closed:
            return None
        try:
            mailbox = await server.open_account(account.name)
        except UnsafeMailbox:
            self.log.warn("IMAP login of user {user}: no mailbox can be made from that name", user=account.name)
            server.audit_login(self, account.name, "refused", "no-mailbox", started)
            return self.sendNegativeResponse(tag, b"[UNAVAILABLE] No mailbox for this user")
        except OSError as e:
            self.log.warn("IMAP mailbox of {user} cannot be opened: {error}", user=account.name, error=str(e))
            server.audit_login(self, account.name, "tempfail", "mailbox", started)
            return self.sendNegativeResponse(tag, b"[UNAVAILABLE] Mailbox unavailable, try again later")
        if self.closed:
            return None
        if not server.audit_login(self, account.name, "success", account.via, started):
            return self.sendNegativeResponse(tag, TEMPORARY)  # a login that cannot be audited is not let in
        self.logged_in(account, mailbox)
        self.sendPositiveResponse(tag, b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in")
        return None

    def logged_in(self, account: Any, mailbox: Any) -> None:
        """The login succeeded: the authenticated state."""
        self.account = mailbox
        self.login_account = account
        self.state = "auth"
        self.server.stats["logins"] += 1
        self.log.info('IMAP login of user "{user}" from {client} ({via})', user=account.name,
                      client=self.client_host, via=account.via)

    def _login_failed(self, tag: bytes, username: str, reason: str, started: float) -> None:
        self._auth_failures += 1
        self.server.stats["login_failures"] += 1
        self.log.info('IMAP login failed for user "{user}" from {client} ({reason})',
                      user=printable(username, 100), client=self.client_host, reason=reason)
        self.server.audit_login(self, username, "failure", reason, started)
        self.sendNegativeResponse(tag, FAILED)
        if self._auth_failures >= self.server.auth_settings.maxFailuresPerSession:
            self.bye("Too many failed logins")

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        def listCapabilities(self) -> list[bytes]: ...

        def bye(self, text: str) -> None: ...


__all__ = ["FAILED", "IMAPLoginMixin"]
