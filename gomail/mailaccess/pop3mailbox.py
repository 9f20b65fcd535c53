# -*- test-case-name: tests.test_pop3 -*-
"""
A Maildir as a POP3 maildrop: L{MaildirMailbox}, twisted.mail's
C{IMailbox} over L{gomail.mailaccess.maildir}, and L{MaildirRealm}, the
C{twisted.cred} realm that hands it out for an authenticated user.

Logins do not go through this realm's own portal: every protocol logs in
through gomail's one portal (L{gomail.auth.checker.make_portal}), which
fires with the user's canonical name; the POP3 session then asks this realm
for that user's mailbox. The realm takes the mailbox's lock (one session at
a time, RFC 1939 8) and lists it before handing it out; the logout it
returns gives the lock back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from gomail.mailaccess.maildir import MailboxLocks, Maildir, MaildirMessage, mailbox_path


class MailboxInUse(Exception):
    """Another session holds this mailbox (POP3: C{-ERR [IN-USE]})."""


@implementer(IMailbox)
class MaildirMailbox:
    """
    One session's view of a Maildir (indices are 0-based, as C{IMailbox}
    has them): the listing made at login, and the messages marked deleted,
    which L{sync} removes (RFC 1939's UPDATE state, after QUIT only).
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, maildir: Maildir, messages: list[MaildirMessage],
                 removed: Callable[[int], None] | None = None) -> None:
        """@param removed: told the octets a QUIT removed (the quota's count: it need not wait a recount)."""
        self.maildir = maildir
        self.messages = list(messages)
        self.deleted: set[int] = set()
        self.removed = removed

    def message(self, index: int) -> MaildirMessage:
        """The listed message at C{index}, deleted or not; C{ValueError} for no such index."""
        if not 0 <= index < len(self.messages):
            raise ValueError(f"no message {index + 1}")
        return self.messages[index]

    def listMessages(self, i: int | None = None) -> Any:
        """The size of message C{i}, or of every message (0 for one marked deleted)."""
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self.messages)]
        message = self.message(i)
        return 0 if i in self.deleted else message.size

    def getMessage(self, index: int) -> Deferred:
        """A Deferred firing with an open binary file over the message (read in blocks, never whole)."""
        message = self.message(index)
        if index in self.deleted:
            raise ValueError(f"message {index + 1} is deleted")
        return self.maildir.open(message)

    def getUidl(self, index: int) -> bytes:
        """The message's unique-id: derived from its Maildir unique name, the same in every session."""
        return self.message(index).uid.encode("ascii")

    def deleteMessage(self, index: int) -> None:
        """Mark the message deleted (removed by L{sync}, never before)."""
        self.message(index)
        self.deleted.add(index)

    def undeleteMessages(self) -> None:
        """RSET: nothing is marked deleted any more."""
        self.deleted.clear()

    def sync(self) -> Deferred:
        """
        Remove the messages marked deleted (in the I/O pool). Fires with the
        number removed; fails with C{OSError} naming how many could not be.
        """
        doomed = [self.messages[i] for i in sorted(self.deleted)]

        def removed(failed: list[MaildirMessage]) -> int:
            if self.removed is not None:
                self.removed(sum(m.size for m in doomed if m not in failed))
            if failed:
                raise OSError(f"{len(failed)} of {len(doomed)} deleted messages could not be removed")
            return len(doomed)

        return self.maildir.remove(doomed).addCallback(removed)

    @property
    def count(self) -> int:
        """Messages not marked deleted."""
        return len(self.messages) - len(self.deleted)

    @property
    def size(self) -> int:
        """Their total size in octets."""
        return sum(m.size for n, m in enumerate(self.messages) if n not in self.deleted)


@implementer(IRealm)
class MaildirRealm:
    """
    Hands out the C{IMailbox} of an authenticated user (the avatar id: the
    canonical user name) for the Maildirs under C{root}.

    @param run: runs blocking work in the I/O pool (the spool's C{run}).
    @param locks: the mailboxes with a session now.
    """

    def __init__(self, root: str, run: Callable[..., Deferred], locks: MailboxLocks | None = None,
                 quota: Any = None) -> None:
        """@param quota: the L{gomail.mailaccess.quota.MailboxQuota} whose counts removals lower, or None."""
        self.root = root
        self.run = run
        self.locks = locks if locks is not None else MailboxLocks()
        self.quota = quota

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Deferred:
        """
        Fires with C{(IMailbox, mailbox, logout)} once the mailbox is locked
        and listed; fails with L{MailboxInUse}, with
        L{gomail.mailaccess.maildir.UnsafeMailbox} for a name no directory
        may be made from, or with C{OSError} when it cannot be listed.
        """
        if IMailbox not in interfaces:
            raise NotImplementedError("this realm only hands out POP3 mailboxes")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        return Deferred.fromCoroutine(self._open(name))

    async def _open(self, name: str) -> tuple[Any, MaildirMailbox, Callable[[], None]]:
        path = mailbox_path(self.root, name)
        if not self.locks.acquire(path):
            raise MailboxInUse(name)
        maildir = Maildir(path, self.run)
        try:
            messages = await maildir.messages()
        except BaseException:
            self.locks.release(path)
            raise
        released = False

        def logout() -> None:
            nonlocal released
            if not released:
                released = True
                self.locks.release(path)

        quota = self.quota
        lowered = (lambda octets: quota.add(name, -octets)) if quota is not None else None
        return IMailbox, MaildirMailbox(maildir, messages, lowered), logout


__all__ = ["MailboxInUse", "MaildirMailbox", "MaildirRealm"]
