# -*- test-case-name: tests.test_web_authhttp -*-
"""
What the nginx mail proxy's C{auth_http} request is answered (contract:
PROTOCOLS.md), apart from HTTP itself: L{AuthHTTPAnswerer} turns a request's
headers into the status code and C{Auth-*} headers of the answer, logging in
through the portal every protocol shares; L{gomail.web.authapp} serves it.

nginx reads only the response headers and ignores the status line, so the one
rule above all: C{Auth-Status: OK} is written in a single place, after every
check has passed and the backend is chosen, from a header set built in a local
variable. Any exception before that answers the temporary failure.

C{Auth-Pass} is the password without its TOTP code, except for a backend
that is a gomail listener (C{loginTicket}, as gomail's own IMAP and POP3
listeners are by default): there a single-use login ticket
(L{gomail.auth.tickets}), since the code is spent by then.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.cred.portal import Portal
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from gomail.auth.authlog import CONTROL_CHARACTERS, AuthLog, AuthLogEntry, printable
from gomail.auth.backends import BackendRouter, NoBackend
from gomail.auth.checker import AuthFailure, LoginAttempt, TemporaryAuthError, login
from gomail.auth.tickets import LoginTickets
from gomail.configschema import NginxAuthSettings
from gomail.netaddr import ip_text

PROTOCOLS = frozenset({"imap", "pop3", "smtp"})
#: What a request nginx would not send is answered.
REFUSAL_TEXT = "Invalid authentication request"

#: A request's headers: lower-cased names, every value in the order received.
RequestHeaders = Mapping[bytes, list[bytes]]
#: An answer: the HTTP status code and the response headers (names as sent).
Answer = tuple[int, dict[bytes, bytes]]


class BadRequest(Exception):
    """
    A request nginx would not send, or one we will not serve: answered with a
    refusal and no C{Auth-Wait}, so nginx closes the client's session.
    C{args[0]} is for the log, C{client_text} for the client.
    """

    def __init__(self, why: str, client_text: str = REFUSAL_TEXT,
                 reason: str = "bad-request") -> None:
        super().__init__(why)
        self.client_text = client_text
        self.reason = reason


class AuthHTTPAnswerer:
    """The answer to one login attempt from nginx, from the request's headers."""

    log = Logger()
    #: Refused requests logged and audited per second (the rest only counted).
    MAX_REFUSALS_LOGGED = 10

    def __init__(self, settings: NginxAuthSettings, portal: Portal, router: BackendRouter, clock: Any,
                 audit: AuthLog | None = None, timer: Any = time.perf_counter,
                 tickets: LoginTickets | None = None) -> None:
        self.settings = settings
        #: Issues the login tickets nginx hands gomail's own IMAP/POP3 listeners (None: passwords only).
        self.tickets = tickets
        self.portal = portal
        self.router = router
        self.audit = audit
        self.timer = timer
        self.clock = clock
        self.secret = settings.sharedSecret.encode()
        self.secret_header = settings.secretHeader.encode().lower()
        self.refusals_not_logged = 0
        self._refusals_reported = 0
        self._refusal_second = -1
        self._refusals_this_second = 0

    async def answer(self, headers: RequestHeaders) -> Answer:
        """
        The status code and headers that answer a request with C{headers}.
        Never raises: whatever goes wrong answers the temporary failure (and
        is logged), never C{Auth-Status: OK}; only a cancelled answer (its
        request's connection closed) ends without one.
        """
        started = self.timer()
        try:
            return await self._answer(headers, started)
        except CancelledError:
            raise  # nginx went away (Klein cancels the request's work): nobody to answer
        except Exception:  # noqa: BLE001 - never an OK, whatever broke: the temporary failure, logged
            self.log.failure("auth_http request failed")
            return 500, self._temporary(_safe_protocol(headers))

    # -- the exchange -----------------------------------------------------------

    async def _answer(self, headers: RequestHeaders, started: float) -> Answer:
        protocol = "unknown"
        try:
            self._check_secret(headers)
            protocol = self._protocol(headers)
            attempt_number = self._attempt_number(headers)
            self._check_method(headers)
            user = self._credential(headers, b"auth-user")
            password = self._credential(headers, b"auth-pass")
            client_ip = self._client_ip(headers)
        except BadRequest as e:
            if self._note_refusal():
                self.log.warn("auth_http request refused: {why}", why=str(e))
                # Who it claimed to be is unknown (or not to be trusted): the entry says only that and why.
                self._record(started, "", protocol, None, "refused", e.reason)
            return 400, {b"Auth-Status": self._status_text(e.client_text)}
        attempt = LoginAttempt(user, password, client_ip, protocol)
        try:
            success = await login(self.portal, attempt)
        except AuthFailure as failure:
            self._record(started, user, protocol, client_ip, "failure", failure.reason)
            return 200, self._failure(protocol, attempt_number, failure.delay)
        except TemporaryAuthError:
            self._record(started, user, protocol, client_ip, "tempfail", "unavailable")
            return 200, self._temporary(protocol)
        try:
            address, port = await self.router.pick(protocol, success.name, client_ip, success.user.backend)
        except (NoBackend, ValueError) as e:
            self.log.error("no backend for a {protocol} login: {why}", protocol=protocol, why=str(e))
            self._record(started, user, protocol, client_ip, "tempfail", "no-backend")
            return 200, self._temporary(protocol)
        answer = {b"Auth-Server": address.encode(), b"Auth-Port": str(port).encode()}
        if self.tickets is not None and protocol != "smtp" and self.router.login_ticket(protocol, address, port):
            # A gomail listener: a TOTP user's password without the code (or the spent code) would be
            # refused there; a single-use ticket, accepted only from its trustedProxies, is not.
            answer[b"Auth-Pass"] = self.tickets.issue(success.name, protocol).encode("ascii")
        elif _header_safe(success.password):
            # nginx hands this to the backend as it is: the password without the TOTP code.
            answer[b"Auth-Pass"] = success.password.encode("utf-8")
        # A success that cannot be recorded is not let through: the error answers the temporary failure.
        self._record(started, success.name, protocol, client_ip, "success", success.via, f"{address}:{port}",
                     required=True)
        answer[b"Auth-Status"] = b"OK"  # the only place OK is ever written
        return 200, answer

    def _note_refusal(self) -> bool:
        """
        Count a refused request; whether to log and audit it. At most
        C{MAX_REFUSALS_LOGGED} a second are: a peer without the secret must
        not be able to flood the log, or push real entries out of the audit
        buffer. The rest are counted (C{refusals_not_logged}) and summed up in
        the next second's first line.
        """
        second = int(self.clock.seconds())
        if second != self._refusal_second:
            if self.refusals_not_logged > self._refusals_reported:
                self.log.warn("auth_http: {count} more refused requests were not logged",
                              count=self.refusals_not_logged - self._refusals_reported)
                self._refusals_reported = self.refusals_not_logged
            self._refusal_second, self._refusals_this_second = second, 0
        self._refusals_this_second += 1
        if self._refusals_this_second > self.MAX_REFUSALS_LOGGED:
            self.refusals_not_logged += 1
            return False
        return True

    # -- parsing ------------------------------------------------------------------

    def _check_secret(self, headers: RequestHeaders) -> None:
        if not self.secret:
            return
        values = headers.get(self.secret_header) or []
        if len(values) != 1 or not hmac.compare_digest(values[0], self.secret):
            raise BadRequest("missing or wrong shared secret header", "Authentication service unavailable",
                             "bad-secret")

    def _protocol(self, headers: RequestHeaders) -> str:
        protocol = (self._single(headers, b"auth-protocol") or "").strip().lower()
        if protocol not in PROTOCOLS:
            raise BadRequest("unsupported Auth-Protocol", "Unsupported protocol")
        return protocol

    def _check_method(self, headers: RequestHeaders) -> None:
        method = (self._single(headers, b"auth-method") or "plain").strip().lower()
        if method != "plain":
            raise BadRequest(f"unsupported Auth-Method {printable(method, 20)!r}",
                             "Unsupported authentication method, use plain", "unsupported-method")

    def _attempt_number(self, headers: RequestHeaders) -> int:
        value = self._single(headers, b"auth-login-attempt") or "1"
        # isascii: str.isdigit() also accepts "²" (byte 0xb2 as latin-1), which int() refuses
        return max(1, int(value)) if value.isascii() and value.isdigit() and 0 < len(value) < 6 else 1

    def _credential(self, headers: RequestHeaders, name: bytes) -> str:
        raw = self._single(headers, name)
        if raw is None:
            raise BadRequest(f"missing {name.decode().title()}")
        try:
            # nginx escapes once: decode exactly once (raw is latin-1 text of the header's bytes, see _single)
            value = unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name.decode().title()} is not UTF-8") from None
        if len(value) > 1024:
            raise BadRequest(f"{name.decode().title()} too long")
        return value

    def _client_ip(self, headers: RequestHeaders) -> str:
        value = self._single(headers, b"client-ip")
        if value is None:
            # nginx always sends it; without it the blacklist and the per-IP
            # lockout would have nothing to check.
            raise BadRequest("missing Client-IP")
        address = ip_text(value.strip())
        if address is None:
            raise BadRequest("Client-IP is not an IP address")
        return address

    @staticmethod
    def _single(headers: RequestHeaders, name: bytes) -> str | None:
        values = headers.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise BadRequest(f"duplicated {name.decode().title()} header")
        # latin-1 maps each byte to one character and back.
        return values[0].decode("latin-1")

    # -- answers --------------------------------------------------------------------

    def _failure(self, protocol: str, attempt_number: int, delay: float = 0.0) -> dict[bytes, bytes]:
        headers = {b"Auth-Status": self._status_text(self.settings.failureText)}
        if attempt_number < self.settings.maxLoginAttempts:
            wait = min(self.settings.maxWaitSeconds, self.settings.waitSeconds * attempt_number)
            # The user's slowdown (auth.userSlowdownDelay) when it is longer.
            wait = max(wait, math.ceil(delay))
            headers[b"Auth-Wait"] = str(wait).encode()
        if protocol == "smtp":
            headers[b"Auth-Error-Code"] = b"535 5.7.8"
        return headers

    def _temporary(self, protocol: str) -> dict[bytes, bytes]:
        headers = {b"Auth-Status": self._status_text(self.settings.temporaryText),
                   b"Auth-Wait": str(max(1, self.settings.waitSeconds)).encode()}
        if protocol == "smtp":
            headers[b"Auth-Error-Code"] = b"454 4.7.0"
        return headers

    @staticmethod
    def _status_text(text: str) -> bytes:
        return _header_value(text) if _header_safe(text) else b"Authentication failed"

    def _record(self, started: float, user: str, protocol: str, client_ip: str | None, result: str,
                reason: str, backend: str | None = None, required: bool = False) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(AuthLogEntry(self.clock.seconds(), printable(user), protocol, client_ip or "",
                                           result, reason, round((self.timer() - started) * 1000, 3), backend))
        except Exception:
            if required:
                raise
            self.log.failure("could not record an auth_http attempt")


def _header_safe(text: str) -> bool:
    """Whether C{text} can go into a header value as it is (no control characters)."""
    return CONTROL_CHARACTERS.search(text) is None


def _header_value(text: str) -> bytes:
    return text.encode("utf-8")


def _safe_protocol(headers: RequestHeaders) -> str:
    values = headers.get(b"auth-protocol") or [b""]
    return values[0].decode("latin-1").strip().lower() if len(values) == 1 else ""
