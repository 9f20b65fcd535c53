# -*- test-case-name: tests.test_relay_client -*-
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
every wait for the server is bounded by C{command_timeout} on the injected
clock, except the wait for the reply to the final dot, bounded by the longer
C{data_timeout} (RFC 5321 4.5.3.2.6: 10 minutes; the server may be delivering
the message while we wait, so giving up early risks a duplicate); a failure
says which step it waited for (L{RelayProtocol.step}), and one that leaves the
fate of a sent message unknown is marked C{possible_duplicate}; and the message is sent with
dot-stuffing that holds across chunk boundaries and turns any bare CR or LF
into CRLF, so no stored byte sequence can end the DATA early; the content is
read in the I/O pool (L{gomail.delivery.content}), never on the reactor.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.mail.smtp import (
    SUCCESS,
    ESMTPClient,
    LOGINAuthenticator,
    PLAINAuthenticator,
    SMTPClientError,
)
from twisted.python.failure import Failure

from gomail.delivery.content import send_content
from gomail.delivery.dotstuff import DotStuffer
from gomail.delivery.pipelining import PipeliningMixin
from gomail.delivery.transaction import ConnectionFailure, Reply, Transaction
from gomail.delivery.transaction import reply_text as _text
from gomail.tcp import no_delay

#: What we wait for after sending a command, by its verb (see L{RelayProtocol.step}).
_STEPS = {b"EHLO": "EHLO", b"HELO": "HELO", b"STARTTLS": "STARTTLS", b"AUTH": "AUTH", b"MAIL": "MAIL",
          b"RCPT": "RCPT", b"DATA": "DATA", b"RSET": "RSET", b"QUIT": "QUIT"}
#: The step while the content is being written (the server not reading stalls it).
SENDING_CONTENT = "the message content to be sent"
FINAL_DOT = "the final dot"


class RelayProtocol(PipeliningMixin, ESMTPClient):
    """
    One connection to a smarthost.

    C{ready} fires once the server greeted us, TLS and AUTH (as configured) are
    done and transactions can be sent; it fails with L{ConnectionFailure}
    otherwise. L{send} queues a transaction. When nothing is queued the
    connection is idle; L{close} sends QUIT, L{abort} drops it at once.

    @ivar step: what the connection waits for now, for failure texts and logs:
        C{connect}, C{greeting}, C{EHLO}, C{STARTTLS}, C{AUTH}, C{MAIL},
        C{RCPT}, C{DATA}, the content to be sent, C{the final dot}, C{RSET}...
    @ivar awaiting_dot: the final dot of a transaction with accepted
        recipients is sent and its reply has not come yet.
    """

    debug = False
    heloFallback = True
    #: Twisted's SMTPClient: the reply codes the current step expects (a range or a list of codes).
    _expected: Any

    def __init__(self, identity: str, clock: IReactorTime, command_timeout: float,
                 username: str = "", password: str = "", tls_context: Any = None,
                 require_tls: bool = False, implicit_tls: bool = False,
                 data_timeout: float | None = None) -> None:
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
        # TimeoutMixin's idle timeout (twisted declares the attribute as None only).
        self.timeout = command_timeout  # type: ignore[assignment]
        # The wait for the final dot's reply: never shorter than for any other reply.
        self.data_timeout = max(command_timeout, data_timeout if data_timeout is not None else 600.0)
        self.clock = clock
        #: Whether TLS on this connection checks the server's certificate (set by the connector).
        self.verifies = False
        self.step = "connect"
        self.awaiting_dot = False
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

    @property
    def tls(self) -> str:
        """C{verified}, C{unverified} (TLS without a certificate check) or C{none}: for logs and metrics."""
        if not getattr(self, "_tlsMode", False):
            return "none"
        return "verified" if self.verifies else "unverified"

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
            self._fail_all(ConnectionFailure(451, "4.4.2 Connection to smarthost closed",
                                             possible_duplicate=self.awaiting_dot))
            self.transport.loseConnection()

    def abort(self, failure: ConnectionFailure) -> None:
        """Fail what is under way (and C{ready}) with C{failure} and drop the connection at once."""
        self.closed = True
        self.idle = False
        self.setTimeout(None)
        self._fail_all(failure)
        if self.transport is not None:
            self.transport.abortConnection()

    # -- ESMTPClient hooks ------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.step = "greeting"
        super().connectionMade()
        if self.implicit_tls:
            self._tlsMode = True  # wrapped in TLS from the first byte (port 465 style)

    def sendLine(self, line: bytes) -> None:
        verb = line.split(b" ", 1)[0].upper()
        # An AUTH exchange's later lines (base64) leave the step at AUTH.
        self.step = _STEPS.get(verb, self.step)
        super().sendLine(line)

    def lineReceived(self, line: bytes) -> Any:
        if self.awaiting_dot and line[3:4] != b"-":
            # The final dot is answered (whatever the answer): other replies get the shorter wait again.
            self.awaiting_dot = False
            self.setTimeout(self.timeout)
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
            self._expected = range(1000)
            self._okresponse = self._failresponse = self._unexpected_reply
            return
        self._current = self._pending.popleft()
        if self.pipelining:
            self._pipeline(self._current)
        else:
            super().smtpState_from(code, resp)

    def getMailFrom(self) -> str | None:
        return self._current.sender if self._current is not None else None

    def callLater(self, period: Any, func: Any) -> Any:
        """TimeoutMixin's timer, on the injected clock."""
        return self.clock.callLater(period, func)

    def getMailTo(self) -> list[str]:
        return self._current.recipients if self._current is not None else []

    def smtpState_data(self, code: int, resp: bytes) -> None:
        # Twisted's version hands getMailData()'s file to a FileSender, which reads it on
        # the reactor thread; this one reads in the I/O pool (same states afterwards).
        assert self._current is not None  # DATA is only sent for a transaction
        source = self._current.open_content()
        self._stuffer = DotStuffer(transparent=source.transparent)
        self.step = SENDING_CONTENT
        sending = send_content(source, self.transport, self.transformChunk)
        sending.addCallbacks(self._content_sent, lambda failure: self.sendError(failure.value))
        self._expected = SUCCESS
        self._okresponse = self.smtpState_msgSent

    def _content_sent(self, complete: bool) -> None:
        if complete and not self.closed:  # else the connection went away: connectionLost answers for it
            # From here on the smarthost may deliver the message while we wait:
            # its reply gets the long wait, and losing it is a possible duplicate.
            self.step = FINAL_DOT
            self.awaiting_dot = True
            self.setTimeout(self.data_timeout)
            self.transport.write(self._stuffing().finish())

    def _stuffing(self) -> DotStuffer:
        assert self._stuffer is not None  # made in smtpState_data, before any content
        return self._stuffer

    def transformChunk(self, chunk: bytes) -> bytes:
        self.resetTimeout()
        return self._stuffing().feed(chunk)

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

    def timeoutConnection(self) -> None:
        # Twisted's says "Timeout waiting for SMTP server response": this says how long, and for what.
        self.abort(ConnectionFailure(451, f"4.4.2 timeout after {self.timeOut:g} s waiting for {self.step}",
                                     possible_duplicate=self.awaiting_dot))

    def sendError(self, exc: Exception) -> None:
        code = getattr(exc, "code", -1)
        code = code if isinstance(code, int) else -1
        text = _text(getattr(exc, "resp", b"") or str(exc))
        if not self.ready.called and 500 <= code < 600:
            # Refused before any transaction (greeting, EHLO, STARTTLS, AUTH): a problem of our
            # session, such as wrong credentials, not of the recipients. Mail waits for the
            # operator instead of bouncing (as Postfix's smtp_sasl_auth_soft_bounce does).
            code, text = 451, f"4.7.0 Smarthost refused the session at {self.step}: {code} {text}"
        elif not self.ready.called and 400 <= code < 500:
            text = f"{text} (at {self.step})"
        self._fail_all(ConnectionFailure(code, text, possible_duplicate=self.awaiting_dot))
        # The connection is on its way out (QUIT, or dropped): nothing more goes on it.
        self.idle = False
        self.closed = True
        super().sendError(exc)

    # -- our own refusals (Twisted's would read as the smarthost's) ------------------

    def esmtpTLSRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        if self.requireAuthentication:
            text = ("4.7.0 gomail refused to send AUTH in clear: the smarthost offers no STARTTLS "
                    "and credentials are configured (they are only ever sent over TLS)")
        else:
            text = "4.7.0 gomail requires TLS but the smarthost offers no STARTTLS"
        self._refuse(text)

    def esmtpAUTHRequired(self, code: int = -1, resp: bytes | None = None) -> None:
        text = ("4.7.0 gomail cannot log in: credentials are configured but the smarthost offers "
                "no AUTH mechanism gomail supports (PLAIN, LOGIN)")
        self._refuse(text)

    def esmtpEHLORequired(self, code: int = -1, resp: bytes | None = None) -> None:
        self._refuse(f"4.7.0 gomail cannot log in: the smarthost refused EHLO ({code} {_text(resp or b'')}) "
                     "and AUTH needs it")

    def esmtpTLSFailed(self, code: int = -1, resp: bytes | None = None) -> None:
        self._refuse(f"4.7.0 Smarthost refused STARTTLS: {code} {_text(resp or b'')}")

    def esmtpState_starttls(self, code: int, resp: bytes) -> None:
        # Twisted's goes on with EHLO even when TLS could not be started.
        try:
            self.transport.startTLS(self.context)
        except Exception as e:  # noqa: BLE001 - whatever the TLS layer raises ends this session
            self._refuse(f"4.7.0 TLS could not be started after STARTTLS: {e}")
            return
        self._tlsMode = True
        self.esmtpState_ehlo(code, resp)

    def _refuse(self, text: str) -> None:
        """Give up on this session for a reason of ours: fail with C{text}, then QUIT."""
        self._fail_all(ConnectionFailure(451, text))
        self.idle = False
        self.closed = True
        self._disconnectFromServer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        possible_duplicate, self.awaiting_dot = self.awaiting_dot, False
        self.closed = True
        self.idle = False
        why = f" while waiting for {self.step}" if self._current is not None or not self.ready.called else ""
        if reason is not None and not reason.check(ConnectionDone):
            why += f": {reason.getErrorMessage()}"
        self._fail_all(ConnectionFailure(451, f"4.4.2 Connection to smarthost lost{why}",
                                         possible_duplicate=possible_duplicate))

    def _fail_all(self, failure: ConnectionFailure) -> None:
        if not self.ready.called:
            self.ready.errback(failure)
        waiting = ([self._current] if self._current is not None else []) + list(self._pending)
        self._current = None
        self._pending.clear()
        for transaction in waiting:
            if not transaction.done.called:
                transaction.done.errback(failure)


__all__ = ["ConnectionFailure", "DotStuffer", "RelayProtocol", "Reply", "SMTPClientError", "Transaction"]
