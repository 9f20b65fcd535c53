"""
gomail's ESMTP server protocol: twisted.mail's ESMTP with its gaps closed.

What this class changes from twisted.mail.smtp.ESMTP, and why:

- Input is parsed here, not by LineOnlyReceiver: a command whose answer is not
  ready yet (a Deferred) holds back the pipelined commands behind it, so replies
  stay in order; DATA content is handled in chunks by L{DataReader}, which only
  ends a message at <CRLF>.<CRLF> and never drops back into command mode in the
  middle of a message (an over-long line fails the message, not the session).
- Plaintext pipelined behind STARTTLS is discarded and the session is reset.
- Every reply carries an enhanced status code; local failures answer 451 4.3.0.
- Command lines are bounded and may not hold control characters, so nothing a
  client sends reaches our Received: header unchecked.
- Message content goes straight to the spool as it arrives.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail.smtp import COMMAND, DATA, ESMTP

from gomail.auth.checker import AuthFailure, LoginAttempt, TemporaryAuthError
from gomail.smtp.address import AddressError, Path, parse_path
from gomail.smtp.policy import parse_ip
from gomail.smtp.reader import DataReader
from gomail.smtp.received import received_header
from gomail.spool.envelope import Envelope, Recipient
from gomail.tcp import no_delay

if TYPE_CHECKING:
    from gomail.smtp.server import SMTPServer

MAX_COMMAND_LINE = 2048
#: Pipelined input held while a reply is pending, before the client is paused.
MAX_PIPELINE_BUFFER = 64 * 1024
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HELO_NAME = re.compile(rb"^[\x21-\x7e]{1,255}$")
_HEADER_START = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:|^\r\n")


class GomailESMTP(ESMTP):
    """One SMTP session. Shared state and settings come from the L{SMTPServer}."""

    log = Logger()

    def __init__(self, server: "SMTPServer", implicit_tls: bool = False) -> None:
        super().__init__(chal={}, contextFactory=server.tls_context)
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
        self._input = b""
        self._blocked = False
        self._processing = False
        self._skip_long_line = False
        self._paused_for: set[str] = set()
        self._errors = 0
        self._message = None
        self._reader: DataReader | None = None
        self._first_chunk = True
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
        self.sendCode(220, self.host + b" ESMTP gomail")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self.mode == DATA and self._message is not None:
            self._message.abort()
            self._message = None
        if self.admitted:
            self.server.release(self)

    def timeoutConnection(self) -> None:
        self.reply(421, "4.4.2", f"{self.settings.hostname} Error: timeout exceeded")
        self.transport.loseConnection()

    @property
    def in_transaction(self) -> bool:
        """Whether a mail transaction is under way (MAIL given, DATA open, or a reply pending)."""
        return self.sender is not None or self.mode == DATA or self._blocked

    def close_gracefully(self) -> None:
        """Shutting down: close now if idle, else right after the current transaction."""
        if self.in_transaction:
            self.close_when_idle = True
        else:
            self.reply(421, "4.3.2", f"{self.settings.hostname} Service shutting down, try again later")
            self.transport.loseConnection()

    # -- replies ------------------------------------------------------------

    def reply(self, code: int, status: str, text: str) -> None:
        """Send one reply line with its enhanced status code; too many errors end the session."""
        super().sendCode(code, f"{status} {text}".encode("ascii", "replace"))
        # 421 ends the session anyway; 452 4.5.3 is the normal answer to a large
        # recipient list (RFC 5321 4.5.3.1.10), not a client error.
        if code >= 400 and code != 421 and status != "4.5.3":
            self._errors += 1
            if self._errors >= self.settings.maxErrors:
                super().sendCode(421, b"4.7.0 Too many errors, closing connection")
                self.transport.loseConnection()

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._input += data
        if not self._processing:
            self._process()

    def _process(self) -> None:
        self._processing = True
        try:
            while self._input and not self._blocked and not self.transport.disconnecting:
                if self.mode == DATA:
                    self._data_received()
                else:
                    if not self._next_line():
                        break
        finally:
            self._processing = False
        if self._blocked and len(self._input) > MAX_PIPELINE_BUFFER:
            self._pause("pipeline")

    def _next_line(self) -> bool:
        end = self._input.find(b"\r\n")
        if end < 0:
            if len(self._input) > MAX_COMMAND_LINE + 1:  # +1: a CR may wait for its LF
                # Keep a final CR: it may be the first half of the long line's CRLF.
                self._input = b"\r" if self._input.endswith(b"\r") else b""
                if not self._skip_long_line:
                    self.reply(500, "5.5.2", "Line too long")
                self._skip_long_line = True
            return False
        line, self._input = self._input[:end], self._input[end + 2:]
        if self._skip_long_line:
            self._skip_long_line = False
            return True
        if len(line) > MAX_COMMAND_LINE:
            self.reply(500, "5.5.2", "Line too long")
            return True
        self.resetTimeout()
        self._wait_for(getattr(self, "state_" + self.mode)(line))
        return True

    def _wait_for(self, result: Any) -> None:
        """Hold further input until a pending reply (a Deferred) is sent."""
        if isinstance(result, Deferred) and not result.called:
            self._blocked = True
            result.addErrback(self._internal_error)
            result.addBoth(self._unblock)
        elif isinstance(result, Deferred):
            result.addErrback(self._internal_error)
        # A transaction that ended at once (RSET, a synchronous commit) ends a drain too.
        if self.close_when_idle and not self.in_transaction and not self.transport.disconnecting:
            self.close_gracefully()

    def _unblock(self, _: Any) -> None:
        self._blocked = False
        self._resume("pipeline")
        if self.close_when_idle and not self.in_transaction:
            self.close_gracefully()
        elif not self._processing:
            self._process()

    def _internal_error(self, failure: Any) -> None:
        self.log.failure("internal error in SMTP session with {client}", failure, client=self.client_host)
        self.reply(451, "4.3.0", "Local error in processing, try again later")

    def _pause(self, reason: str) -> None:
        if not self._paused_for:
            self.transport.pauseProducing()
        self._paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self._paused_for:
            self._paused_for.discard(reason)
            if not self._paused_for:
                self.transport.resumeProducing()

    def state_COMMAND(self, line: bytes) -> Any:
        if _CONTROL.search(line):
            self.reply(501, "5.5.2", "Invalid character in command line")
            return None
        verb, _, rest = line.strip().partition(b" ")
        if not verb:
            self.reply(500, "5.5.2", "Error: bad syntax")
            return None
        method = self.lookupMethod(verb) if verb.isascii() else None
        if method is None:
            self.reply(500, "5.5.2", "Error: command not recognized")
            return None
        return method(rest.strip())

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
            self.secure = self.startedTLS = True
            self.helo_name = None
            self.authenticated = False
            self.account = None
            self.reset_transaction()

    # -- AUTH (RFC 4954): PLAIN and LOGIN, inside TLS only -----------------------

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

    def state_AUTH(self, line: bytes) -> Any:
        step, self._auth_step = self._auth_step, None
        self.mode = COMMAND
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

    def _login(self, username: str, password: str) -> Deferred:
        attempt = LoginAttempt(username, password, self.client_host or None, "smtp")
        return Deferred.fromCoroutine(self._finish_login(attempt))

    async def _finish_login(self, attempt: LoginAttempt) -> None:
        from gomail.auth.checker import login

        try:
            account = await login(self.server.portal, attempt)
        except AuthFailure as failure:
            self._auth_failures += 1
            self.log.info("SMTP AUTH failed from {client} ({reason})", client=self.client_host, reason=failure.reason)
            self.reply(535, "5.7.8", "Authentication credentials invalid")
            if self._auth_failures >= self.server.auth_settings.maxFailuresPerSession:
                self.reply(421, "4.7.0", f"{self.settings.hostname} Too many failed authentications, closing")
                self.transport.loseConnection()
            return
        except TemporaryAuthError:
            self.reply(454, "4.7.0", "Temporary authentication failure, try again later")
            return
        self.account = account
        self.authenticated = True
        self.log.info("SMTP AUTH succeeded from {client} ({via})", client=self.client_host, via=account.via)
        self.reply(235, "2.7.0", "Authentication successful")

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
        self.transport.loseConnection()

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

    def do_RCPT(self, rest: bytes) -> None:
        if self.sender is None:
            return self.reply(503, "5.5.1", "Error: need MAIL command")
        try:
            path = parse_path(rest, b"TO", allow_null=False)
        except AddressError as e:
            return self.reply(e.code, e.status, e.text)
        if path.params:
            return self.reply(555, "5.5.4", f"Unsupported RCPT parameter {next(iter(path.params))}")
        if len(self.recipients) >= self.settings.maxRecipients:
            return self.reply(452, "4.5.3", "Error: too many recipients")
        refusal = self.server.rcpt_refusal(self, path)
        if refusal is not None:
            return self.reply(*refusal)
        if not path.domain:  # <Postmaster>, the one address without a domain (RFC 5321 4.5.1)
            path = Path(f"postmaster@{self.settings.hostname}", path.params)
        if path.address not in self.recipients:
            self.recipients.append(path.address)
        self.reply(250, "2.1.5", "Recipient ok")

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
        if rest is not None:
            self._input = rest
            self.mode = COMMAND
            self._wait_for(Deferred.fromCoroutine(self._end_of_data()))

    async def _end_of_data(self) -> None:
        message, reader = self._message, self._reader
        self._message = self._reader = None
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
        except Exception:
            self.log.failure("could not queue a message from {client}", client=self.client_host)
            self.reply(451, "4.3.0", "Local error in processing; message not accepted, try again later")
            return
        self.reply(250, "2.0.0", f"Ok: queued as {envelope.id}")
        self.server.accepted(self, envelope)
