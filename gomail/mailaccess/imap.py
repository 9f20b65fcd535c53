# -*- test-case-name: tests.test_imap -*-
"""
The IMAP4rev1 session (RFC 3501, with RFC 2177 IDLE and RFC 2595
STARTTLS) over a user's Maildir.

L{GomailIMAP4} is twisted.mail's C{IMAP4Server} (its parser, its FETCH,
SEARCH and BODYSTRUCTURE code) with what gomail needs on top:

- commands run one at a time, in order: a command whose answer is pending
  (a login, disk work in the I/O pool) holds back the lines pipelined
  behind it (twisted would run them at once, against the state before);
- input is bounded: a command line over L{MAX_LINE} octets ends the
  session, an APPEND literal over C{imap.maxLiteralSize} is refused before
  the client sends it (C{NO [TOOBIG]}), other literals over 4 KiB get
  C{BAD}, held lines beyond L{MAX_QUEUED} end the session, and beyond
  L{MAX_QUEUED_BYTES} the connection is not read until they have run;
- C{STARTTLS} discards what was pipelined behind it; before it the
  capabilities say C{LOGINDISABLED} and no AUTH, and LOGIN/AUTHENTICATE are
  refused (L{gomail.mailaccess.imaplogin});
- the idle timer, and everything else that waits, is on the server's clock;
- twisted's answers that would show an exception's text to the client say
  C{Server error} instead (the failure is logged).

The commands themselves are in L{gomail.mailaccess.imapcommands}.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail import imap4

from gomail.mailaccess.imapcommands import IMAPCommandsMixin
from gomail.mailaccess.imaplogin import IMAPLoginMixin
from gomail.netaddr import parse_ip
from gomail.tcp import no_delay

#: The longest command line (RFC 7162 3 recommends accepting at least 8192 octets).
MAX_LINE = 16 * 1024
#: Command lines held while one command is answered, before the session is ended.
MAX_QUEUED = 1000
#: Octets of held command lines beyond which the connection is not read until they have run: a
#: client pipelining 1,000 lines of 16 KiB behind a slow login would otherwise hold 16 MB here.
MAX_QUEUED_BYTES = 64 * 1024


class Refused(Exception):
    """A command refused with a tagged C{NO} and this text (while its arguments are read)."""


def run_now(iterator: Iterator[Any]) -> Deferred:
    """
    twisted's C{scheduler} for FETCH output: the steps one after another,
    waiting for those that return a Deferred, without a reactor turn
    between steps (twisted's default takes them from the global reactor).
    """

    async def go() -> None:
        for step in iterator:
            if isinstance(step, Deferred):
                await step

    return Deferred.fromCoroutine(go())


class GomailIMAP4(IMAPLoginMixin, IMAPCommandsMixin, imap4.IMAP4Server):
    """One IMAP session of a L{gomail.mailaccess.imapserver.IMAPServer}."""

    log = Logger()
    IDENT = b"gomail IMAP4rev1 server ready"
    MAX_LENGTH = MAX_LINE
    transport: Any
    factory: Any

    def __init__(self, server: Any, implicit_tls: bool = False) -> None:
        super().__init__(chal={}, contextFactory=server.tls_context, scheduler=run_now)
        self.server = server
        self.settings = server.settings
        self.timeOut = self.POSTAUTH_TIMEOUT = self.settings.idleTimeout
        self.secure = implicit_tls
        self.client_host = ""
        self.client_ip: Any = None
        self.counted_as: str | None = None
        self.admitted = self.closed = False
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._reading_paused = False  # by us, for MAX_QUEUED_BYTES
        self._awaiting = False
        self._drain_call: Any = None
        self._close_timer: Any = None
        self._tag = b"*"  # the tag of the command being answered
        self.init_login()
        self.init_commands()

    def callLater(self, period: float, func: Any) -> Any:
        """TimeoutMixin's timer, on the server's clock."""
        return self.server.clock.callLater(period, func)

    # -- connection -----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.client_host = str(getattr(self.transport.getPeer(), "host", "") or "")
        self.client_ip = parse_ip(self.client_host)
        refusal = self.server.admit(self)
        if refusal is not None:
            self.sendLine(b"* BYE " + refusal.encode("ascii"))
            self.closed = True
            self.transport.loseConnection()
            return
        self.admitted = True
        super().connectionMade()
        self.canStartTLS = (not self.secure and self.ctx is not None
                            and ITLSTransport.providedBy(self.transport))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._queue, self._queued_bytes = [], 0
        for call in (self._drain_call, self._close_timer):
            if call is not None and call.active():
                call.cancel()
        self.cancel_login()
        self.stop_idle()
        if self.mbox is not None:
            self.mbox.removeListener(self)
            self.mbox = None
        super().connectionLost(reason)
        if self.admitted:
            self.server.release(self)

    def close_connection(self) -> None:
        """Close once the last answer is written (aborted if it is not taken within 30 s)."""
        if self.closed:
            return
        self.closed = True
        self.stop_idle()  # no notices or polls for a session that is going
        if self._reading_paused:
            # Over TLS the close waits for the client's close_notify: it must be read.
            self._reading_paused = False
            self.transport.resumeProducing()
        self.setTimeout(None)
        self._close_timer = self.server.clock.callLater(30, self.transport.abortConnection)
        self.transport.loseConnection()

    def bye(self, text: str) -> None:
        """C{* BYE text} and close."""
        if not self.closed:
            self.sendLine(b"* BYE " + text.encode("ascii", "replace"))
            self.close_connection()

    def timeoutConnection(self) -> None:
        self.log.info("IMAP session with {client} idle for {seconds} s: closed", client=self.client_host,
                      seconds=self.timeOut)
        self.bye("Autologout; idle for too long")

    def server_stopping(self) -> None:
        """gomail is stopping: end the session."""
        self.bye("Server shutting down")

    def do_LOGOUT(self, tag: bytes) -> None:
        self.sendUntaggedResponse(b"BYE gomail IMAP4rev1 server logging out")
        self.sendPositiveResponse(tag, b"LOGOUT completed")
        self.close_connection()

    unauth_LOGOUT: Any = (do_LOGOUT,)
    auth_LOGOUT: Any = unauth_LOGOUT
    select_LOGOUT: Any = unauth_LOGOUT
    logout_LOGOUT: Any = unauth_LOGOUT

    # -- capabilities and TLS -----------------------------------------------------------------

    def capabilities(self) -> dict[bytes, Any]:
        cap: dict[bytes, Any] = {}
        if self.state == "unauth":
            if self.can_start_tls():
                cap[b"STARTTLS"] = None
            if self.login_allowed():
                cap[b"AUTH"] = [b"PLAIN"]
            else:
                cap[b"LOGINDISABLED"] = None
        cap[b"NAMESPACE"] = None
        cap[b"IDLE"] = None
        return cap

    def can_start_tls(self) -> bool:
        return not self.secure and self.ctx is not None and bool(self.canStartTLS)

    def do_STARTTLS(self, tag: bytes) -> None:
        if self.secure:
            return self.sendNegativeResponse(tag, b"TLS already active")
        if not self.can_start_tls():
            return self.sendNegativeResponse(tag, b"TLS not available")
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        # RFC 2595 3.1 (and CVE-2011-0411): what was pipelined behind STARTTLS is not read.
        self.clearLineBuffer()
        self._forget_queue()
        self.transport.startTLS(self.ctx)
        self.secure = self.startedTLS = True

    unauth_STARTTLS: Any = (do_STARTTLS,)

    # -- input: one command at a time ---------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.closed:
            return
        if self.continuation_owed:
            self.bye("Literal data sent before the server's continuation")
            return
        if self.parseState == "command" and (self._awaiting or self._queue):
            self._queue.append(line)
            self._queued_bytes += len(line)
            if len(self._queue) > MAX_QUEUED:
                self.bye("Too many commands pipelined")
            elif self._queued_bytes > MAX_QUEUED_BYTES and not self._reading_paused:
                # TCP holds the rest: the client waits for our answers as the RFC expects.
                self._reading_paused = True
                self.transport.pauseProducing()
            return
        self._handle(line)

    def _handle(self, line: bytes) -> None:
        self.resetTimeout()
        try:
            getattr(self, "parse_" + self.parseState)(line)
        except Exception:  # noqa: BLE001 - a bug in a command: logged, answered, the session goes on
            self.log.failure("internal error in the IMAP session with {client}", client=self.client_host)
            self.parseState = "command"
            self._answer_failure(self._tag)

    def dispatchCommand(self, tag: bytes, cmd: bytes, rest: bytes, uid: Any = None) -> None:
        self._tag = tag
        self._awaiting = True
        # twisted's sequence-set parser and membership test are quadratic (3,200 ranges held
        # the reactor for seconds); its command tables bind arg_seqset directly, hence here.
        if max((token.count(b",") for token in (rest or b"").split(b" ")), default=0) >= MAX_SEQUENCE_RANGES:
            self.sendBadResponse(tag, b"At most %d ranges in a sequence set" % MAX_SEQUENCE_RANGES)
            return
        if (cmd.upper() == b"FETCH" or (rest or b"").upper().startswith(b"FETCH ")) and any(
                not _PARTIAL_RANGE.fullmatch(m) for m in _PARTIAL.findall(rest or b"")):
            # twisted reads <origin.octets> with int(): "<-60.100>" sent octets from before the section.
            self.sendBadResponse(tag, b"A partial range is <origin.octets>, digits only")
            return
        words = (rest or b"").upper().split()
        if (cmd.upper() == b"SEARCH" or words[:1] == [b"SEARCH"]) and (
                len(words) > MAX_SEARCH_WORDS or (rest or b"").count(b"(") > MAX_SEARCH_WORDS // 4):
            # SEARCH matches on the reactor, message by message: 250 BODY keys over large
            # messages held it for seconds; deep nesting overflowed twisted's recursive parser.
            self.sendBadResponse(tag, b"At most %d words in a SEARCH" % MAX_SEARCH_WORDS)
            return
        super().dispatchCommand(tag, cmd, rest, uid)

    def _respond(self, state: bytes, tag: Any, message: Any) -> None:
        if self.closed:
            return
        super()._respond(state, tag, message)
        if tag and tag != b"*" and state in (b"OK", b"NO", b"BAD"):
            self._awaiting = False
            if self._queue and self._drain_call is None:
                # Later: the command that answered may still be changing state (CLOSE, SELECT).
                self._drain_call = self.server.clock.callLater(0, self._drain)

    def _drain(self) -> None:
        self._drain_call = None
        while self._queue and not self.closed:
            if self.parseState == "idle":  # "DONE" sent with IDLE, before its "+ idling"
                pass
            elif self.parseState != "command" or self.continuation_owed:
                # Held lines behind a command that asks for a literal are its data, sent before
                # the continuation: never read as commands, never left waiting for ever.
                self.bye("Literal data sent before the server's continuation")
                return
            elif self._awaiting:
                break
            line = self._queue.pop(0)
            self._queued_bytes -= len(line)
            self._handle(line)
        if self._reading_paused and not self.closed and self._queued_bytes <= MAX_QUEUED_BYTES // 2:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _forget_queue(self) -> None:
        """Drop the held lines (STARTTLS), and read again if they had stopped the reading."""
        self._queue, self._queued_bytes = [], 0
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("closing the IMAP session with {client}: a line of over {size} octets",
                      client=self.client_host, size=MAX_LINE)
        self.bye(f"Line too long (at most {MAX_LINE} octets)")

    def _answer_failure(self, tag: Any, failure: Any = None) -> None:
        if failure is not None:
            if failure.check(imap4.IllegalClientResponse):
                return self.sendBadResponse(tag, b"Illegal syntax: " + str(failure.value).encode("ascii", "replace"))
            if failure.check(Refused):
                return self.sendNegativeResponse(tag, str(failure.value).encode("ascii", "replace"))
            if failure.check(imap4.IllegalMailboxEncoding):
                # Its text is the Python repr of the client's bytes: never echoed.
                return self.sendNegativeResponse(tag, b"Invalid mailbox name encoding")
            if failure.check(imap4.IllegalOperation, imap4.MailboxException):
                return self.sendNegativeResponse(tag, str(failure.value).encode("ascii", "replace"))
            self.log.failure("internal error in the IMAP session with {client}", failure, client=self.client_host)
        self.sendBadResponse(tag, b"Server error")

    def _IMAP4Server__ebDispatch(self, failure: Any, tag: bytes) -> None:
        # A command's arguments could not be read (a literal over a bound, bad syntax).
        self.parseState = "command"
        self._answer_failure(tag, failure)

    def arg_literal(self, line: bytes) -> Any:
        """APPEND's message literal: refused (before the client sends it) beyond C{imap.maxLiteralSize}."""
        if line[:1] == b"{":
            self.literal_size(line)
        return super().arg_literal(line)

    def literal_size(self, line: bytes) -> int:
        """
        The octets of the literal C{line} announces. @raise Refused: not
        digits only, or over C{imap.maxLiteralSize}.
        """
        # Read here, strictly (RFC 3501: number = 1*DIGIT): twisted's int() also takes
        # "{+2048}", "{ 2048}" and "{2_048}", which walked past the bound.
        match = _LITERAL.fullmatch(line)
        if match is None:
            raise Refused("[CLIENTBUG] A literal's size is digits only")
        size = int(match.group(1))
        if size > self.settings.maxLiteralSize:
            raise Refused(f"[TOOBIG] Message too large (at most {self.settings.maxLiteralSize} octets)")
        return size


#: The most comma-separated ranges a sequence set may hold.
MAX_SEQUENCE_RANGES = 500
#: The most words (keys, values, parentheses) one SEARCH may hold.
MAX_SEARCH_WORDS = 100
_LITERAL = re.compile(rb"\{([0-9]{1,12})\}")
_PARTIAL = re.compile(rb"<([^>]*)>")
_PARTIAL_RANGE = re.compile(rb"[0-9]{1,12}(\.[0-9]{1,12})?")

__all__ = ["MAX_LINE", "GomailIMAP4", "Refused", "run_now"]
