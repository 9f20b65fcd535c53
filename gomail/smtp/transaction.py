# -*- test-case-name: tests.test_smtp_protocol,tests.test_smtp_recipients -*-
"""
The mail transaction of an SMTP session: MAIL, RCPT, DATA and the commit.

A mixin for L{gomail.smtp.protocol.GomailESMTP}. MAIL and RCPT ask the
L{SMTPServer} for its decisions (relay rules, ownership, limits, recipients);
DATA streams the content straight to the spool as it arrives, bounded by
C{smtp.minDataRate}; the 250 is sent only once the message is durable.
"""

from __future__ import annotations

import errno
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail.smtp import COMMAND, DATA

from gomail.extension.smtpdata import plugin_verdict
from gomail.smtp.address import AddressError, Path, parse_path
from gomail.smtp.reader import DataReader
from gomail.smtp.received import received_header
from gomail.smtp.session import SessionAPI
from gomail.spool.envelope import Envelope, Recipient

_HEADER_START = re.compile(rb"^[\x21-\x39\x3b-\x7e]+:|^\r\n")


class MailTransactionMixin(SessionAPI):
    """MAIL, RCPT and DATA for an SMTP session (uses its C{server}, C{settings}, C{reply}...)."""

    def do_MAIL(self, rest: bytes) -> Deferred | None:
        """MAIL FROM: a Deferred while the sender is checked (ownership, rate limits), else None."""
        if self.helo_name is None:
            self.reply(503, "5.5.1", "Error: send HELO/EHLO first")
        elif self.sender is not None:
            self.reply(503, "5.5.1", "Error: nested MAIL command")
        else:
            try:
                path = parse_path(rest, b"FROM", allow_null=True)
                body_type = self._check_mail_params(path)
            except AddressError as e:
                self.reply(e.code, e.status, e.text)
            else:
                return Deferred.fromCoroutine(self._accept_sender(path, body_type))
        return None

    async def _accept_sender(self, path: Path, body_type: str | None) -> None:
        refusal = await self.server.mail_refusal(self, path)
        if refusal is None and self.server.hooks.active:
            refusal = await self.server.hooks.refusal("mail_from", self, path.address)
            if refusal is not None:
                self.server.rejections["plugin"] += 1
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
            # Counted as junk: RCPTs past the limit would otherwise keep a session busy forever.
            if self.count_junk():
                return None
            return self.reply(452, "4.5.3", "Error: too many recipients")
        refusal = self.server.rcpt_refusal(self, path)
        if refusal is not None:
            return self.reply(*refusal)

        def decided(outcome: Any) -> Any:
            # gomail.smtp.recipients: users, aliases (expanded here), postmaster, catch-alls.
            if self.closed or self.transport.disconnecting:
                return None
            if hasattr(outcome, "reason"):
                self.server.rejections[outcome.reason] += 1
                return self.reply(*outcome.reply)
            new = [a for a in dict.fromkeys(outcome.addresses) if a not in self.recipients]
            if not new and self.count_junk():  # a repeated RCPT moves nothing forward
                return None
            if self.server.hooks.active:
                return Deferred.fromCoroutine(self._accept_recipients(path.address, new))
            self.recipients.extend(new)
            self.reply(250, "2.1.5", "Recipient ok")
            return None

        # Pipelined input waits while a lookup is pending (see _wait_for).
        return self.server.recipients.check(path, self.recipients, self.settings.maxRecipients,
                                            self.client_host).addCallback(decided)

    async def _accept_recipients(self, address: str, new: list[str]) -> None:
        """RCPT TO accepted by gomail's rules: the addresses go in once the plugins' hooks agree."""
        refusal = await self.server.hooks.refusal("rcpt_to", self, address)
        if self.closed or self.transport.disconnecting:
            return
        if refusal is not None:
            self.server.rejections["plugin"] += 1
            return self.reply(*refusal)
        self.recipients.extend(new)
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
        self._headers = self.server.hooks.stripper()
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
                if self._headers is not None:
                    self._headers.no_header_section()
        if self._headers is not None:
            block = self._headers.feed(block)
        # Whole CRLF lines (the reader saw to it, and reports lines starting with a dot).
        self._message.write(block, lines_checked=True)
        if self._message.backlog > self._message.HIGH_WATER:
            self._pause("disk")

    def _message_drained(self) -> None:
        message = self._message
        if message is None or message.backlog <= message.HIGH_WATER // 2:
            self._resume("disk")

    def _data_received(self) -> None:
        data, self._input = self._input, b""
        self.resetTimeout()
        assert self._reader is not None  # DATA mode: do_DATA made it
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
        assert message is not None and reader is not None and sender is not None  # set by MAIL and DATA
        if self._headers is not None:
            message.write(self._headers.finish())
            self._headers = None
        if reader.dot_lines:
            message.transparent = False
        if reader.error is None and self.server.hooks.active:
            refusal = await plugin_verdict(self, message, sender.address, recipients)
            if self.lost:
                # Gone while the hooks decided: it never sees a 250, so it will send the message again.
                await message.abort()
                return
            if refusal is not None:
                self.reset_transaction()
                await message.abort()
                self.server.rejections["plugin"] += 1
                return self.reply(*refusal)
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
        except Exception as e:  # noqa: BLE001 -- any commit failure: 451, the client retries
            if isinstance(e, OSError) and e.errno == errno.EFBIG:
                # A file-size limit (RLIMIT_FSIZE, a quota's): this message can never be stored.
                self.log.error("could not queue a message from {client}: {error}", client=self.client_host,
                               error=e.strerror)
                self.reply(552, "5.3.4", "Message too big for system")
                return None
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

    def _data_too_slow(self) -> None:
        self.log.info("DATA from {client} slower than smtp.minDataRate", client=self.client_host)
        self.server.rejections["data_rate"] += 1
        self.hang_up(421, "4.4.2", f"{self.settings.hostname} Error: data rate too low")

    def _data_deadline(self) -> None:
        """DATA must arrive at smtp.minDataRate, after an allowance of one idle timeout."""
        rate = self.settings.minDataRate
        if rate and self._reader is not None:
            allowed = self._data_started + self.settings.idleTimeout + self._reader.size / rate
            self._deadline("data", max(0.0, allowed - self.server.clock.seconds()), self._data_too_slow)
