"""
The SMTP client side of relaying: one connection to a smarthost carrying many
transactions, built on twisted.mail's ESMTPClient (EHLO, STARTTLS and AUTH are
Twisted's, and so is the MAIL/RCPT/DATA/RSET state machine for a server that
does not offer PIPELINING).

What we add: transactions are queued on the connection and answered one by
one with a per-recipient result; the connection idles between them so a pool
can reuse it; to a server offering PIPELINING (RFC 2920) a transaction is one
write of MAIL, every RCPT and DATA (behind an RSET when the one before ended
early), then the content: two round trips instead of the three-plus-one-per-
recipient of Twisted's machine, which also sends an RSET after every message;
every wait for the server is bounded by
C{command_timeout} on the injected clock; and the message is sent with
dot-stuffing that holds across chunk boundaries and turns any bare CR or LF
into CRLF, so no stored byte sequence can end the DATA early; the content is
read in the I/O pool (L{gomail.delivery.content}), never on the reactor.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.mail.smtp import (SUCCESS, ESMTPClient, LOGINAuthenticator, PLAINAuthenticator, SMTPClientError,
                               quoteaddr)
from twisted.python.failure import Failure

from gomail.delivery.content import ContentSource, send_content
from gomail.tcp import no_delay

Reply = tuple[int, str]
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


class ConnectionFailure(Exception):
    """The connection (not one recipient) failed: every recipient of the transaction is deferred or failed."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code, self.text = code, text

    @property
    def reply(self) -> Reply:
        """The reply to record for each recipient (4xx unless the server said 5xx)."""
        if 400 <= self.code < 600:
            return self.code, self.text
        return 451, f"4.4.0 {self.text}"


@dataclass
class Transaction:
    """One MAIL/RCPT/DATA exchange; C{done} fires with {recipient: (code, text)}."""

    sender: str
    recipients: list[str]
    open_content: Callable[[], ContentSource]
    done: Deferred = field(default_factory=Deferred)


class DotStuffer:
    """
    Turns stored content into DATA bytes: CRLF line endings only, a dot
    doubled at the start of every line, whatever the chunk boundaries.
    """

    def __init__(self) -> None:
        self._carry = b""
        self._line_start = True

    #: An incomplete line longer than this is sent on rather than held.
    MAX_CARRY = 64 * 1024

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send for C{chunk}; an incomplete last line is held back."""
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > self.MAX_CARRY:
            # No line end for a long while: send, keeping a final CR (half a CRLF?).
            cut = len(data) - 1 if data.endswith(b"\r") else len(data)
        self._carry, data = data[cut:], data[:cut]
        return self._stuff(data)

    def finish(self) -> bytes:
        """The held-back rest, the final CRLF if missing, and the end-of-data line."""
        rest = self._stuff(self._carry)
        self._carry = b""
        if rest and not rest.endswith(b"\r\n"):
            rest += b"\r\n"
        elif not rest and not self._line_start:
            rest = b"\r\n"
        return rest + b".\r\n"

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        data = _LINE_ENDING.sub(b"\r\n", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        # replace() cannot see a dot that starts the next chunk's first line.
        self._line_start = data.endswith(b"\r\n")
        return data


class RelayProtocol(ESMTPClient):
    """
    One connection to a smarthost.

    C{ready} fires once the server greeted us, TLS and AUTH (as configured) are
    done and transactions can be sent; it fails with L{ConnectionFailure}
    otherwise. L{send} queues a transaction. When nothing is queued the
    connection is idle; L{close} sends QUIT.
    """

    debug = False
    heloFallback = True

    def __init__(self, identity: str, clock: IReactorTime, command_timeout: float,
                 username: str = "", password: str = "", tls_context: Any = None,
                 require_tls: bool = False, implicit_tls: bool = False) -> None:
        secret = password.encode() if username else None
        super().__init__(secret, tls_context, identity=identity.encode("ascii"))
        if username:
            self.registerAuthenticator(PLAINAuthenticator(username.encode()))
            self.registerAuthenticator(LOGINAuthenticator(username.encode()))
            self.requireAuthentication = True
            # Credentials never travel in plaintext.
            require_tls = True
        self.requireTransportSecurity = require_tls
        self.implicit_tls = implicit_tls
        self.timeout = command_timeout
        self.callLater = clock.callLater
        self.ready: Deferred = Deferred()
        self.idle = False
        self.closed = False
        self._pending: deque[Transaction] = deque()
        self._current: Transaction | None = None
        self._stuffer: DotStuffer | None = None
        #: Whether the server's last EHLO (after STARTTLS, if any) offered PIPELINING.
        self.pipelining = False
        # Pipelined transactions: the replies still due, in order, and those received.
        self._due: deque[tuple[str, str]] = deque()
        self._mail_reply: tuple[int, bytes] = (0, b"")
        self._rcpt_replies: list[tuple[str, int, bytes]] = []
        self._reset_due = False

    # -- the pool's interface ----------------------------------------------------

    def send(self, transaction: Transaction) -> Deferred:
        """Queue a transaction; its C{done} fires with the per-recipient replies."""
        if self.closed:
            transaction.done.errback(ConnectionFailure(451, "4.4.0 Connection to smarthost closed"))
            return transaction.done
        self._pending.append(transaction)
        if self.idle:
            self.idle = False
            self.setTimeout(self.timeout)
            self.smtpState_from(250, b"")
        return transaction.done

    def close(self) -> None:
        """Say QUIT when idle; otherwise drop the connection (what is under way fails)."""
        if self.closed:
            return
        if self.idle:
            self.idle = False
            self._disconnectFromServer()
        else:
            self.closed = True
            self._fail_all(ConnectionFailure(451, "4.4.2 Connection to smarthost closed"))
            self.transport.loseConnection()

    # -- ESMTPClient hooks ------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        super().connectionMade()
        if self.implicit_tls:
            self._tlsMode = True  # wrapped in TLS from the first byte (port 465 style)

    def lineReceived(self, line: bytes) -> Any:
        if line[:4] == b"421 ":
            # The server is closing the connection: a connection-level failure
            # whatever the command, never something to RSET and carry on from.
            self.resetTimeout()
            self._fail_all(ConnectionFailure(421, _text(line[4:])))
            self.transport.loseConnection()
            return None
        return super().lineReceived(line)

    def authenticate(self, code: int, resp: bytes, items: dict) -> None:
        # Called with the extensions of the EHLO that mail will follow (the one after STARTTLS).
        self.pipelining = any(key.upper() == b"PIPELINING" for key in items)
        super().authenticate(code, resp, items)

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if not self.ready.called:
            self.ready.callback(self)
        if not self._pending:
            self.idle = True
            self.setTimeout(None)
            # Idle: any reply now answers nothing we sent.
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self._unexpected_reply
            return
        self._current = self._pending.popleft()
        if self.pipelining:
            self._pipeline(self._current)
        else:
            super().smtpState_from(code, resp)

    # -- PIPELINING (RFC 2920) ----------------------------------------------------

    def _pipeline(self, transaction: Transaction) -> None:
        """Send MAIL, every RCPT and DATA at once; the replies come back in that order."""
        commands, due = ([b"RSET"], [("rset", "")]) if self._reset_due else ([], [])
        commands.append(b"MAIL FROM:" + quoteaddr(transaction.sender))
        due.append(("mail", ""))
        for address in transaction.recipients:
            commands.append(b"RCPT TO:" + quoteaddr(address))
            due.append(("rcpt", address))
        commands.append(b"DATA")
        due.append(("data", ""))
        self._due = deque(due)
        self._reset_due = False
        self._mail_reply, self._rcpt_replies = (0, b""), []
        self._expected = range(0, 1000)  # every reply goes to _pipelined_reply, in order
        self._okresponse = self._failresponse = self._pipelined_reply
        self.transport.write(b"".join(command + b"\r\n" for command in commands))

    def _unexpected_reply(self, code: int, resp: bytes) -> None:
        # A reply to nothing we sent (while idle, or one too many): the session is out of step.
        self.sendError(SMTPClientError(code, b"Unexpected reply: " + resp, isFatal=True))

    def _pipelined_reply(self, code: int, resp: bytes) -> None:
        if not self._due:
            self._unexpected_reply(code, resp)
            return
        step, address = self._due.popleft()
        if step == "mail":
            self._mail_reply = (code, resp)
        elif step == "rcpt":
            self._rcpt_replies.append((address, code, resp))
        elif step == "data":
            self._data_reply(code, resp)
        elif step == "discard":
            self._finish_pipelined(None, reset=False)
        # "rset": its 250 needs nothing (a 421 is handled in lineReceived)

    def _data_reply(self, code: int, resp: bytes) -> None:
        accepted = self._mail_reply[0] == 250 and any(c in SUCCESS for _, c, _ in self._rcpt_replies)
        if code == 354 and accepted:
            self.smtpState_data(code, resp)
            self._expected = range(0, 1000)
            self._okresponse = self._failresponse = self._final_reply
        elif code == 354:
            # DATA accepted with no recipient accepted (RFC 2920 3.1): end the empty message at once.
            self._due.append(("discard", ""))
            self.transport.write(b".\r\n")
        elif 400 <= code < 600:
            self._finish_pipelined((code, resp), reset=True)
        else:
            self.sendError(SMTPClientError(code, b"Unexpected reply to DATA: " + resp, isFatal=True))

    def _final_reply(self, code: int, resp: bytes) -> None:
        self._finish_pipelined((code, resp), reset=False)

    def _finish_pipelined(self, final: tuple[int, bytes] | None, reset: bool) -> None:
        """
        Answer the transaction: a failed MAIL is every recipient's reply; otherwise a
        refused recipient keeps its RCPT reply and an accepted one gets C{final} (the
        reply to DATA or to the end of data). Then the next transaction, or idle.
        """
        transaction, self._current = self._current, None
        if transaction is None:  # already failed with the connection
            return
        # A transaction ended before its end of data may still be open on the server.
        self._reset_due = reset
        mail_code, mail_resp = self._mail_reply
        replies: dict[str, Reply] = {}
        if mail_code != 250:
            replies = {address: (mail_code, _text(mail_resp)) for address in transaction.recipients}
        for address, rcpt_code, rcpt_resp in self._rcpt_replies:
            if rcpt_code in (250, 251) and final is not None:
                replies.setdefault(address, (final[0], _text(final[1])))
            else:
                replies.setdefault(address, (rcpt_code, _text(rcpt_resp)))
        if not transaction.done.called:
            transaction.done.callback(replies)
        self.smtpState_from(250, b"")

    def getMailFrom(self) -> str | None:
        return self._current.sender if self._current is not None else None

    def getMailTo(self) -> list[str]:
        return self._current.recipients

    def smtpState_data(self, code: int, resp: bytes) -> None:
        # Twisted's version hands getMailData()'s file to a FileSender, which reads it on
        # the reactor thread; this one reads in the I/O pool (same states afterwards).
        self._stuffer = DotStuffer()
        sending = send_content(self._current.open_content(), self.transport, self.transformChunk)
        sending.addCallbacks(self._content_sent, lambda failure: self.sendError(failure.value))
        self._expected = SUCCESS
        self._okresponse = self.smtpState_msgSent

    def _content_sent(self, complete: bool) -> None:
        if complete:  # else the connection went away: connectionLost answers for the transaction
            self.transport.write(self._stuffer.finish())

    def transformChunk(self, chunk: bytes) -> bytes:
        self.resetTimeout()
        return self._stuffer.feed(chunk)

    def sentMail(self, code: int, resp: bytes, numOk: int, addresses: list, log: Any) -> None:
        transaction, self._current = self._current, None
        if transaction is None or transaction.done.called:
            return
        final = (code, _text(resp)) if code > 0 else None
        replies: dict[str, Reply] = {}
        for address, rcpt_code, rcpt_resp in addresses:
            key = address.decode() if isinstance(address, bytes) else str(address)
            if rcpt_code in (250, 251) and final is not None:
                replies[key] = final
            else:
                replies[key] = (rcpt_code, _text(rcpt_resp))
        for address in transaction.recipients:
            replies.setdefault(address, final or (451, "4.4.0 No reply from smarthost"))
        transaction.done.callback(replies)

    def sendError(self, exc: Exception) -> None:
        code = getattr(exc, "code", -1)
        code = code if isinstance(code, int) else -1
        text = _text(getattr(exc, "resp", b"") or str(exc))
        if not self.ready.called and 500 <= code < 600:
            # Refused before any transaction (greeting, EHLO, STARTTLS, AUTH): a problem of our
            # session, such as wrong credentials, not of the recipients. Mail waits for the
            # operator instead of bouncing (as Postfix's smtp_sasl_auth_soft_bounce does).
            code, text = 451, f"4.7.0 Smarthost refused the session: {code} {text}"
        self._fail_all(ConnectionFailure(code, text))
        # The connection is on its way out (QUIT, or dropped): nothing more goes on it.
        self.idle = False
        self.closed = True
        super().sendError(exc)

    def connectionLost(self, reason: Failure = None) -> None:
        super().connectionLost(reason)
        self.closed = True
        self.idle = False
        self._fail_all(ConnectionFailure(451, "4.4.2 Connection to smarthost lost"))

    def _fail_all(self, failure: ConnectionFailure) -> None:
        if not self.ready.called:
            self.ready.errback(failure)
        waiting = ([self._current] if self._current is not None else []) + list(self._pending)
        self._current = None
        self._pending.clear()
        for transaction in waiting:
            if not transaction.done.called:
                transaction.done.errback(failure)


def _text(resp: Any) -> str:
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())


__all__ = ["RelayProtocol", "Transaction", "ConnectionFailure", "DotStuffer", "SMTPClientError"]
