# -*- test-case-name: tests.test_pop3 -*-
"""
The POP3 commands of the TRANSACTION state (RFC 1939 5) and QUIT, which
enters UPDATE: a mixin for L{gomail.mailaccess.pop3.GomailPOP3}.

DELE only marks a message; QUIT in the TRANSACTION state removes the marked
ones (in the I/O pool) before its answer, and the mailbox's lock is given
back once they are gone. RETR and TOP send the message as it is read from
disk, block by block, waiting while the client is not reading
(L{gomail.mailaccess.content} makes the blocks POP3's).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from gomail.mailaccess.content import DotStuffer, TopFilter
from gomail.mailaccess.sessionapi import POP3SessionAPI

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"
#: Bytes of a message read from disk at a time.
BLOCK = 64 * 1024
_NUMBER = re.compile(rb"[1-9][0-9]{0,9}")


class POP3TransactionMixin(POP3SessionAPI):
    """STAT, LIST, UIDL, RETR, TOP, DELE, NOOP, RSET and QUIT (uses the session's C{mbox}, C{ok}, C{err}...)."""

    server: Any
    transport: Any
    phase: str
    mbox: Any
    account: Any
    client_host: str
    closed: bool
    log: Any
    _logout: Any

    def cmd_QUIT(self, rest: bytes) -> Any:
        if self.phase != TRANSACTION:
            self.ok("gomail POP3 server signing off")
            self.close_connection()
            return None
        self.phase = UPDATE
        return Deferred.fromCoroutine(self._update())

    async def _update(self) -> None:
        """RFC 1939 6: remove what was deleted, answer, close; the lock is given back after the removal."""
        try:
            removed = await self.mbox.sync()
        except OSError as e:
            self.log.warn("POP3 session of {user}: {error}", user=self.account.name, error=str(e))
            answer = b"-ERR [SYS/TEMP] Some deleted messages could not be removed\r\n"
        else:
            self.server.stats["deleted"] += removed
            answer = b"+OK gomail POP3 server signing off (%d deleted)\r\n" % removed
        finally:
            logout, self._logout = self._logout, None
            if logout is not None:
                logout()
        if not self.closed:
            self.transport.write(answer)
            self.close_connection()

    def logged_in(self, account: Any, mailbox: Any, logout: Any) -> None:
        """The login succeeded and the mailbox is locked and listed: TRANSACTION state."""
        self.account, self.mbox, self._logout = account, mailbox, logout
        self.phase = TRANSACTION
        self.server.stats["logins"] += 1
        self.log.info('POP3 login of user "{user}" from {client} ({via}): {count} messages',
                      user=account.name, client=self.client_host, via=account.via, count=mailbox.count)
        self.ok(f"Logged in, {mailbox.count} messages ({mailbox.size} octets)")

    # -- TRANSACTION --------------------------------------------------------------------------------

    def _message_number(self, argument: bytes) -> int | None:
        """The 0-based index of the message numbered C{argument}, or None (answered)."""
        if not _NUMBER.fullmatch(argument):
            self.err("Syntax: a message number")
            return None
        number = int(argument)
        if number > len(self.mbox.messages):
            self.err("No such message")
            return None
        if number - 1 in self.mbox.deleted:
            self.err(f"Message {number} already deleted")
            return None
        return number - 1

    def cmd_STAT(self, rest: bytes) -> None:
        if rest:
            return self.err("Syntax: STAT")
        self.ok(f"{self.mbox.count} {self.mbox.size}")

    def cmd_LIST(self, rest: bytes) -> None:
        self._listing(rest, lambda n: b"%d" % self.mbox.messages[n].size,
                      f"{self.mbox.count} messages ({self.mbox.size} octets)")

    def cmd_UIDL(self, rest: bytes) -> None:
        self._listing(rest, self.mbox.getUidl, "Unique-id listing follows")

    def _listing(self, rest: bytes, value: Any, first: str) -> None:
        if rest:
            index = self._message_number(rest)
            if index is not None:
                self.ok(f"{index + 1} {value(index).decode('ascii')}")
            return
        self.multi(first, [b"%d %s" % (n + 1, value(n)) for n in range(len(self.mbox.messages))
                           if n not in self.mbox.deleted])

    def cmd_RETR(self, rest: bytes) -> Any:
        index = self._message_number(rest)
        return None if index is None else Deferred.fromCoroutine(self._send(index, None))

    def cmd_TOP(self, rest: bytes) -> Any:
        arguments = rest.split(b" ")
        if len(arguments) != 2 or not arguments[1].isdigit() or len(arguments[1]) > 10:
            return self.err("Syntax: TOP msg n")
        index = self._message_number(arguments[0])
        return None if index is None else Deferred.fromCoroutine(self._send(index, int(arguments[1])))

    async def _send(self, index: int, top: int | None) -> None:
        """RETR (C{top} None) or TOP: the message read from disk block by block as the client takes it."""
        mailbox = self.mbox
        message = mailbox.message(index)
        try:
            file = await mailbox.getMessage(index)
        except FileNotFoundError:
            return self.err("No such message: it was removed meanwhile")
        except OSError as e:
            self.log.warn("POP3: cannot open message {unique} of {user}: {error}", unique=message.unique,
                          user=self.account.name, error=str(e))
            return self.err("[SYS/TEMP] The message cannot be read now, try again later")
        try:
            self.ok(f"{message.size} octets" if top is None else "Top of message follows")
            stuffer, part = DotStuffer(), (None if top is None else TopFilter(top))
            while not self.closed:
                await self._writable()
                block = await mailbox.maildir.read(file, BLOCK)
                if self.closed or not block:
                    break
                done = False
                if part is not None:
                    block, done = part.feed(block)
                self.transport.write(stuffer.encode(block))
                if done:
                    break
            if not self.closed:
                self.transport.write(stuffer.end())
                self.server.stats["retrieved" if top is None else "top"] += 1
        except OSError as e:
            # Half the answer is out: no -ERR can follow. The client sees no final dot.
            self.log.warn("POP3: reading message {unique} of {user} failed: {error}", unique=message.unique,
                          user=self.account.name, error=str(e))
            self.closed = True
            self.transport.abortConnection()
        finally:
            file.close()

    def cmd_DELE(self, rest: bytes) -> None:
        index = self._message_number(rest)
        if index is not None:
            self.mbox.deleteMessage(index)  # removed at QUIT only (UPDATE state)
            self.ok(f"Message {index + 1} deleted")

    def cmd_NOOP(self, rest: bytes) -> None:
        if rest:
            return self.err("Syntax: NOOP")
        self.ok()

    def cmd_RSET(self, rest: bytes) -> None:
        if rest:
            return self.err("Syntax: RSET")
        self.mbox.undeleteMessages()
        self.ok(f"{self.mbox.count} messages ({self.mbox.size} octets)")

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.pop3.GomailPOP3})
        async def _writable(self) -> None: ...


__all__ = ["AUTHORIZATION", "BLOCK", "TRANSACTION", "UPDATE", "POP3TransactionMixin"]
