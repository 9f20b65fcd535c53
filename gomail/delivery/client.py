"""
The SMTP client side of relaying: one connection to a smarthost carrying many
transactions, built on twisted.mail's ESMTPClient (EHLO, STARTTLS, AUTH and
the MAIL/RCPT/DATA/RSET state machine are Twisted's).

What we add: transactions are queued on the connection and answered one by
one with a per-recipient result; the connection idles between them (RSET
already sent) so a pool can reuse it; every wait for the server is bounded by
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
from twisted.mail.smtp import SUCCESS, ESMTPClient, LOGINAuthenticator, PLAINAuthenticator, SMTPClientError
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

    def smtpState_from(self, code: int, resp: bytes) -> None:
        if not self.ready.called:
            self.ready.callback(self)
        if not self._pending:
            self.idle = True
            self.setTimeout(None)
            return
        self._current = self._pending.popleft()
        super().smtpState_from(code, resp)

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
