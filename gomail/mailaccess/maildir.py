# -*- test-case-name: tests.test_mailaccess_maildir -*-
"""
The read side of a local Maildir (the delivery side is
L{gomail.delivery.maildir}), for every mail access protocol.

Layout: C{<spool>/mailbox/<mailbox_name(user)>/{tmp,new,cur}}. Delivery
links each message into C{new/} under a unique name
(C{<received>.<queue id>_<index>.<host>}); a reader moves what it finds in
C{new/} to C{cur/}, appending the info suffix C{:2,} (flags, for IMAP,
follow it), as Maildir readers do. Everything after the first C{:} is
info; the part before it, the I{unique name}, never changes, so the ids
clients keep (POP3 UIDL, see L{uidl}) are derived from it and survive
restarts and flag changes.

Messages are hard links that may share their inode with the queued file or
with other recipients' copies: they are read and unlinked, never written.

The functions here block (directory listings, renames, unlinks): L{Maildir}
runs them in the spool's I/O pool. The mailbox directory comes from the
canonical name of the authenticated user only (L{mailbox_path}), never from
what a client typed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred

from gomail.spool.jobs.maildirjobs import mailbox_name

#: The info suffix a reader gives a message it moves from new/ to cur/ (no flags yet).
INFO = ":2,"
#: RFC 1939 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
MAX_UIDL = 70


class UnsafeMailbox(ValueError):
    """A user name no mailbox directory may be made from."""


def mailbox_path(root: str, user: str) -> str:
    """
    The Maildir of C{user} (a canonical user name, as the portal gave it)
    under C{root}: the directory delivery writes to (the same
    L{mailbox_name} escaping), checked to be a direct child of C{root}.

    @raise UnsafeMailbox: an empty name, or one with C{/}, NUL, or
        another control character, or C{.}/C{..}.
    """
    if not user or user in (".", "..") or "/" in user or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise UnsafeMailbox(f"no mailbox for the user name {user!r}")
    name = mailbox_name(user)
    root = os.path.normpath(root)
    path = os.path.normpath(os.path.join(root, name))
    # mailbox_name already escapes what could leave root; checked again so that a later
    # change of that escaping cannot open another user's (or any) directory.
    if os.path.dirname(path) != root or os.path.basename(path) in ("", ".", ".."):
        raise UnsafeMailbox(f"no mailbox for the user name {user!r}")
    return path


def unique_name(filename: str) -> str:
    """The unique part of a Maildir file name: everything before the info (the first C{:})."""
    return filename.split(":", 1)[0]


def uidl(unique: str) -> str:
    """
    The POP3 unique-id of a message: its unique name when that is a valid
    one (gomail's own names are, unless the host name is long), else a
    digest of it. Either way it depends on the unique name only.
    """
    if 0 < len(unique) <= MAX_UIDL and all(0x21 <= ord(c) <= 0x7E for c in unique):
        return unique
    return "h" + hashlib.sha256(unique.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True)
class MaildirMessage:
    """One message of a listing: its unique name, its file name in C{cur/}, size and time."""

    unique: str
    filename: str
    size: int
    mtime: float

    @property
    def uid(self) -> str:
        """The POP3 unique-id (L{uidl})."""
        return uidl(self.unique)


def _names(directory: str) -> list[str]:
    """The entries of a Maildir subdirectory worth looking at ([] when it does not exist)."""
    try:
        return [name for name in os.listdir(directory) if not name.startswith(".")]
    except FileNotFoundError:
        return []


def _regular(path: str) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # removed meanwhile (another reader, an operator)
    return st if stat.S_ISREG(st.st_mode) else None


def scan(path: str) -> list[MaildirMessage]:
    """
    (blocking) The messages of the Maildir at C{path}, oldest first: those
    in C{cur/}, and those in C{new/}, moved to C{cur/} on the way. A
    mailbox that does not exist (no mail yet) is empty; nothing is created.

    One unique name is one message. A copy in C{new/} of a unique name
    already in C{cur/} is a delivery repeated after a crash (delivery is at
    least once; its names come from the queue id): with the same size it is
    removed, else left in C{new/} unlisted. Two names in C{cur/} for one
    unique name (only another program makes those): the first is listed.
    """
    cur, new = os.path.join(path, "cur"), os.path.join(path, "new")
    found: dict[str, MaildirMessage] = {}
    for name in sorted(_names(cur)):
        unique = unique_name(name)
        st = None if unique in found else _regular(os.path.join(cur, name))
        if st is not None:
            found[unique] = MaildirMessage(unique, name, st.st_size, st.st_mtime)
    arrived = sorted(_names(new))
    if arrived:
        os.makedirs(cur, mode=0o700, exist_ok=True)  # another deliverer may not have made it
    for name in arrived:
        unique = unique_name(name)
        source = os.path.join(new, name)
        st = _regular(source)
        if st is None:
            continue
        if unique in found:
            if found[unique].size == st.st_size:
                _unlink(source)
            continue
        target = name if ":" in name else name + INFO
        try:
            os.rename(source, os.path.join(cur, target))
        except FileNotFoundError:
            continue
        found[unique] = MaildirMessage(unique, target, st.st_size, st.st_mtime)
    return sorted(found.values(), key=lambda m: (m.mtime, m.unique))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _find(cur: str, message: MaildirMessage) -> str | None:
    """The current path of C{message} in C{cur/}: its info (flags) may have changed since the listing."""
    path = os.path.join(cur, message.filename)
    if os.path.exists(path):
        return path
    for name in _names(cur):
        if unique_name(name) == message.unique:
            return os.path.join(cur, name)
    return None


def open_message(path: str, message: MaildirMessage) -> BinaryIO:
    """
    (blocking) An open binary file over the message, read as it is sent.

    @raise FileNotFoundError: the message is gone.
    """
    found = _find(os.path.join(path, "cur"), message)
    if found is None:
        raise FileNotFoundError(f"message {message.unique} is gone")
    return open(found, "rb")


def remove(path: str, messages: list[MaildirMessage]) -> list[MaildirMessage]:
    """
    (blocking) Remove C{messages} from the Maildir; a message already gone
    counts as removed. Returns those that could not be removed.
    """
    cur = os.path.join(path, "cur")
    failed = []
    for message in messages:
        found = _find(cur, message)
        if found is None:
            continue
        try:
            os.unlink(found)
        except FileNotFoundError:
            pass
        except OSError:
            failed.append(message)
    return failed


class Maildir:
    """
    One user's Maildir, its blocking work run by C{run} (the spool's I/O
    pool: C{run(function, *args)} returns a Deferred of the result).
    """

    def __init__(self, path: str, run: Callable[..., Deferred]) -> None:
        self.path = path
        self.run = run

    def messages(self) -> Deferred:
        """Fires with the listing (L{scan}), new mail moved to C{cur/}."""
        return self.run(scan, self.path)

    def open(self, message: MaildirMessage) -> Deferred:
        """Fires with an open binary file over C{message}; fails with C{OSError} (C{FileNotFoundError}: gone)."""
        return self.run(open_message, self.path, message)

    def read(self, file: Any, size: int) -> Deferred:
        """Fires with the next at most C{size} bytes of C{file} (b"" at its end)."""
        return self.run(file.read, size)

    def remove(self, messages: list[MaildirMessage]) -> Deferred:
        """Fires with the messages that could not be removed (L{remove})."""
        return self.run(remove, self.path, list(messages))


class MailboxLocks:
    """
    Which mailboxes have a session now: POP3 (RFC 1939 8) gives one session
    at a time exclusive access to its maildrop. In this process only: one
    gomail process serves a spool's Maildirs.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, path: str) -> bool:
        """Take the mailbox at C{path}: whether it was free."""
        if path in self._held:
            return False
        self._held.add(path)
        return True

    def release(self, path: str) -> None:
        """Give the mailbox back (once its session's changes are done)."""
        self._held.discard(path)

    def __contains__(self, path: str) -> bool:
        return path in self._held


__all__ = [
    "INFO",
    "MailboxLocks",
    "Maildir",
    "MaildirMessage",
    "UnsafeMailbox",
    "mailbox_path",
    "open_message",
    "remove",
    "scan",
    "uidl",
    "unique_name",
]
