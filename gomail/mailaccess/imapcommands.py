# -*- test-case-name: tests.test_imap -*-
"""
The IMAP commands gomail answers itself rather than with twisted's code
(which calls the account synchronously, answers APPEND's EXISTS for the
wrong mailbox and reports no UIDNEXT/UNSEEN/PERMANENTFLAGS): SELECT's
answer, NOOP and CHECK (which report what changed meanwhile), CREATE,
DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, APPEND, COPY, EXPUNGE, CLOSE, and
the mailbox names of SELECT, EXAMINE, STATUS, LIST and LSUB (read here, so
a name that is no modified UTF-7 gets a plain NO without twisted logging a
traceback). Disk work is awaited (the I/O pool); a command's tagged answer
comes after it. APPEND, COPY and EXPUNGE tell the user's idling sessions
(L{gomail.mailaccess.notify}). A mixin for
L{gomail.mailaccess.imap.GomailIMAP4}; FETCH and SEARCH are in
L{gomail.mailaccess.imapfetch}, IDLE in L{gomail.mailaccess.imapidle}.
"""

from __future__ import annotations

import datetime
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4

from gomail.mailaccess import imapfolders, imapstore
from gomail.mailaccess.imapfetch import IMAPFetchMixin
from gomail.mailaccess.imapidle import IMAPIdleMixin
from gomail.mailaccess.imapmailbox import SYSTEM_FLAGS, OverQuota
from gomail.mailaccess.imapstore import FolderError

_ASTRING = imap4.IMAP4Server.arg_astring
#: twisted's handlers, called with the session (an IMAP4Server subclass this mixin is part of).
_TWISTED: Any = imap4.IMAP4Server
_FINAL = imap4.IMAP4Server.arg_finalastring


def mailbox_name(name: bytes | str) -> str:
    """A mailbox name from the wire (modified UTF-7). @raise FolderError: undecodable."""
    try:
        return name if isinstance(name, str) else name.decode("imap4-utf-7")
    except (UnicodeError, ValueError) as e:
        raise FolderError("Invalid mailbox name encoding") from e


class IMAPCommandsMixin(IMAPIdleMixin, IMAPFetchMixin):
    """Folder and message commands (uses the session's C{account}, C{mbox}, C{server}...)."""

    server: Any
    settings: Any
    account: Any
    mbox: Any
    state: str
    parseState: str
    client_host: str
    log: Any
    #: APPEND's checks run before its "+ Ready": the client may send nothing meanwhile.
    continuation_owed = False

    def init_commands(self) -> None:
        self._append_target = b""  # APPEND's folder, between its name and its literal
        self.init_idle()

    def _run(self, tag: bytes, work: Coroutine[Any, Any, Any], done: bytes | None) -> None:
        """Run C{work}; then the tagged C{OK done} (None: C{work} answered), or the answer to its failure."""
        d = Deferred.fromCoroutine(work)

        def answered(_: Any) -> None:
            if done is not None:
                self.sendPositiveResponse(tag, done)

        def failed(failure: Any) -> None:
            if failure.check(FolderError, OverQuota):
                return self.sendNegativeResponse(tag, str(failure.value).encode("ascii", "replace"))
            if failure.check(OSError):
                self.log.warn("IMAP session of {client}: disk error: {error}", client=self.client_host,
                              error=str(failure.value))
                return self.sendNegativeResponse(tag, b"[UNAVAILABLE] Local error, try again later")
            self._answer_failure(tag, failure)

        d.addCallbacks(answered, failed)

    # -- SELECT / EXAMINE, STATUS, LIST / LSUB, NOOP, CHECK -------------------------------------

    # twisted's handlers decode the name with _parseMbox, which logs a traceback for a name
    # that is no modified UTF-7: decoded here first, they get names that are already str.

    def _select_named(self, tag: bytes, name: bytes, rw: int, cmd_name: bytes) -> None:
        try:
            decoded = mailbox_name(name)
        except FolderError as e:
            # As twisted's SELECT: a failed SELECT leaves no folder selected (RFC 3501 6.3.1).
            if self.mbox is not None:
                self.mbox.removeListener(self)
                self.mbox = None
                self.state = "auth"
            return self.sendNegativeResponse(tag, str(e).encode("ascii"))
        _TWISTED._selectWork(self, tag, decoded, rw, cmd_name)

    def _status_named(self, tag: bytes, name: bytes, names: Any) -> None:
        try:
            decoded = mailbox_name(name)
        except FolderError as e:
            return self.sendNegativeResponse(tag, str(e).encode("ascii"))
        _TWISTED.do_STATUS(self, tag, decoded, names)

    def _list_named(self, tag: bytes, ref: bytes, pattern: bytes, sub: int, cmd_name: bytes) -> None:
        try:
            decoded_ref, decoded_pattern = mailbox_name(ref), mailbox_name(pattern)
        except FolderError as e:
            return self.sendNegativeResponse(tag, str(e).encode("ascii"))
        _TWISTED._listWork(self, tag, decoded_ref, decoded_pattern, sub, cmd_name)

    auth_SELECT: Any = (_select_named, _ASTRING, 1, b"SELECT")
    select_SELECT: Any = auth_SELECT
    auth_EXAMINE: Any = (_select_named, _ASTRING, 0, b"EXAMINE")
    select_EXAMINE: Any = auth_EXAMINE
    auth_STATUS: Any = (_status_named, _ASTRING, imap4.IMAP4Server.arg_plist)
    select_STATUS: Any = auth_STATUS
    auth_LIST: Any = (_list_named, _ASTRING, _ASTRING, 0, b"LIST")
    select_LIST: Any = auth_LIST
    auth_LSUB: Any = (_list_named, _ASTRING, _ASTRING, 1, b"LSUB")
    select_LSUB: Any = auth_LSUB

    def _cbSelectWork(self, mbox: Any, cmdName: bytes, tag: bytes) -> None:
        if mbox is None:
            return self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
        self.sendUntaggedResponse(b"%d EXISTS" % mbox.getMessageCount())
        self.sendUntaggedResponse(b"%d RECENT" % mbox.getRecentCount())
        self.sendUntaggedResponse(b"FLAGS (" + " ".join(SYSTEM_FLAGS).encode("ascii") + b")")
        permanent = " ".join(SYSTEM_FLAGS).encode("ascii") if mbox.isWriteable() else b""
        self.sendPositiveResponse(None, b"[PERMANENTFLAGS (" + permanent + b")] Flags kept")
        unseen = mbox.first_unseen()
        if unseen is not None:
            self.sendPositiveResponse(None, b"[UNSEEN %d] First unseen" % unseen)
        self.sendPositiveResponse(None, b"[UIDVALIDITY %d] UIDs valid" % mbox.getUIDValidity())
        self.sendPositiveResponse(None, b"[UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
        mbox.addListener(self)
        self.mbox = mbox
        self.state = "select"
        access = b"READ-WRITE" if mbox.isWriteable() else b"READ-ONLY"
        self.sendPositiveResponse(tag, b"[" + access + b"] " + cmdName + b" completed")

    async def refresh(self) -> None:
        """Report what changed in the selected folder since the session last looked (EXPUNGE, EXISTS, RECENT)."""
        mbox = self.mbox
        if mbox is None:
            return
        expunged, added, flag_changes = await mbox.refresh()
        if mbox is not self.mbox:
            return
        for seq in expunged:
            self.sendUntaggedResponse(b"%d EXPUNGE" % seq)
        if flag_changes:  # numbered as after those EXPUNGEs
            self.flagsChanged(flag_changes)
        if added or expunged:
            self.sendUntaggedResponse(b"%d EXISTS" % mbox.getMessageCount())
        if added:
            self.sendUntaggedResponse(b"%d RECENT" % mbox.getRecentCount())

    def do_refresh(self, tag: bytes) -> None:
        self._run(tag, self.refresh(), b"Completed")

    select_NOOP: Any = (do_refresh,)
    select_CHECK: Any = select_NOOP

    # -- folders ----------------------------------------------------------------------------

    def do_CREATE(self, tag: bytes, name: bytes) -> None:
        self._run(tag, self._call(self.account.create, name), b"CREATE completed")

    def do_DELETE(self, tag: bytes, name: bytes) -> None:
        self._run(tag, self._delete(name), b"DELETE completed")

    async def _delete(self, name: bytes) -> None:
        decoded = mailbox_name(name)
        if self.mbox is not None and self.mbox.name == decoded:
            raise FolderError("Cannot delete the selected mailbox")
        await self.account.delete(decoded)

    def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> None:
        self._run(tag, self._call(self.account.rename, old, new), b"RENAME completed")

    def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._run(tag, self._call(self.account.subscribe, name), b"SUBSCRIBE completed")

    def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> None:
        self._run(tag, self._call(self.account.unsubscribe, name), b"UNSUBSCRIBE completed")

    async def _call(self, method: Any, *names: bytes) -> None:
        await method(*(mailbox_name(n) for n in names))

    auth_CREATE: Any = (do_CREATE, _FINAL)
    select_CREATE: Any = auth_CREATE
    auth_DELETE: Any = (do_DELETE, _FINAL)
    select_DELETE: Any = auth_DELETE
    auth_RENAME: Any = (do_RENAME, _ASTRING, _FINAL)
    select_RENAME: Any = auth_RENAME
    auth_SUBSCRIBE: Any = (do_SUBSCRIBE, _FINAL)
    select_SUBSCRIBE: Any = auth_SUBSCRIBE
    auth_UNSUBSCRIBE: Any = (do_UNSUBSCRIBE, _FINAL)
    select_UNSUBSCRIBE: Any = auth_UNSUBSCRIBE

    # -- APPEND, COPY ------------------------------------------------------------------------

    def do_APPEND(self, tag: bytes, name: bytes, flags: Any, date: Any, message: Any) -> None:
        self._run(tag, self._append(name, flags or [], date, message), b"APPEND completed")

    def _append_name(self, line: bytes) -> Any:
        """APPEND's mailbox name, kept for the checks made before its literal is asked for."""
        result = self.arg_astring(line)
        if isinstance(result, Deferred):  # the name was itself a literal
            return result.addCallback(self._remember_append_target)
        return self._remember_append_target(result)

    def _remember_append_target(self, parsed: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
        self._append_target, rest = parsed
        # After a literal name twisted leaves the space before the next argument, which
        # its literal parser then refused ("Missing literal").
        return parsed[0], rest[1:] if rest[:1] == b" " else rest

    def _literal(self, line: bytes) -> Any:
        # What APPEND would refuse after the upload is refused before "+ Ready": a client
        # writing to a missing folder or past its quota sends nothing (twisted holds a
        # literal of up to 10 MB in memory), as RFC 3501 6.3.11 has servers do.
        if line[:1] != b"{":
            return self.arg_literal(line)  # twisted's BAD for what is no literal
        size = self.literal_size(line)  # strict digits, at most imap.maxLiteralSize
        # Until "+ Ready" the client must send nothing: what it sends anyway ends the session
        # (GomailIMAP4.lineReceived), never read as commands (its message's lines would be).
        self.continuation_owed = True
        checked = Deferred.fromCoroutine(self._check_append(size))

        def ask(_: Any) -> Any:
            self.continuation_owed = False
            return self.arg_literal(line)

        def refused(failure: Any) -> Any:
            self.continuation_owed = False
            return failure

        return checked.addCallbacks(ask, refused)

    async def _check_append(self, size: int) -> None:
        account, name = self.account, self._append_target
        self._append_target = b""
        # Failures here answer through twisted's argument errors: MailboxException's text is the NO.
        try:
            folder = mailbox_name(name)
            if not await account.run(imapfolders.folder_exists, account.root, folder):
                raise imap4.MailboxException("[TRYCREATE] No such mailbox")
            # Only a look: the octets are reserved when the message is stored (IMAPAccount.append).
            if account.quota and await account.counter.used(account.root) + size > account.quota:
                raise OverQuota("[OVERQUOTA] Quota exceeded")
        except FolderError as e:  # an invalid name: its text is the client's answer
            raise imap4.MailboxException(str(e)) from None
        except OSError as e:
            self.log.warn("IMAP session of {client}: disk error: {error}", client=self.client_host, error=str(e))
            raise imap4.MailboxException("[UNAVAILABLE] Local error, try again later") from None

    auth_APPEND: Any = (do_APPEND, _append_name, imap4.IMAP4Server.opt_plist, imap4.IMAP4Server.opt_datetime,
                        _literal)
    select_APPEND: Any = auth_APPEND

    async def _append(self, name: bytes, flags: list[Any], date: bytes | None, message: Any) -> None:
        try:
            folder = mailbox_name(name)
            mtime = None
            if date is not None:
                try:
                    mtime = datetime.datetime.strptime(date.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
                except (UnicodeError, ValueError) as e:
                    raise imap4.IllegalClientResponse("Bad date-time") from e
            if not await self.account.run(imapfolders.folder_exists, self.account.root, folder):
                raise FolderError("[TRYCREATE] No such mailbox")
            message.seek(0, 2)
            size = message.tell()
            message.seek(0)
            await self.account.append(folder, message, size, _system_flags(flags), mtime)
        finally:
            message.close()
        self._announce(folder)
        if self.mbox is not None and self.mbox.name.upper() == folder.upper():
            await self.refresh()

    def do_COPY(self, tag: bytes, messages: Any, name: bytes, uid: int = 0) -> None:
        self._run(tag, self._copy(messages, name, uid), b"COPY completed")

    select_COPY: Any = (do_COPY, imap4.IMAP4Server.arg_seqset, _FINAL)

    async def _copy(self, messages: Any, name: bytes, uid: int) -> None:
        account, mbox = self.account, self.mbox
        folder = mailbox_name(name)
        if not await account.run(imapfolders.folder_exists, account.root, folder):
            raise FolderError("[TRYCREATE] No such mailbox")
        entries = [mbox.entries[n - 1] for n in mbox._numbers(messages, bool(uid))]
        total = sum(e.size for e in entries)
        await account.reserve(total)
        target = account.path(folder)
        copied = 0
        try:
            for entry in entries:
                source = await mbox.file_path(entry)
                # A hard link of the stored file (a copy across file systems), flags and date kept.
                await account.run(imapstore.add_message, target, source, entry.flags, entry.mtime,
                                  account.clock.seconds(), account.hostname)
                copied += entry.size
        finally:
            account.release(total - copied, False)
            if copied:
                account.release(copied, True)
                self._announce(folder)
        if mbox.name.upper() == folder.upper():
            await self.refresh()

    # -- EXPUNGE, CLOSE, STORE --------------------------------------------------------------

    def do_EXPUNGE(self, tag: bytes) -> None:
        if not self.mbox.isWriteable():
            return self.sendNegativeResponse(tag, b"Mailbox is read-only")
        self._run(tag, self._expunge(True), b"EXPUNGE completed")

    select_EXPUNGE: Any = (do_EXPUNGE,)

    async def _expunge(self, report: bool) -> None:
        mbox = self.mbox
        gone = await mbox.expunge_deleted()
        if gone:
            self._announce(mbox.name)
        for seq in gone if report else ():
            self.sendUntaggedResponse(b"%d EXPUNGE" % seq)

    def _announce(self, folder: str) -> None:
        """Tell this user's idling sessions (L{gomail.mailaccess.notify}) that C{folder} changed."""
        self.server.notices.notify(self.account.name, folder)

    def do_CLOSE(self, tag: bytes) -> None:
        self._run(tag, self._close(tag), None)

    select_CLOSE: Any = (do_CLOSE,)

    async def _close(self, tag: bytes) -> None:
        if self.mbox.isWriteable():
            await self._expunge(False)  # RFC 3501 6.4.2: no untagged EXPUNGE
        self.mbox.removeListener(self)
        self.mbox = None
        self.state = "auth"
        self.sendPositiveResponse(tag, b"CLOSE completed")

    def _IMAP4Server__ebStore(self, failure: Any, tag: bytes) -> None:
        self._answer_failure(tag, failure)

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        def flagsChanged(self, newFlags: dict[int, list[str]]) -> None: ...

        def arg_literal(self, line: bytes) -> Any: ...

        def arg_astring(self, line: bytes, final: bool = False) -> Any: ...

        def literal_size(self, line: bytes) -> int: ...


def _system_flags(flags: list[Any]) -> frozenset[str]:
    given = {(f.decode("ascii", "replace") if isinstance(f, bytes) else str(f)).lower() for f in flags}
    return frozenset(f for f in SYSTEM_FLAGS if f.lower() in given)


__all__ = ["IMAPCommandsMixin", "mailbox_name"]
