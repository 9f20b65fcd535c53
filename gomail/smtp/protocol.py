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

import errno
import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import deferLater
from twisted.mail.smtp import COMMAND, DATA

from gomail.flow import OutputBound
from gomail.smtp.address import AddressError, Path, parse_path
from gomail.smtp.framing import SMTPFraming
from gomail.smtp.policy import parse_ip
from gomail.smtp.reader import DataReader
from gomail.smtp.received import received_header
from gomail.smtp.sasl import SASLMixin
from gomail.spool.envelope import Envelope, Recipient
from gomail.tcp import no_delay

if TYPE_CHECKING:
    from gomail.smtp.server import SMTPServer

_HELO_NAME = re.compile(rb"^[\x21-\x7e]{1,255}$")
_HEADER_START = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:|^\r\n")


class GomailESMTP(SASLMixin, SMTPFraming):
    """One SMTP session. Shared state and settings come from the L{SMTPServer}."""

    def __init__(self, server: "SMTPServer", implicit_tls: bool = False) -> None:
        super().__init__(chal={}, contextFactory=server.tls_context)
        self.init_framing()
        self.server = server
        self.settings = server.settings
        self.host = server.settings.hostname
        self.timeout = server.settings.idleTimeout
        self.callLater = server.clock.callLater  # TimeoutMixin's timer, on our clock
        self.secure = implicit_tls
        self.client_host = ""
        self.client_ip = None
        self.admitted = False
        self.helo_name: str | None = None
        self.extended = False  # EHLO (True) or HELO (False)
        self.sender: Path | None = None
        self.recipients: list[str] = []
        self.body_type: str | None = None
        self.close_when_idle = False
        #: The last reply of a session closed when idle (shutdown, or a deadline).
        self.closing_reply = (421, "4.3.2", f"{server.settings.hostname} Service shutting down, try again later")
        self.transactions = 0
        self._errors = 0
        self._message = None
        self._reader: DataReader | None = None
        self._first_chunk = True
        self._timers: dict[str, Any] = {}  # the session's deadlines, by name
        self.flow: OutputBound | None = None  # bounds replies the client does not read
        self._data_started = 0.0
        self.account: Any = None  # the AuthSuccess of a successful AUTH
        self._auth_failures = 0
        self._auth_step: Any = None  # while an AUTH exchange waits for the client's next line

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)  # replies are small writes; never hold one back for an ACK
        peer = self.transport.getPeer()
        self.client_host = str(getattr(peer, "host", "") or "")
        self.client_ip = parse_ip(self.client_host)
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
        if self.transport.disconnecting:
            return
        if refusal is not None:
            return self.hang_up(*refusal)
        if not self.exempt_from_sync() and self.settings.greetingDelay:
            await deferLater(self.server.clock, self.settings.greetingDelay, lambda: None)
            if self.transport.disconnecting:
                return
        self.greeted = True
        self.sendCode(220, self.host + b" ESMTP gomail")
        self._process()  # what a trusted client sent early

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self.flow is not None:
            self.flow.detach()
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        if self.mode == DATA and self._message is not None:
            self._message.abort()
            self._message = None
        if self.admitted:
            self.server.release(self)

    def _output_stuck(self) -> None:
        self.close_connection()  # still paused: aborted

    def close_connection(self) -> None:
        """
        Close once the replies written are sent; a client that is not reading
        them would keep the connection forever, so it is aborted instead.
        """
        if self.flow is not None:
            unread = self.flow.paused
            self.flow.detach()  # a registered producer would hold the close back
            if unread:
                self.server.rejections["output_unread"] += 1
                self.transport.abortConnection()
                return
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        self.hang_up(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded")

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
            # A message is being committed: its client gets the 250 first (or
            # would send it again), then the 421.
            self.close_when_idle = True
        else:
            self.hang_up(*self.closing_reply)

    def _data_too_slow(self) -> None:
        self.log.info("DATA from {client} slower than smtp.minDataRate", client=self.client_host)
        self.server.rejections["data_rate"] += 1
        self.hang_up(421, "4.4.2", f"{self.settings.hostname} Error: data rate too low")

    def _data_deadline(self) -> None:
        """DATA must arrive at smtp.minDataRate, after an allowance of one idle timeout."""
        rate = self.settings.minDataRate
        if rate and self._reader is not None:
            allowed = self._data_started + self.timeout + self._reader.size / rate
            self._deadline("data", max(0.0, allowed - self.server.clock.seconds()), self._data_too_slow)

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

    def do_HELO(self, rest: bytes) -> None:
        self._greet(rest, extended=False)

    def do_EHLO(self, rest: bytes) -> None:
        self._greet(rest, extended=True)

    def _greet(self, rest: bytes, extended: bool) -> None:
        if not _HELO_NAME.match(rest):
            self.reply(501, "5.5.4", f"Syntax: {'EHLO' if extended else 'HELO'} hostname")
            return
        self.helo_name = rest.decode("ascii")
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
        return lines

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

    # -- the mail transaction ------------------------------------------------

    def do_MAIL(self, rest: bytes) -> None:
        if self.helo_name is None:
            return self.reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if self.sender is not None:
            return self.reply(503, "5.5.1", "Error: nested MAIL command")
        try:
            path = parse_path(rest, b"FROM", allow_null=True)
            body_type = self._check_mail_params(path)
        except AddressError as e:
            return self.reply(e.code, e.status, e.text)
        return Deferred.fromCoroutine(self._accept_sender(path, body_type))

    async def _accept_sender(self, path: Path, body_type: str | None) -> None:
        refusal = await self.server.mail_refusal(self, path)
        if refusal is not None:
            return self.reply(*refusal)
        self.sender, self.recipients, self.body_type = path, [], body_type
        self.reply(250, "2.1.0", "Sender ok")

    def _check_mail_params(self, path: Path) -> str | None:
        body_type = None
        for key, value in path.params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    raise AddressError(501, "5.5.4", "Syntax: SIZE=<octets>")
                if int(value) > self.settings.maxMessageSize:
                    raise AddressError(552, "5.3.4", "Message size exceeds fixed maximum message size")
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise AddressError(501, "5.5.4", "Syntax: BODY=7BIT or BODY=8BITMIME")
                body_type = value.upper()
            elif key != "AUTH":  # RFC 4954 AUTH=<mailbox> is informational: ignored
                raise AddressError(555, "5.5.4", f"Unsupported MAIL parameter {key}")
        return body_type

    def do_RCPT(self, rest: bytes) -> Any:
        if self.sender is None:
            return self.reply(503, "5.5.1", "Error: need MAIL command")
        try:
            path = parse_path(rest, b"TO", allow_null=False)  # canonical from here on
        except AddressError as e:
            return self.reply(e.code, e.status, e.text)
        if path.params:
            return self.reply(555, "5.5.4", f"Unsupported RCPT parameter {next(iter(path.params))}")
        if len(self.recipients) >= self.settings.maxRecipients:
            return self.reply(452, "4.5.3", "Error: too many recipients")
        refusal = self.server.rcpt_refusal(self, path)
        if refusal is not None:
            return self.reply(*refusal)

        def decided(outcome: Any) -> None:
            # gomail.smtp.recipients: users, aliases (expanded here), postmaster, catch-alls.
            if self.transport.disconnecting:
                return
            if hasattr(outcome, "reason"):
                self.server.rejections[outcome.reason] += 1
                return self.reply(*outcome.reply)
            for address in outcome.addresses:
                if address not in self.recipients:
                    self.recipients.append(address)
            self.reply(250, "2.1.5", "Recipient ok")

        # Pipelined input waits while a lookup is pending (see _wait_for).
        return self.server.recipients.check(path, self.recipients, self.settings.maxRecipients,
                                            self.client_host).addCallback(decided)

    def do_DATA(self, rest: bytes) -> None:
        if rest:
            return self.reply(501, "5.5.4", "Syntax: DATA")
        if self.sender is None:
            return self.reply(503, "5.5.1", "Error: need MAIL command")
        if not self.recipients:
            return self.reply(554, "5.5.1", "Error: no valid recipients")
        self._message = message = self.server.spool.new_message()
        message.on_drain = self._message_drained
        message.write(received_header(self, message.id, self.server.clock.seconds()))
        self._first_chunk = True
        self._reader = DataReader(
            self._content, self.settings.maxMessageSize, self.settings.maxLineLength,
            normalize=self.settings.bareLineEndings == "normalize")
        self.mode = DATA
        self._data_started = self.server.clock.seconds()
        self._data_deadline()
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")

    def _content(self, block: bytes) -> None:
        if self._first_chunk:
            self._first_chunk = False
            if not _HEADER_START.match(block):
                self._message.write(b"\r\n")  # no header section: keep the body out of ours
        self._message.write(block)
        if self._message.backlog > self._message.HIGH_WATER:
            self._pause("disk")

    def _message_drained(self) -> None:
        message = self._message
        if message is None or message.backlog <= message.HIGH_WATER // 2:
            self._resume("disk")

    def _data_received(self) -> None:
        data, self._input = self._input, b""
        self.resetTimeout()
        rest = self._reader.feed(data)
        self._data_deadline()
        if rest is not None:
            self._input = rest
            self.mode = COMMAND
            self._wait_for(Deferred.fromCoroutine(self._end_of_data()))

    async def _end_of_data(self) -> None:
        message, reader = self._message, self._reader
        self._message = self._reader = None
        self._deadline("data", 0, None)
        self._resume("disk")
        sender, recipients, body_type = self.sender, self.recipients, self.body_type
        self.reset_transaction()
        if reader.error is not None:
            await message.abort()
            self.reply(reader.error.code, reader.error.status, reader.error.text)
            return
        now = self.server.clock.seconds()
        envelope = Envelope(
            id=message.id, sender=sender.address, recipients=[Recipient(a) for a in recipients],
            received=now, next_attempt=now, client_address=self.client_host,
            client_helo=self.helo_name or "", tls=self.secure, body_type=body_type,
            auth_user=self.account.name if self.account is not None else None,
        )
        try:
            await message.commit(envelope)
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EFBIG:
                # A file-size limit (RLIMIT_FSIZE, a quota's): this message can never be stored.
                self.log.error("could not queue a message from {client}: {error}", client=self.client_host,
                               error=e.strerror)
                self.reply(552, "5.3.4", "Message too big for system")
                return
            self.log.failure("could not queue a message from {client}", client=self.client_host)
            self.reply(451, "4.3.0", "Local error in processing; message not accepted, try again later")
            return
        self.reply(250, "2.0.0", f"Ok: queued as {envelope.id}")
        self.server.accepted(self, envelope)
        self.junk_commands = 0  # as Postfix: junk is counted between accepted messages
        self.transactions += 1
        if self.transactions >= self.settings.maxTransactions:
            self.log.info("closing the session with {client} after {count} messages (smtp.maxTransactions)",
                          client=self.client_host, count=self.transactions)
            self.hang_up(421, "4.4.2", f"{self.settings.hostname} Error: too many messages in one session")
