# -*- test-case-name: tests.test_pop3 -*-
"""
The POP3 session (RFC 1939, with RFC 2449 CAPA and response codes and RFC
2595 STLS) over a local Maildir.

L{GomailPOP3} is twisted.mail's C{POP3} protocol with its input side and
commands replaced where gomail needs more than it gives:

- input is read line by line within bounds: a command line over 255 octets
  (RFC 2449 4) is answered C{-ERR} and skipped, one beyond 64 KiB ends the
  session; a command whose answer is pending (a login, a listing, a message
  being sent) holds back the commands pipelined behind it, and held input
  beyond a bound stops the client being read;
- output is bounded (L{gomail.flow.OutputBound}): while a client does not
  read, it is not read either and a message being sent waits; messages are
  read from disk in blocks in the I/O pool as they are sent, never whole
  (twisted's C{FileSender} would be a second producer on the transport and
  reads on the reactor);
- logins only inside TLS, through gomail's portal (L{pop3login});
- the states are RFC 1939's: AUTHORIZATION, TRANSACTION, and UPDATE, entered
  by QUIT only: DELE marks, QUIT removes, a lost connection or the idle
  timeout removes nothing;
- the listing's and commands' answers are written at once (twisted
  cooperates through the global reactor's scheduler, which a session with
  an injected clock must not use).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail import pop3

from gomail.flow import OutputBound, ReadPauses
from gomail.mailaccess.pop3commands import AUTHORIZATION, TRANSACTION, UPDATE, POP3TransactionMixin
from gomail.mailaccess.pop3login import POP3LoginMixin
from gomail.netaddr import parse_ip
from gomail.tcp import no_delay

#: RFC 2449 4: a command line is at most 255 octets, CRLF included.
MAX_COMMAND_LINE = 255
#: A SASL response line (a base64 PLAIN response with a long name and password exceeds 255 octets).
MAX_AUTH_LINE = 4096
#: An over-long line is skipped up to this many bytes; beyond, the session ends.
MAX_LONG_LINE = 64 * 1024
#: Pipelined input held while an answer is pending, before the client is paused.
MAX_PIPELINE_BUFFER = 64 * 1024
#: Seconds a closing connection may take to send its last answer before it is aborted.
CLOSE_TIMEOUT = 30

COMMANDS = {
    AUTHORIZATION: frozenset({b"CAPA", b"STLS", b"USER", b"PASS", b"AUTH", b"APOP", b"QUIT"}),
    TRANSACTION: frozenset({b"CAPA", b"STAT", b"LIST", b"RETR", b"DELE", b"NOOP", b"RSET", b"TOP", b"UIDL",
                            b"QUIT"}),
    UPDATE: frozenset(),
}
KNOWN = COMMANDS[AUTHORIZATION] | COMMANDS[TRANSACTION]
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class GomailPOP3(POP3LoginMixin, POP3TransactionMixin, pop3.POP3):
    """
    One POP3 session of a L{gomail.mailaccess.pop3server.POP3Server}. A
    command C{VERB} runs C{cmd_VERB(rest)} (twisted's own C{do_VERB}
    methods are not used: see the module docstring).
    """

    log = Logger()
    transport: Any
    factory: Any

    def __init__(self, server: Any, implicit_tls: bool = False) -> None:
        self.server = server
        self.settings = server.settings
        self.timeOut = self.settings.idleTimeout
        self.secure = implicit_tls
        self.phase = AUTHORIZATION
        self.mode = "COMMAND"  # or "AUTH": the next line answers an AUTH challenge
        self.client_host = ""
        self.client_ip: Any = None
        self.counted_as: str | None = None  # the address counted against pop3.maxConnectionsPerIP
        self.admitted = self.lost = self.closed = False
        self.can_start_tls = False
        self.flow: OutputBound | None = None
        self.reads: ReadPauses | None = None
        self.mbox: Any = None  # the MaildirMailbox, once logged in
        self._logout: Any = None  # gives the mailbox's lock back
        self._input = b""
        self._blocked = self._processing = False
        self._long_line = 0  # bytes of an over-long line skipped so far (0: none)
        self._errors = 0
        self._writable_waiters: list[Deferred] = []
        self._close_timer: Any = None
        self.init_login()

    def callLater(self, period: float, func: Any) -> Any:
        """TimeoutMixin's timer, on the server's clock (never the global reactor's)."""
        return self.server.clock.callLater(period, func)

    # -- connection -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.client_host = str(getattr(self.transport.getPeer(), "host", "") or "")
        self.client_ip = parse_ip(self.client_host)
        self.can_start_tls = (not self.secure and self.server.tls_context is not None
                              and ITLSTransport.providedBy(self.transport))
        self.reads = ReadPauses(self.transport)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.sendLine(b"-ERR " + refusal.encode("ascii"))
            self.closed = True
            self.transport.loseConnection()
            return
        self.admitted = True
        self.flow = OutputBound(self.server.clock, self.timeOut, on_paused=self._output_paused,
                                on_resumed=self._output_resumed, on_timeout=self._output_stuck, name="pop3")
        self.flow.attach(self.transport)
        self.setTimeout(self.timeOut)
        # No <timestamp> in the greeting: it would offer APOP (RFC 1939 7).
        self.ok("gomail POP3 server ready")

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = self.closed = True
        self._input = b""
        self.setTimeout(None)
        if self.flow is not None:
            self.flow.detach()
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._wake_writers()
        self.cancel_login()
        if self._logout is not None and self.phase != UPDATE:
            # Without QUIT nothing is removed (RFC 1939 6): the lock is simply given back.
            self.log.info('POP3 session of "{user}" from {client} ended without QUIT: nothing deleted',
                          user=self.account.name, client=self.client_host)
            self._logout()
            self._logout = None
        if self.admitted:
            self.server.release(self)

    def close_connection(self) -> None:
        """Close once the answers written are sent; abort a client that does not read them."""
        self.closed = True
        self.setTimeout(None)
        self._wake_writers()
        if self.flow is not None:
            unread = self.flow.paused
            self.flow.detach()  # a registered producer would hold the close back
            if unread:
                self.transport.abortConnection()
                return
        self._close_timer = self.server.clock.callLater(CLOSE_TIMEOUT, self._close_stuck)
        self.transport.loseConnection()

    def _close_stuck(self) -> None:
        if not self.lost:
            self.transport.abortConnection()

    def _output_stuck(self) -> None:
        self.close_connection()  # still paused: aborted

    def hang_up(self, text: str) -> None:
        """A last C{-ERR} and close: nothing more the client sent is read."""
        self._input = b""
        if not self.closed:
            self.sendLine(b"-ERR " + text.encode("ascii", "replace"))
            self.close_connection()

    def timeoutConnection(self) -> None:
        if self._blocked:
            # Our answer is pending (a login, a message being sent: each bounded on its own).
            self.setTimeout(self.timeOut)
            return
        self.log.info("POP3 session with {client} idle for {seconds} s: closed", client=self.client_host,
                      seconds=self.timeOut)
        # RFC 1939 3: the autologout timer closes without entering UPDATE: nothing is removed.
        self.hang_up("Autologout: idle for too long")

    def server_stopping(self) -> None:
        """gomail is stopping: end the session, unless it is removing what its client deleted."""
        if self.closed or self.phase == UPDATE:
            return
        if self._blocked:
            self.close_connection()  # in the middle of an answer: no -ERR can be slipped in
        else:
            self.hang_up("[SYS/TEMP] Server shutting down, try again later")

    # -- answers ------------------------------------------------------------------------------

    def ok(self, text: str = "") -> None:
        """A C{+OK} line."""
        if not self.closed:
            self.transport.write(b"+OK " + text.encode("ascii", "replace") + b"\r\n" if text else b"+OK\r\n")

    def err(self, text: str) -> None:
        """A C{-ERR} line; past C{pop3.maxErrors} of them the session ends."""
        if self.closed:
            return
        self.sendLine(b"-ERR " + text.encode("ascii", "replace"))
        self._errors += 1
        if self._errors >= self.settings.maxErrors:
            self.log.info("too many errors in the POP3 session with {client}", client=self.client_host)
            self.hang_up("Too many errors, closing connection")

    def multi(self, first: str, lines: list[bytes]) -> None:
        """A multi-line answer: C{+OK first}, the lines (none may start with a dot), C{.}."""
        if not self.closed:
            self.ok(first)
            self.transport.writeSequence([*(line + b"\r\n" for line in lines), b".\r\n"])

    # -- input ----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closed or self.transport.disconnecting:
            return  # a last answer is on its way: nothing more is read
        self._input += data
        if not self._processing:
            self._process()

    def _process(self) -> None:
        assert self.reads is not None
        self._processing = True
        try:
            while self._input and not self._blocked and "output" not in self.reads and not self.closed:
                if not self._next_line():
                    break
        finally:
            self._processing = False
        if self.closed:
            return
        if self._blocked and len(self._input) > MAX_PIPELINE_BUFFER:
            self.reads.pause("pipeline")
        elif not self._blocked:
            self.reads.resume("pipeline")

    def _next_line(self) -> bool:
        limit = MAX_AUTH_LINE if self.mode == "AUTH" else MAX_COMMAND_LINE
        end = self._input.find(b"\n")
        if end < 0:
            if len(self._input) >= limit:  # its LF (at least) is still to come: too long already
                self._skip_long_line(len(self._input))
                self._input = b""
            return False
        line, self._input = self._input[:end], self._input[end + 1:]
        if self._long_line:  # the end of a line already answered as too long
            self._long_line = 0
            return True
        if end + 1 > limit:
            self._skip_long_line(end + 1)
            self._long_line = 0
            return True
        self.resetTimeout()
        line = line[:-1] if line.endswith(b"\r") else line  # CRLF; a bare LF is taken too
        self._wait_for(self.auth_response(line) if self.mode == "AUTH" else self._command(line))
        return True

    def _skip_long_line(self, size: int) -> None:
        """Answer an over-long line once; cut the session off past the hard bound."""
        if not self._long_line:
            if self.mode == "AUTH":
                self.mode = "COMMAND"
                self.err("Authentication line too long")
            else:
                self.err(f"Command line too long (at most {MAX_COMMAND_LINE} octets)")
        self._long_line += size
        if self._long_line > MAX_LONG_LINE:
            self.log.info("closing the POP3 session with {client}: a line of over {size} bytes",
                          client=self.client_host, size=MAX_LONG_LINE)
            self.hang_up("Line too long, closing connection")

    def _command(self, line: bytes) -> Any:
        if _CONTROL.search(line):
            return self.err("Invalid character in command line")
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb not in KNOWN:
            return self.err("Unknown command")
        if verb not in COMMANDS[self.phase]:
            return self.err("Log in first" if self.phase == AUTHORIZATION else "Not allowed after login")
        return getattr(self, "cmd_" + verb.decode("ascii"))(rest)

    def _wait_for(self, result: Any) -> None:
        """Hold further input until a pending answer (a Deferred) is sent."""
        if isinstance(result, Deferred):
            result.addErrback(self._internal_error)
            if not result.called:
                self._blocked = True
                result.addBoth(self._unblock)

    def _unblock(self, _: Any) -> None:
        self._blocked = False
        if not self.closed and not self._processing:
            self._process()

    def _internal_error(self, failure: Any) -> None:
        self.log.failure("internal error in the POP3 session with {client}", failure, client=self.client_host)
        self.hang_up("[SYS/TEMP] Local error, try again later")

    # -- output bound ---------------------------------------------------------------------------

    def _output_paused(self) -> None:
        assert self.reads is not None
        self.reads.pause("output")

    def _output_resumed(self) -> None:
        assert self.reads is not None
        self.reads.resume("output")
        self._wake_writers()
        if not self.closed and not self._processing and not self._blocked:
            self._process()

    def _wake_writers(self) -> None:
        waiters, self._writable_waiters = self._writable_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _writable(self) -> None:
        """Wait while the client is not reading what was written (the output is over its bound)."""
        while self.flow is not None and self.flow.paused and not self.closed:
            waiter: Deferred = Deferred()
            self._writable_waiters.append(waiter)
            await waiter

    # -- AUTHORIZATION ----------------------------------------------------------------------------

    def cmd_CAPA(self, rest: bytes) -> None:
        if rest:
            return self.err("Syntax: CAPA")
        capabilities = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.phase == AUTHORIZATION:
            if self.can_start_tls:
                capabilities.append(b"STLS")
            if self.login_allowed():  # like IMAP's LOGINDISABLED: no login offered before TLS
                capabilities += [b"USER", b"SASL PLAIN"]
        self.multi("Capability list follows", [*capabilities, b"IMPLEMENTATION gomail"])

    def cmd_STLS(self, rest: bytes) -> None:
        if rest:
            return self.err("Syntax: STLS")
        if self.secure:
            return self.err("Command not permitted when TLS active")
        if not self.can_start_tls:
            return self.err("TLS not available")
        self.ok("Begin TLS negotiation")
        # RFC 2595 4 (and CVE-2011-0411): what was sent with STLS, before the handshake, is not read.
        self._input = b""
        self.transport.startTLS(self.server.tls_context)
        if self.flow is not None:
            self.flow.tls_started()
        self.secure = True
        self.can_start_tls = False
        self._user = None


__all__ = ["MAX_COMMAND_LINE", "GomailPOP3"]
