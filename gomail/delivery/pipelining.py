# -*- test-case-name: tests.test_relay_client -*-
"""
PIPELINING (RFC 2920) for L{gomail.delivery.client.RelayProtocol}: a
transaction is one write of MAIL, every RCPT and DATA (behind an RSET when the
one before ended early), then the content after the 354.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.mail.smtp import SUCCESS, SMTPClientError, quoteaddr

from gomail.delivery.transaction import Reply, Transaction
from gomail.delivery.transaction import reply_text as _text

#: What a pipelined transaction waits for, by the reply due next.
_PIPELINED_STEPS = {"rset": "RSET", "mail": "MAIL", "rcpt": "RCPT", "data": "DATA", "discard": "the final dot"}


class PipeliningMixin:
    """The pipelined transaction of a RelayProtocol (which provides the rest of what is used here)."""

    _current: Transaction | None
    _due: deque[tuple[str, str]]
    _mail_reply: tuple[int, bytes]
    _rcpt_replies: list[tuple[str, int, bytes]]
    _reset_due: bool
    step: str
    transport: Any

    if TYPE_CHECKING:  # provided by RelayProtocol and Twisted's SMTPClient (not defined here: MRO)
        def sendError(self, exc: Exception) -> None: ...
        def smtpState_data(self, code: int, resp: bytes) -> None: ...
        def smtpState_from(self, code: int, resp: bytes) -> None: ...

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
        self._expected = range(1000)  # every reply goes to _pipelined_reply, in order
        self._okresponse = self._failresponse = self._pipelined_reply
        self._next_due_step()
        self.transport.write(b"".join(command + b"\r\n" for command in commands))

    def _next_due_step(self) -> None:
        if self._due:
            self.step = _PIPELINED_STEPS[self._due[0][0]]

    def _unexpected_reply(self, code: int, resp: bytes) -> None:
        # A reply to nothing we sent (while idle, or one too many): the session is out of step.
        self.sendError(SMTPClientError(code, b"Unexpected reply: " + resp, isFatal=True))

    def _pipelined_reply(self, code: int, resp: bytes) -> None:
        if not self._due:
            self._unexpected_reply(code, resp)
            return
        step, address = self._due.popleft()
        self._next_due_step()
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
            self._expected = range(1000)
            self._okresponse = self._failresponse = self._final_reply
        elif code == 354:
            # DATA accepted with no recipient accepted (RFC 2920 3.1): end the empty message at once.
            self._due.append(("discard", ""))
            self._next_due_step()
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
