# -*- test-case-name: tests.test_smtp_protocol,tests.test_smtp_abuse -*-
"""
Turning a client's bytes into SMTP commands: in order, within bounds, and by the rules.

twisted.mail's ESMTP reads lines with LineOnlyReceiver; this base class parses
input itself, so that:

- a command whose answer is not ready yet (a Deferred) holds back the pipelined
  commands behind it, and replies stay in order; held input beyond a bound
  pauses the client;
- DATA content is handed to the subclass in chunks (C{_data_received}) and
  never drops back into command mode in the middle of a message;
- an over-long command line is answered once and skipped; one beyond a hard
  bound ends the session, and inside an AUTH exchange it ends the exchange;
- the abuse rules of L{gomail.smtp.guard} apply to every command: non-SMTP
  commands, junk commands, and pipelining where RFC 2920 forbids it
  (Postfix's C{smtpd_forbid_unauth_pipelining});
- the client's input stops being read while its unsent replies are over the
  transport's bound (L{gomail.flow.OutputBound}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail.smtp import DATA, ESMTP

from gomail.smtp import guard
from gomail.smtp.session import SessionAPI

#: The longest command line (RFC 5321 4.5.3.1.4 asks for 512; AUTH needs more).
MAX_COMMAND_LINE = 2048
#: An over-long line is skipped up to this many bytes; beyond, the session ends.
MAX_LONG_LINE = 64 * 1024
#: Pipelined input held while a reply is pending, before the client is paused.
MAX_PIPELINE_BUFFER = 64 * 1024


class SMTPFraming(SessionAPI, ESMTP):
    """
    The input side of an SMTP session. Subclasses provide the verbs
    (C{do_*}/C{ext_*}), C{state_AUTH}, C{_data_received}, C{reply},
    C{exempt_from_sync} and the session attributes used here.
    """

    log = Logger()

    def init_framing(self) -> None:
        """Set up the input state (called from the subclass's __init__)."""
        self._input = b""
        self._blocked = False
        self._processing = False
        self._long_line = 0  # bytes of an over-long line skipped so far (0: none)
        self._pipelined = False  # whether input followed the command being run
        self._paused_for: set[str] = set()
        self.greeted = False
        self.spoke = False  # whether the client sent anything (else: a TCP probe)
        self.junk_commands = 0
        self.closed = False  # a last reply went out (or the connection was lost): nothing more is said
        self.lost = False  # the connection is gone: held input is dropped, nothing more runs

    # -- reading ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.spoke:
            self.spoke = True
            self.server.spoke(self)
        if self.closed or self.transport.disconnecting:
            return  # a last reply is on its way: nothing more is read
        if not self.greeted:
            if not self.exempt_from_sync():
                # Postscreen's pregreet test: a real client waits for the banner.
                self.protocol_violation("before the greeting", data)
                return
            if len(self._input) > MAX_PIPELINE_BUFFER:
                self._pause("pipeline")
        self._input += data
        if not self._processing and self.greeted:
            self._process()

    def _process(self) -> None:
        self._processing = True
        try:
            while (self._input and not self._blocked and not self._paused_for - {"pipeline"}
                   and not self.closed and not self.transport.disconnecting):
                if self.mode == DATA:
                    self._data_received()
                elif not self._next_line():
                    break
        finally:
            self._processing = False
        if self._blocked and len(self._input) > MAX_PIPELINE_BUFFER:
            self._pause("pipeline")
        elif not self._blocked:
            # Input held while a reply was pending (or before the greeting) is read: read on.
            self._resume("pipeline")

    def _next_line(self) -> bool:
        end = self._input.find(b"\r\n")
        if end < 0:
            if len(self._input) > MAX_COMMAND_LINE + 1:  # +1: a CR may wait for its LF
                # Keep a final CR: it may be the first half of the long line's CRLF.
                keep = b"\r" if self._input.endswith(b"\r") else b""
                self._skip_long_line(len(self._input) - len(keep))
                self._input = keep
            return False
        line, self._input = self._input[:end], self._input[end + 2:]
        if self._long_line:
            self._long_line = 0
            return True
        if len(line) > MAX_COMMAND_LINE:
            self._skip_long_line(len(line))
            self._long_line = 0
            return True
        self.resetTimeout()
        self._pipelined = bool(self._input)
        self._wait_for(getattr(self, "state_" + self.mode)(line))
        return True

    def _skip_long_line(self, size: int) -> None:
        """Answer an over-long line once; cut the session off past the hard bound."""
        if not self._long_line:
            if self.mode == "AUTH":
                self.end_auth_exchange()
                self.reply(501, "5.5.6", "Authentication exchange line is too long")
            else:
                self.reply(500, "5.5.2", "Line too long")
        self._long_line += size
        if self._long_line > MAX_LONG_LINE and not self.transport.disconnecting:
            self.log.info("closing the session with {client}: a line of over {size} bytes",
                          client=self.client_host, size=MAX_LONG_LINE)
            self.hang_up(421, "4.7.0", "Error: line too long, closing connection")

    # -- commands -----------------------------------------------------------

    def state_COMMAND(self, line: bytes) -> Any:
        if guard.is_non_smtp(line):
            self.log.info("non-SMTP command from {client}: {command}", client=self.client_host,
                          command=guard.printable(line.split(b" ", 1)[0]))
            return self.hang_up(221, "2.7.0", "Error: non-SMTP command, closing connection")
        if guard.CONTROL.search(line):
            return self.reply(501, "5.5.2", "Invalid character in command line")
        verb, _, rest = line.strip().partition(b" ")
        if not verb:
            return self.reply(500, "5.5.2", "Error: bad syntax")
        verb = verb.upper()
        if self._pipelined and not self.exempt_from_sync() and guard.breaks_sync(verb, self.pipelining_offered):
            return self.protocol_violation("after " + verb.decode("ascii", "replace"), self._input)
        if verb in guard.JUNK and self.count_junk():
            return None
        method = self.lookupMethod(verb) if verb.isascii() else None
        if method is None:
            return self.reply(500, "5.5.2", "Error: command not recognized")
        result = method(rest.strip())
        if verb == b"DATA" and self.mode != DATA and self._input:
            # DATA was refused but its content was already sent: never read it as commands.
            return self.protocol_violation("after a refused DATA", self._input)
        return result

    def count_junk(self) -> bool:
        """
        Count a command that moves nothing forward (NOOP, RSET, a repeated or
        over-limit RCPT...); past C{smtp.junkCommandLimit} the session ends
        (421 4.7.0): whether it did.
        """
        self.junk_commands += 1
        if self.junk_commands <= self.settings.junkCommandLimit:
            return False
        self.log.info("too many junk commands from {client}", client=self.client_host)
        self.hang_up(421, "4.7.0", "Error: too many junk commands, closing connection")
        return True

    def sendCode(self, code: int, message: bytes = b"") -> None:
        # After the last reply (hang_up, QUIT) the client is told nothing more:
        # a reply that was pending then (a recipient lookup) is dropped.
        if not self.closed:
            super().sendCode(code, message)

    def protocol_violation(self, where: str, data: bytes) -> None:
        """Pipelining the client was not offered: 554 5.5.0 and close (unless exempt, see L{guard})."""
        self.log.info("improper command pipelining {where} from {client}: {data}",
                      where=where, client=self.client_host, data=guard.printable(data[:100]))
        self.server.rejections["pipelining"] += 1
        self.hang_up(554, "5.5.0", "Error: SMTP protocol synchronization")

    def hang_up(self, code: int, status: str, text: str) -> None:
        """Send a last reply and close: nothing more the client sent is read."""
        self._input = b""
        if self.closed or self.transport.disconnecting:
            return
        self.sendCode(code, f"{status} {text}".encode("ascii", "replace"))
        self.close_connection()

    # -- holding input while a reply is pending --------------------------------

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
        if self.lost or self.closed:
            return  # nothing the client sent is run once it is gone or told goodbye
        self._resume("pipeline")
        if self.hang_up_when_answered:
            # The session's deadline passed while this reply was pending: it is sent, now close.
            self.hang_up(*self.closing_reply)
        elif self.close_when_idle and not self.in_transaction:
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
            # Input held for a full disk or an unread output goes on now; held
            # pipelined commands go on from _unblock, after its own checks.
            if reason != "pipeline" and not self._processing and self.greeted:
                self._process()
