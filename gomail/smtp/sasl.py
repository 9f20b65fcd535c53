# -*- test-case-name: tests.test_smtp_auth -*-
"""
SMTP AUTH (RFC 4954): the PLAIN and LOGIN exchanges, inside TLS only.

A mixin for L{gomail.smtp.protocol.GomailESMTP}: it adds C{ext_AUTH} and the
C{AUTH} input state. An exchange ends at the client's last line: with a
login, a refusal, C{501 5.0.0} for a client's C{*}, C{501 5.5.2} for a line
that does not decode, or C{501 5.5.6} for a line over the command line bound
(see L{gomail.smtp.framing}); the next line is a command again.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.mail.smtp import COMMAND

from gomail.auth.authlog import printable
from gomail.auth.checker import AuthFailure, LoginAttempt, TemporaryAuthError, login
from gomail.smtp.session import SessionAPI


class SASLMixin(SessionAPI):
    """AUTH PLAIN and LOGIN for an SMTP session (uses its C{server}, C{settings}, C{reply}...)."""

    def ext_AUTH(self, rest: bytes) -> Any:
        mechanism, _, initial = rest.partition(b" ")
        mechanism = mechanism.upper()
        if self.server.portal is None:
            return self.reply(502, "5.5.1", "Authentication not available")
        if self.helo_name is None or not self.extended:
            return self.reply(503, "5.5.1", "Error: send EHLO first")
        if not self.secure and not self._plaintext_auth_allowed():
            return self.reply(530, "5.7.0", "Must issue a STARTTLS command first")
        if self.account is not None:
            return self.reply(503, "5.5.1", "Error: already authenticated")
        if self.sender is not None:
            return self.reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
        if mechanism == b"PLAIN":
            if initial:
                return self._auth_plain(initial)
            return self._challenge(b"", self._auth_plain)
        if mechanism == b"LOGIN":
            if initial:
                return self._auth_login_user(initial)
            return self._challenge(b"Username:", self._auth_login_user)
        return self.reply(504, "5.5.4", "Unrecognized authentication type")

    def _plaintext_auth_allowed(self) -> bool:
        """AUTH without TLS only from loopback, and only when configured (smtp.allowPlaintextAuthLoopback)."""
        return (self.settings.allowPlaintextAuthLoopback and self.client_ip is not None
                and self.client_ip.is_loopback)

    def _challenge(self, prompt: bytes, step: Any) -> None:
        self._auth_step = step
        self.mode = "AUTH"
        self.sendCode(334, base64.b64encode(prompt))

    def end_auth_exchange(self) -> None:
        """Leave the AUTH input state: the next line is a command."""
        self._auth_step = None
        self.mode = COMMAND

    def state_AUTH(self, line: bytes) -> Any:
        step = self._auth_step
        self.end_auth_exchange()
        if line.strip() == b"*":
            return self.reply(501, "5.0.0", "Authentication cancelled")
        return step(line.strip())

    @staticmethod
    def _decode(data: bytes) -> str | None:
        try:
            return base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None

    def _auth_plain(self, data: bytes) -> Any:
        decoded = self._decode(data) if data != b"=" else ""
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3:
            return self.reply(501, "5.5.2", "Cannot decode AUTH PLAIN response")
        authzid, username, password = parts
        if authzid and authzid != username:
            # Acting for another user is not supported: refuse like bad credentials.
            return self._login(username, "")
        return self._login(username, password)

    def _auth_login_user(self, data: bytes) -> Any:
        username = self._decode(data)
        if username is None:
            return self.reply(501, "5.5.2", "Cannot decode AUTH LOGIN response")
        return self._challenge(b"Password:", lambda reply: self._auth_login_password(username, reply))

    def _auth_login_password(self, username: str, data: bytes) -> Any:
        password = self._decode(data)
        if password is None:
            return self.reply(501, "5.5.2", "Cannot decode AUTH LOGIN response")
        return self._login(username, password)

    #: The login being checked, cancelled if the client goes (see L{cancel_login}).
    _login_in_flight: Deferred | None = None

    def _login(self, username: str, password: str) -> Deferred:
        attempt = LoginAttempt(username, password, self.client_host or None, "smtp")
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
        """
        The client has gone: stop checking its login. A bcrypt verification
        still waiting for the CPU pool is skipped (nobody would read the
        answer), and the attempt is neither answered nor audited.
        """
        if self._login_in_flight is not None:
            self._login_in_flight.cancel()

    async def _finish_login(self, attempt: LoginAttempt) -> None:
        # Logged and audited: the user name as given (made printable), never the password.
        user = printable(attempt.username, 100)
        started = self.server.clock.seconds()
        try:
            account = await login(self.server.portal, attempt)
        except AuthFailure as failure:
            if failure.delay > 0:
                # The user's slowdown (gomail.auth.lockout): the refusal is answered this much later.
                await deferLater(self.server.clock, failure.delay)
            self._auth_failures += 1
            self.log.info('SMTP AUTH failed for user "{user}" from {client} ({reason})', user=user,
                          client=self.client_host, reason=failure.reason)
            self.server.audit_login(self, attempt.username, "failure", failure.reason, started)
            self.reply(535, "5.7.8", "Authentication credentials invalid")
            if self._auth_failures >= self.server.auth_settings.maxFailuresPerSession:
                self.reply(421, "4.7.0", f"{self.settings.hostname} Too many failed authentications, closing")
                self.close_connection()
            return
        except TemporaryAuthError:
            self.log.warn('SMTP AUTH for user "{user}" from {client} could not be checked now (temporary failure)',
                          user=user, client=self.client_host)
            self.server.audit_login(self, attempt.username, "tempfail", "unavailable", started)
            self.reply(454, "4.7.0", "Temporary authentication failure, try again later")
            return
        if self.server.hooks.active:
            refusal = await self.server.hooks.refusal("authenticated", self, account.name)
            if self.lost:
                return
            if refusal is not None:
                # Audited and counted as the failure it is for the client (the password was right).
                self._auth_failures += 1
                self.log.info('SMTP AUTH of user "{user}" from {client} refused by a plugin', user=account.name,
                              client=self.client_host)
                self.server.audit_login(self, account.name, "failure", "plugin", started)
                self.reply(*refusal)
                return
        if not self.server.audit_login(self, account.name, "success", account.via, started):
            # As auth_http: a login that cannot be audited is not let in.
            self.reply(454, "4.7.0", "Temporary authentication failure, try again later")
            return
        self.account = account
        self.authenticated = True
        self.log.info('SMTP AUTH succeeded for user "{user}" from {client} ({via})', user=account.name,
                      client=self.client_host, via=account.via)
        self.reply(235, "2.7.0", "Authentication successful")
