# -*- test-case-name: tests.test_pop3 -*-
"""
POP3 logins: USER/PASS (RFC 1939 7) and AUTH PLAIN (RFC 5034), inside TLS
only (RFC 2595; from loopback without it when C{pop3.allowPlaintextLoopback}
is on; from nginx, a peer in C{pop3.trustedProxies}, without it and with
auth_http's login tickets: L{gomail.mailaccess.proxies}). APOP is never
offered: it needs the password in the clear on the server, and gomail keeps
bcrypt hashes only.

Every login goes through gomail's one portal (the same as SMTP AUTH and
nginx's auth_http) with a L{LoginAttempt} of protocol C{pop3}: blacklist,
lockout and slowdown, app passwords, TOTP, equal time. A refusal of any kind
(unknown user, wrong password or code, locked, blacklisted) gets one answer,
C{-ERR [AUTH] Authentication failed}, after the slowdown the portal asks for;
each attempt is written to the audit log. After a successful login the
session asks the Maildir realm (L{gomail.mailaccess.pop3mailbox}) for the
user's mailbox: locked by another session, C{-ERR [IN-USE]}.

A mixin for L{gomail.mailaccess.pop3.GomailPOP3}.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import deferLater
from twisted.mail.pop3 import IMailbox

from gomail.auth.authlog import printable
from gomail.auth.checker import LoginAttempt, TemporaryAuthError, login
from gomail.auth.tickets import TicketLogin
from gomail.mailaccess.maildir import UnsafeMailbox
from gomail.mailaccess.pop3mailbox import MailboxInUse
from gomail.mailaccess.proxies import LoginRules, login_credentials
from gomail.mailaccess.sessionapi import POP3SessionAPI

#: The one answer to every refused login.
FAILED = "[AUTH] Authentication failed"
TEMPORARY = "[SYS/TEMP] Temporary authentication failure, try again later"


class POP3LoginMixin(LoginRules, POP3SessionAPI):
    """USER, PASS, AUTH and APOP for a POP3 session (uses its C{server}, C{ok}, C{err}...)."""

    server: Any
    settings: Any
    secure: bool
    client_host: str
    client_ip: Any
    closed: bool
    mode: str
    log: Any

    def init_login(self) -> None:
        """Set up the login state (from the session's C{__init__})."""
        self._user: bytes | None = None  # the name USER gave, waiting for PASS
        self._auth_failures = 0
        self._login_in_flight: Deferred | None = None
        self.account: Any = None

    def _refused(self) -> bool:
        """Answer a login command that may not be used now; whether it was refused."""
        if self.server.portal is None:
            self.err("[SYS/PERM] Login is not available")
            return True
        if not self.login_allowed():
            self.err("Plaintext login is not allowed: issue STLS first")
            return True
        return False

    def cmd_USER(self, rest: bytes) -> None:
        if self._refused():
            return
        if not rest:
            return self.err("Syntax: USER name")
        self._user = rest
        self.ok("Send PASS")  # the same for every name: whether it exists is not told

    def cmd_PASS(self, rest: bytes) -> Any:
        if self._refused():
            return None
        if self._user is None:
            return self.err("Send USER first")
        user, self._user = self._user, None
        # RFC 1939 7: the argument is the rest of the line, spaces included.
        return self._login(user.decode("utf-8", "replace"), rest.decode("utf-8", "replace"))

    def cmd_AUTH(self, rest: bytes) -> Any:
        if self._refused():
            return None
        if not rest:
            return self.multi("Mechanisms follow", [b"PLAIN"])
        mechanism, _, initial = rest.partition(b" ")
        if mechanism.upper() != b"PLAIN":
            return self.err("Unsupported authentication mechanism")
        if initial:
            return self._auth_plain(initial)
        self.mode = "AUTH"
        self.sendLine(b"+ ")
        return None

    def auth_response(self, line: bytes) -> Any:
        """The client's line in an AUTH exchange: its SASL response, or C{*} to cancel."""
        self.mode = "COMMAND"
        if line == b"*":
            return self.err("Authentication cancelled")
        return self._auth_plain(line)

    def cmd_APOP(self, rest: bytes) -> None:
        self.err("APOP is not available")

    def _auth_plain(self, data: bytes) -> Any:
        try:
            decoded = "" if data == b"=" else base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = None
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3:
            return self.err("Cannot decode AUTH PLAIN response")
        authzid, user, password = parts
        if authzid and authzid != user:
            return self._login(user, "")  # acting for another user is not supported: refused like bad credentials
        return self._login(user, password)

    # -- the login ---------------------------------------------------------------------

    def _login(self, username: str, password: str) -> Deferred:
        if self.clear_password_refused(password):
            self.err("Plaintext login is not allowed: issue STLS first")
            return succeed(None)
        attempt = login_credentials(username, password, self.client_host, "pop3", self.from_proxy())
        d = Deferred.fromCoroutine(self._finish_login(attempt))
        if not d.called:
            self._login_in_flight = d
            d.addErrback(lambda failure: failure.trap(CancelledError) and None)  # the client is gone
            d.addBoth(self._login_ended)
        return d

    def _login_ended(self, result: Any) -> Any:
        self._login_in_flight = None
        return result

    def cancel_login(self) -> None:
        """The client has gone: stop checking its login (neither answered nor audited)."""
        if self._login_in_flight is not None:
            self._login_in_flight.cancel()

    async def _finish_login(self, attempt: LoginAttempt | TicketLogin) -> None:
        server = self.server
        started = server.clock.seconds()
        try:
            account = await login(server.portal, attempt)
        except UnauthorizedLogin as failure:
            delay = getattr(failure, "delay", 0)
            if delay > 0:
                # The user's slowdown (gomail.auth.lockout): the refusal is answered this much later.
                await deferLater(server.clock, delay)
            return self._login_failed(attempt.username, getattr(failure, "reason", "bad-credentials"), started)
        except TemporaryAuthError:
            self.log.warn('POP3 login of user "{user}" from {client} could not be checked now (temporary failure)',
                          user=printable(attempt.username, 100), client=self.client_host)
            server.audit_login(self, attempt.username, "tempfail", "unavailable", started)
            return self.err(TEMPORARY)
        if self.closed:
            return None
        try:
            _, mailbox, logout = await server.realm.requestAvatar(account.name, None, IMailbox)
        except MailboxInUse:
            server.stats["in_use"] += 1
            self.log.info("POP3 login of user {user} from {client} refused: the mailbox is in use",
                          user=account.name, client=self.client_host)
            server.audit_login(self, account.name, "refused", "in-use", started)
            return self.err("[IN-USE] Mailbox in use by another session")
        except UnsafeMailbox:
            self.log.warn("POP3 login of user {user}: no mailbox can be made from that name", user=account.name)
            server.audit_login(self, account.name, "refused", "no-mailbox", started)
            return self.err("[SYS/PERM] No mailbox for this user")
        except OSError as e:
            self.log.warn("POP3 mailbox of {user} cannot be listed: {error}", user=account.name, error=str(e))
            server.audit_login(self, account.name, "tempfail", "mailbox", started)
            return self.err("[SYS/TEMP] Mailbox unavailable, try again later")
        if self.closed:
            logout()
            return None
        if not server.audit_login(self, account.name, "success", account.via, started):
            logout()  # as SMTP AUTH and auth_http: a login that cannot be audited is not let in
            return self.err(TEMPORARY)
        self.logged_in(account, mailbox, logout)
        return None

    def _login_failed(self, username: str, reason: str, started: float) -> None:
        self._auth_failures += 1
        self.server.stats["login_failures"] += 1
        self.log.info('POP3 login failed for user "{user}" from {client} ({reason})',
                      user=printable(username, 100), client=self.client_host, reason=reason)
        self.server.audit_login(self, username, "failure", reason, started)
        self.err(FAILED)
        if self._auth_failures >= self.server.auth_settings.maxFailuresPerSession and not self.closed:
            self.close_connection()

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.pop3.GomailPOP3})
        def logged_in(self, account: Any, mailbox: Any, logout: Any) -> None: ...


__all__ = ["FAILED", "TEMPORARY", "POP3LoginMixin"]
