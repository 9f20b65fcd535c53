# -*- test-case-name: tests.test_imap -*-
"""
A user's Maildir as twisted.mail's IMAP server sees it: L{IMAPAccount}
(C{IAccount}: the folders, subscriptions, quota) and L{IMAPFolder}
(C{IMailbox}: one session's view of a selected folder: sequence numbers,
UIDs, flags, C{\\Recent}).

Every disk access is L{gomail.mailaccess.imapstore} run in the spool's I/O
pool (C{run}); what twisted calls synchronously (counts, UIDs, flags,
C{fetch}) answers from the session's view, which L{IMAPFolder.refresh}
brings up to date (on NOOP, CHECK and while IDLE: other sessions' and
deliveries' changes are only reported at those points, as RFC 3501 7
allows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail.imap4 import IAccount, IMailbox, MailboxException, MessageSet, wildcardToRegexp
from zope.interface import implementer

from gomail.mailaccess import imapfolders, imapsections, imapstore
from gomail.mailaccess.imapmessage import IMAPMessage
from gomail.mailaccess.imapreadahead import READ_AHEAD, ReadAhead
from gomail.mailaccess.imapstore import DELIMITER, Entry, FolderError
from gomail.mailaccess.quota import QuotaCounter

SYSTEM_FLAGS = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"]


class OverQuota(MailboxException):
    """A message would take the user over C{imap.quotaMB}."""


@dataclass
class FolderInfo:
    """A folder as LIST shows it (twisted asks it for its flags and delimiter)."""

    attributes: list[str]

    def getFlags(self) -> list[str]:
        return self.attributes

    def getHierarchicalDelimiter(self) -> str:
        return DELIMITER


@implementer(IAccount)
class IMAPAccount:
    """
    One logged-in user's Maildir C{root}. C{quota}: octets allowed (0: no
    limit). C{subscribed} is read at login (L{open}) and written through.
    """

    def __init__(self, name: str, root: str, run: Callable[..., Deferred], clock: Any, hostname: str,
                 quota: int = 0, counter: QuotaCounter | None = None) -> None:
        self.name = name
        self.root = root
        self.run = run
        self.clock = clock
        self.hostname = hostname
        self.quota = quota
        self.counter = counter or QuotaCounter(run, clock)
        self.subscribed: list[str] = []
        self.indexes = imapsections.IndexCache()  # of the large messages FETCH looked at last

    async def open(self) -> IMAPAccount:
        """Read the subscriptions (and make INBOX's directories, so its UIDVALIDITY is kept from the start)."""
        await self.run(_make_inbox, self.root)
        self.subscribed = await self.run(imapfolders.read_subscriptions, self.root)
        return self

    def path(self, name: str) -> str:
        """The directory of folder C{name}. @raise FolderError: a name no folder may have."""
        return imapfolders.folder_path(self.root, name)

    # -- IAccount ------------------------------------------------------------------------------

    def select(self, name: str, rw: bool = True) -> Deferred:
        """Fires with the folder (listed, UIDs given), or None when there is no such folder."""
        return Deferred.fromCoroutine(self._select(name, bool(rw)))

    async def _select(self, name: str, rw: bool) -> IMAPFolder | None:
        try:
            path = self.path(name)
        except FolderError:
            return None
        if not await self.run(imapfolders.folder_exists, self.root, name):
            return None
        folder = IMAPFolder(self, name, path, rw)
        await folder.refresh()
        return folder

    def listMailboxes(self, ref: str, wildcard: str) -> Deferred:
        """Fires with C{(name, FolderInfo)} for each folder matching C{ref + wildcard} (RFC 3501 6.3.8)."""
        return Deferred.fromCoroutine(self._list(ref, wildcard))

    async def _list(self, ref: str, wildcard: str) -> list[tuple[str, FolderInfo]]:
        if not wildcard:
            return [("", FolderInfo(["\\Noselect"]))]
        names = await self.run(imapfolders.list_folders, self.root)
        pattern = wildcardToRegexp(ref + wildcard, DELIMITER)
        result = []
        for name in names:
            if pattern.match(name) or (name == "INBOX" and pattern.match("inbox")):
                children = any(other.startswith(name + DELIMITER) for other in names)
                result.append((name, FolderInfo(["\\HasChildren" if children else "\\HasNoChildren"])))
        return result

    def isSubscribed(self, name: str) -> bool:
        return name in self.subscribed or (name.upper() == "INBOX" and "INBOX" in self.subscribed)

    async def create(self, name: str) -> None:
        """CREATE. @raise FolderError: refused (its text is the answer)."""
        if name.endswith(DELIMITER):
            name = name[:-1]  # RFC 3501 6.3.3: a trailing delimiter only declares a hierarchy
        await self.run(imapfolders.create_folder, self.root, name)

    async def delete(self, name: str) -> None:
        """DELETE (its subscription stays, as RFC 3501 6.3.9 allows); its octets come off the quota count."""
        removed = await self.run(imapfolders.delete_folder, self.root, name)
        self.counter.add(self.root, -removed)

    async def rename(self, old: str, new: str) -> None:
        """RENAME (folders under it move with it)."""
        await self.run(imapfolders.rename_folder, self.root, old, new)

    async def subscribe(self, name: str) -> None:
        """SUBSCRIBE: a valid name (the folder need not exist now)."""
        if name.upper() != "INBOX":
            imapfolders.check_folder_name(name)
        if not self.isSubscribed(name):
            await self.run(imapfolders.write_subscriptions, self.root, [*self.subscribed, name])
            self.subscribed.append(name)

    async def unsubscribe(self, name: str) -> None:
        """UNSUBSCRIBE. @raise FolderError: not subscribed."""
        if name not in self.subscribed:
            raise FolderError("Not subscribed to that mailbox")
        remaining = [n for n in self.subscribed if n != name]
        await self.run(imapfolders.write_subscriptions, self.root, remaining)
        self.subscribed = remaining

    def addMailbox(self, name: str, mbox: Any = None) -> None:
        raise MailboxException("not supported")

    # -- storing messages ---------------------------------------------------------------------

    async def reserve(self, octets: int) -> None:
        """Promise C{octets} within the quota (pair with L{release}). @raise OverQuota: they do not fit."""
        if self.quota and not await self.counter.reserve(self.root, octets, self.quota):
            raise OverQuota("[OVERQUOTA] Quota exceeded")

    def release(self, octets: int, stored: bool) -> None:
        """End a L{reserve}: C{stored} octets are counted from now on."""
        if self.quota:
            self.counter.release(self.root, octets, stored)
        elif stored:
            self.counter.add(self.root, octets)

    async def append(self, name: str, source: Any, size: int, flags: frozenset[str], mtime: float | None) -> int:
        """APPEND: store C{source} (an open file, or a message file's path to link) in folder C{name}; its UID."""
        await self.reserve(size)
        stored = False
        try:
            now = self.clock.seconds()
            uid = await self.run(imapstore.add_message, self.path(name), source, flags,
                                 now if mtime is None else mtime, now, self.hostname)
            stored = True
        finally:
            self.release(size, stored)
        return uid


def _make_inbox(root: str) -> None:
    imapstore.make_maildir(root)  # 0700, the Maildir itself too


@implementer(IMailbox)
class IMAPFolder:
    """One session's view of a selected folder (sequence number n is C{entries[n - 1]})."""

    def __init__(self, account: IMAPAccount, name: str, path: str, writeable: bool) -> None:
        self.account = account
        self.name = name
        self.path = path
        self.writeable = writeable
        self.entries: list[Entry] = []
        self.recent: set[int] = set()
        self.uidvalidity = 0
        self.uidnext = 1
        self.listeners: list[Any] = []
        #: Bytes each FETCH may read ahead (L{fetch}).
        self.read_ahead_budget = READ_AHEAD

    async def refresh(self) -> tuple[list[int], bool, dict[int, list[str]]]:
        """
        Bring the view up to date with the disk: C{(sequence numbers
        expunged meanwhile, each as numbered when it is reported, whether
        messages were added, flag changes by sequence number as numbered
        after those expunges)}: the session reports the changes after the
        C{EXPUNGE}s, or a client would apply them to the wrong messages.
        """
        state = await self.account.run(imapstore.sync, self.path, self.account.clock.seconds())
        self.uidvalidity, self.uidnext = state.uidvalidity, state.uidnext
        self.recent |= state.recent
        current = {e.uid: e for e in state.entries}
        expunged: list[int] = []
        kept: list[Entry] = []
        for seq in range(len(self.entries), 0, -1):
            if self.entries[seq - 1].uid not in current:
                expunged.append(seq)
        flag_changes: dict[int, list[str]] = {}
        for entry in self.entries:
            fresh = current.get(entry.uid)
            if fresh is None:
                continue
            if fresh.flags != entry.flags:
                flag_changes[len(kept) + 1] = sorted(fresh.flags)
            kept.append(fresh)
        known = {e.uid for e in kept}
        added = [e for e in state.entries if e.uid not in known]
        self.entries = kept + added
        return expunged, bool(added), flag_changes

    # -- IMailboxInfo / IMailbox --------------------------------------------------------------

    def getFlags(self) -> list[str]:
        return list(SYSTEM_FLAGS)

    def getHierarchicalDelimiter(self) -> str:
        return DELIMITER

    def getUIDValidity(self) -> int:
        return self.uidvalidity

    def getUIDNext(self) -> int:
        return max(self.uidnext, (self.entries[-1].uid + 1) if self.entries else 1)

    def getUID(self, message: int) -> int:
        return self.entries[message - 1].uid

    def getMessageCount(self) -> int:
        return len(self.entries)

    def getRecentCount(self) -> int:
        return sum(1 for e in self.entries if e.uid in self.recent)

    def getUnseenCount(self) -> int:
        return sum(1 for e in self.entries if "\\Seen" not in e.flags)

    def first_unseen(self) -> int | None:
        """The sequence number of the first message without \\Seen (SELECT's UNSEEN), or None."""
        return next((n for n, e in enumerate(self.entries, 1) if "\\Seen" not in e.flags), None)

    def isWriteable(self) -> bool:
        return self.writeable

    def destroy(self) -> None:
        raise MailboxException("use DELETE")

    def requestStatus(self, names: list[str]) -> dict[str, int]:
        values = {"MESSAGES": self.getMessageCount(), "RECENT": self.getRecentCount(),
                  "UIDNEXT": self.getUIDNext(), "UIDVALIDITY": self.getUIDValidity(),
                  "UNSEEN": self.getUnseenCount()}
        return {name.upper(): values[name.upper()] for name in names if name.upper() in values}

    def addListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeListener(self, listener: Any) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def addMessage(self, message: Any, flags: Any = (), date: Any = None) -> Deferred:
        raise MailboxException("APPEND goes through the account")

    def _numbers(self, messages: MessageSet, uid: bool) -> list[int]:
        """The sequence numbers of C{messages} (sequence numbers, or UIDs with C{uid}), in order."""
        if not self.entries:
            return []
        if uid:
            highest = self.entries[-1].uid
            wanted = MessageSet()
            for start, end in messages.ranges:
                # "n:*" always includes the highest UID, even when n is above it (RFC 3501 6.4.8).
                start = highest if start is None else start
                end = highest if end is None else end
                wanted.add(min(start, end), max(start, end))
            return [n for n, e in enumerate(self.entries, 1) if e.uid in wanted]
        try:
            messages.last = len(self.entries)
        except ValueError:
            pass  # already set
        return [n for n in range(1, len(self.entries) + 1) if n in messages]

    def fetch(self, messages: MessageSet, uid: bool) -> list[tuple[int, IMAPMessage]]:
        """
        C{(sequence number, IMAPMessage)} of each message asked for, their
        content read later; whole messages ahead of their turn, by a
        L{ReadAhead} of this FETCH only (its messages hold it: it goes with them
        when the FETCH ends, nothing of it stays on the folder).
        """
        numbers = self._numbers(messages, uid)
        ahead = ReadAhead(self.account.run, self.path, [self.entries[n - 1] for n in numbers],
                          self.read_ahead_budget)
        return [(n, self.message(n, ahead)) for n in numbers]

    def message(self, seq: int, read_ahead: ReadAhead | None = None) -> IMAPMessage:
        """Message C{seq} of the view (C{read_ahead}: of the FETCH asking for it)."""
        entry = self.entries[seq - 1]
        return IMAPMessage(entry, entry.uid in self.recent, self, read_ahead)

    def store(self, messages: MessageSet, flags: list[str], mode: int, uid: bool) -> Deferred:
        """STORE: fires with C{{sequence number: new flags}} once the files are renamed."""
        return Deferred.fromCoroutine(self._store(self._numbers(messages, uid), flags, mode))

    async def _store(self, numbers: list[int], flags: list[str], mode: int) -> dict[int, list[str]]:
        if not self.writeable:
            raise MailboxException("Mailbox is read-only")
        # Only system flags are kept (PERMANENTFLAGS has no \*); \Recent cannot be set.
        given = {f for f in SYSTEM_FLAGS if f.lower() in {g.lower() for g in flags}}
        changes = []
        for n in numbers:
            entry = self.entries[n - 1]
            new = (entry.flags | given if mode > 0 else entry.flags - given if mode < 0 else frozenset(given))
            changes.append((entry, frozenset(new)))
        await self.set_flags(changes)
        return {n: self.message(n).getFlags() for n in numbers}

    async def set_flags(self, changes: list[tuple[Entry, frozenset[str]]]) -> None:
        """Rename the files of C{changes} to carry their new flags; the view follows."""
        todo = [(entry, flags) for entry, flags in changes if flags != entry.flags]
        if not todo:
            return
        done = await self.account.run(imapstore.set_flags, self.path, todo)
        for entry, filename in done:
            entry.filename = filename
            entry.flags = imapstore.flags_of(filename)

    async def expunge_deleted(self) -> list[int]:
        """Remove the messages with \\Deleted: their sequence numbers as EXPUNGE reports them (highest first)."""
        doomed = [(n, e) for n, e in enumerate(self.entries, 1) if "\\Deleted" in e.flags]
        if not doomed:
            return []
        uniques, removed = await self.account.run(imapstore.expunge, self.path, [e for _, e in doomed])
        self.account.counter.add(self.account.root, -removed)
        doomed = [(n, e) for n, e in doomed if e.unique in uniques]  # the rest lost \Deleted meanwhile
        gone = {e.uid for _, e in doomed}
        self.entries = [e for e in self.entries if e.uid not in gone]  # the UID list drops them at its next sync
        return [n for n, _ in reversed(doomed)]

    def expunge(self) -> Deferred:
        return Deferred.fromCoroutine(self.expunge_deleted())

    async def content(self, message: IMAPMessage, header_only: bool) -> None:
        """Read C{message}'s header, or header and MIME index (in the I/O pool), for twisted's synchronous calls."""
        await imapsections.load(self.account, self.path, message, header_only)

    def file_path(self, entry: Entry) -> Deferred:
        """Fires with the current path of C{entry}'s file (FileNotFoundError: gone)."""
        return self.account.run(imapstore.message_path, self.path, entry)


__all__ = ["FolderInfo", "IMAPAccount", "IMAPFolder", "OverQuota"]
