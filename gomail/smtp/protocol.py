# -*- test-case-name: tests.test_smtp_protocol,tests.test_smtp_abuse -*-
"""
gomail's ESMTP server protocol: twisted.mail's ESMTP with its gaps closed.

What this class changes from twisted.mail.smtp.ESMTP, and why:

- Input is parsed by L{SMTPFraming}, not by LineOnlyReceiver: replies stay in
  order behind a pending one, DATA never drops back into command mode in the
  middle of a message, lines are bounded, and the abuse rules apply.
- The banner waits for the IP blacklist and, for an untrusted client,
  C{smtp.greetingDelay}: a client that talks first is cut off.
- The session is bounded: total time, transactions, DATA rate, idle time.
- Plaintext pipelined behind STARTTLS is discarded and the session is reset.
- Every reply carries an enhanced status code; local failures answer 451 4.3.0.
- Command lines may not hold control characters, so nothing a client sends
  reaches our Received: header unchecked.
- Message content goes straight to the spool as it arrives.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import deferLater
from twisted.mail.smtp import DATA

from gomail.flow import OutputBound
from gomail.smtp import xclient
from gomail.smtp.address import Path
from gomail.smtp.framing import SMTPFraming
from gomail.smtp.policy import parse_ip
from gomail.smtp.reader import DataReader
from gomail.smtp.sasl import SASLMixin
from gomail.smtp.transaction import MailTransactionMixin
from gomail.tcp import no_delay

if TYPE_CHECKING:
    from gomail.smtp.server import SMTPServer

_HELO_NAME = re.compile(rb"^[\x21-\x7e]{1,255}$")
#: Seconds a closing connection may take to send its last replies before it is aborted.
CLOSE_TIMEOUT = 30.0


class GomailESMTP(SASLMixin, MailTransactionMixin, SMTPFraming):
    """One SMTP session. Shared state and settings come from the L{SMTPServer}."""

    def __init__(self, server: SMTPServer, implicit_tls: bool = False) -> None:
        super().__init__(chal={}, contextFactory=server.tls_context)
        self.init_framing()
        self.server = server
        self.settings = server.settings
        self.host = server.settings.hostname
        self.timeout = server.settings.idleTimeout
        self.secure = implicit_tls
        self.client_host = ""
        self.client_ip = None
        self.peer_host = ""
        self.peer_ip = None
        self.admitted = False
        self.counted_as: str | None = None  # the address this session counts against (smtp.maxConnectionsPerIP)
        self.helo_name: str | None = None
        self.extended = False  # EHLO (True) or HELO (False)
        self.sender: Path | None = None
        self.recipients: list[str] = []
        self.body_type: str | None = None
        self.close_when_idle = False
        self.hang_up_when_answered = False  # the session expired while a reply was pending
        #: The last reply of a session closed when idle (shutdown, or a deadline).
        self.closing_reply = (421, "4.3.2", f"{server.settings.hostname} Service shutting down, try again later")
        self.transactions = 0
        self._errors = 0
        self._message = None
        self._reader: DataReader | None = None
        self._headers = None
        self._first_chunk = True
        self._timers: dict[str, Any] = {}  # the session's deadlines, by name
        self.flow: OutputBound | None = None  # bounds replies the client does not read
        self._data_started = 0.0
        self.account: Any = None  # the Account of a successful AUTH
        self._auth_failures = 0
        self._auth_step: Any = None  # while an AUTH exchange waits for the client's next line

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's timer, on the server's clock (never the global reactor's)."""
        return self.server.clock.callLater(period, func)

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)  # replies are small writes; never hold one back for an ACK
        peer = self.transport.getPeer()
        self.client_host = str(getattr(peer, "host", "") or "")
        self.client_ip = parse_ip(self.client_host)
        # The connection's own peer: XCLIENT may replace client_* with a proxy's client.
        self.peer_host, self.peer_ip = self.client_host, self.client_ip
        self.canStartTLS = (not self.secure and self.ctx is not None
                            and ITLSTransport.providedBy(self.transport))
        refusal = self.server.admit(self)
        if refusal is not None:
            code, status, text = refusal
            self.sendLine(f"{code} {status} {text}".encode())
            self.transport.loseConnection()
            return
        self.admitted = True
        # Replies the client does not read stop its input being read; past an
        # idle timeout like that the connection is aborted (issue 14 item 1).
        self.flow = OutputBound(self.server.clock, self.timeout, on_paused=lambda: self._pause("output"),
                                on_resumed=lambda: self._resume("output"), on_timeout=self._output_stuck,
                                name="smtp")
        self.flow.attach(self.transport)
        self.setTimeout(self.timeout)
        self._deadline("session", self.settings.maxSessionTime, self._session_expired)
        Deferred.fromCoroutine(self._open()).addErrback(self._internal_error)

    async def _open(self) -> None:
        """Greet the client once it passed the blacklist and, if untrusted, the greeting delay."""
        refusal = await self.server.client_refusal(self)
        if self.lost or self.closed or self.transport.disconnecting:
            return
        if refusal is None and self.server.hooks.active:
            refusal = await self.server.hooks.refusal("connect", self)
            if self.lost or self.closed or self.transport.disconnecting:
                return
        if refusal is not None:
            return self.hang_up(*refusal)
        if not self.exempt_from_sync() and self.settings.greetingDelay:
            await deferLater(self.server.clock, self.settings.greetingDelay, lambda: None)
            if self.lost or self.closed or self.transport.disconnecting:
                return
        self.greeted = True
        self.banner()
        self._process()  # what a trusted client sent early

    def connectionLost(self, reason: Any = None) -> None:
        # Pipelined input still held (behind a pending reply) is dropped: its
        # client is gone and would never see a 250 for what it would queue.
        self.lost = self.closed = True
        self._input = b""
        self.setTimeout(None)
        if self.flow is not None:
            self.flow.detach()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self.cancel_login()
        if self._message is not None:  # DATA under way (a committing message is no longer here)
            self._message.abort()
            self._message = None
        if self.admitted:
            self.server.release(self)

    def _output_stuck(self) -> None:
        self.close_connection()  # still paused: aborted

    def close_connection(self) -> None:
        """
        Close once the replies written are sent; a client that is not reading
        them would keep the connection forever, so it is aborted instead, at
        once if its replies are already over the bound, else after
        L{CLOSE_TIMEOUT} (or the idle timeout, if shorter).
        """
        self.closed = True
        self.setTimeout(None)
        self._deadline("close", min(CLOSE_TIMEOUT, self.settings.idleTimeout), self._close_stuck)
        if self.flow is not None:
            unread = self.flow.paused
            self.flow.detach()  # a registered producer would hold the close back
            if unread:
                self.server.rejections["output_unread"] += 1
                self.transport.abortConnection()
                return
        self.transport.loseConnection()

    def _close_stuck(self) -> None:
        if not self.lost:
            self.server.rejections["output_unread"] += 1
            self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        if self._blocked:
            # Our reply is pending (a commit, a lookup: each bounded by its own
            # timeout), not the client: a 421 now could follow a 250 it never saw.
            self.setTimeout(self.settings.idleTimeout)
            return
        self.hang_up(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded")

    def banner(self) -> None:
        """The 220 greeting (at the start, and again after XCLIENT)."""
        self.sendCode(220, self.host + b" ESMTP gomail")

    def exempt_from_sync(self) -> bool:
        """Whether the pipelining and greeting rules are waived: trusted or authenticated clients."""
        return self.account is not None or self.server.policy.is_trusted(self.client_ip)

    @property
    def pipelining_offered(self) -> bool:
        """Whether this session's last greeting was an EHLO (which offers PIPELINING)."""
        return self.helo_name is not None and self.extended

    # -- deadlines ----------------------------------------------------------

    def _deadline(self, name: str, seconds: float, expired: Any) -> None:
        """Call C{expired} in C{seconds} (0: never), replacing an earlier deadline of that name."""
        if self.lost:
            return
        old = self._timers.get(name)
        if old is not None and old.active():
            if seconds > 0:
                old.reset(seconds)  # cheaper than a new call: DATA moves its deadline at every read
                return
            old.cancel()
        if seconds > 0:
            self._timers[name] = self.server.clock.callLater(seconds, expired)

    def _session_expired(self) -> None:
        self.log.info("session with {client} over smtp.maxSessionTime", client=self.client_host)
        self.server.rejections["session_time"] += 1
        self.closing_reply = (421, "4.4.2", f"{self.settings.hostname} Error: session time limit exceeded")
        if self._blocked:
            # A reply is pending (a message being committed): its client gets
            # the 250 first (or would send the message again), then the 421.
            self.hang_up_when_answered = True
        else:
            self.hang_up(*self.closing_reply)

    @property
    def in_transaction(self) -> bool:
        """Whether a mail transaction is under way (MAIL given, DATA open, or a reply pending)."""
        return self.sender is not None or self.mode == DATA or self._blocked

    def close_gracefully(self) -> None:
        """Shutting down: close now if idle, else right after the current transaction."""
        if self.in_transaction:
            self.close_when_idle = True
        else:
            self.hang_up(*self.closing_reply)

    # -- replies ------------------------------------------------------------

    def reply(self, code: int, status: str, text: str) -> None:
        """Send one reply line with its enhanced status code; too many errors end the session."""
        super().sendCode(code, f"{status} {text}".encode("ascii", "replace"))
        # 421 ends the session anyway; 452 4.5.3 is the normal answer to a large
        # recipient list (RFC 5321 4.5.3.1.10), not a client error.
        if code >= 400 and code != 421 and status != "4.5.3":
            self._errors += 1
            if self._errors >= self.settings.maxErrors:
                self.hang_up(421, "4.7.0", "Too many errors, closing connection")

    # -- session commands ---------------------------------------------------

    def do_HELO(self, rest: bytes) -> Any:
        return self._greet(rest, extended=False)

    def do_EHLO(self, rest: bytes) -> Any:
        return self._greet(rest, extended=True)

    def _greet(self, rest: bytes, extended: bool) -> Any:
        if not _HELO_NAME.match(rest):
            self.reply(501, "5.5.4", f"Syntax: {'EHLO' if extended else 'HELO'} hostname")
            return None
        if self.server.hooks.active:
            return Deferred.fromCoroutine(self._greet_checked(rest.decode("ascii"), extended))
        return self._greeted(rest.decode("ascii"), extended)

    async def _greet_checked(self, name: str, extended: bool) -> None:
        """HELO/EHLO once the plugins' hooks agree (L{gomail.extension.smtphooks})."""
        refusal = await self.server.hooks.refusal("helo", self, name)
        if refusal is not None:
            self.reply(*refusal)
        else:
            self._greeted(name, extended)

    def _greeted(self, name: str, extended: bool) -> None:
        self.helo_name = name
        self.extended = extended
        self.reset_transaction()
        first = f"{self.settings.hostname} Hello {self.helo_name} [{self.client_host}]"
        if extended:
            self.sendCode(250, "\n".join([first] + self.extension_lines()).encode("ascii"))
        else:
            self.sendCode(250, first.encode("ascii"))

    def extension_lines(self) -> list[str]:
        """The EHLO keywords this session offers."""
        lines = [f"SIZE {self.settings.maxMessageSize}", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"]
        if self.canStartTLS and not self.secure:
            lines.append("STARTTLS")
        if self.server.portal is not None and (self.secure or self._plaintext_auth_allowed()):
            # RFC 4954 4: passwords travel only inside TLS, so AUTH is not offered before it.
            lines.append("AUTH PLAIN LOGIN")
        if xclient.offered(self):
            lines.append(xclient.EHLO_KEYWORD)
        return lines

    def ext_XCLIENT(self, rest: bytes) -> Any:
        """XCLIENT: a proxy in smtp.xclientHosts names its client (L{gomail.smtp.xclient})."""
        return xclient.command(self, rest)

    def ext_STARTTLS(self, rest: bytes) -> None:
        if rest:
            self.reply(501, "5.5.4", "Syntax: STARTTLS")
        elif self.secure:
            self.reply(503, "5.5.1", "TLS already active")
        elif not self.canStartTLS:
            self.reply(454, "4.7.0", "TLS not available")
        else:
            self.reply(220, "2.0.0", "Ready to start TLS")
            # RFC 3207 4.2: anything sent before the handshake is discarded and
            # the session starts over, so injected plaintext cannot ride along.
            self._input = b""
            self.transport.startTLS(self.ctx)
            if self.flow is not None:
                self.flow.tls_started()
            self.secure = self.startedTLS = True
            self.helo_name = None
            self.authenticated = False
            self.account = None
            self.reset_transaction()

    def do_UNKNOWN(self, rest: bytes) -> None:
        # twisted's SMTP defines do_UNKNOWN, so the verb UNKNOWN would reach its
        # reply (no enhanced status code); answer it like any unknown verb.
        self.reply(500, "5.5.2", "Error: command not recognized")

    def do_NOOP(self, rest: bytes) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_RSET(self, rest: bytes) -> None:
        self.reset_transaction()
        self.reply(250, "2.0.0", "Ok")

    def do_VRFY(self, rest: bytes) -> None:
        self.reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, rest: bytes) -> None:
        self.reply(502, "5.5.1", "EXPN not available")

    def do_HELP(self, rest: bytes) -> None:
        self.reply(214, "2.0.0", "Commands: HELO EHLO STARTTLS MAIL RCPT DATA RSET NOOP VRFY QUIT")

    def do_QUIT(self, rest: bytes) -> None:
        self.reply(221, "2.0.0", "Bye")
        self.close_connection()

    def reset_transaction(self) -> None:
        """Forget the current sender and recipients."""
        self.sender = None
        self.recipients = []
        self.body_type = None
