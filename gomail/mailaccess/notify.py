# -*- test-case-name: tests.test_imap_idle -*-
"""
In-process news that a user's Maildir changed: local delivery
(L{gomail.delivery.maildir.MaildirDelivery}) and IMAP's APPEND, COPY and
EXPUNGE publish (L{MailboxNotices.notify}); IMAP sessions in IDLE listen
(L{MailboxNotices.subscribe}) and look at their folder at once instead of
at their next poll.

Only this process hears: mail that other programs write into a Maildir is
found by IDLE's poll (C{imap.idlePollInterval}).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger
from zope.interface import implementer

from gomail.interfaces import IMailboxNotices
from gomail.spool.jobs.maildirjobs import mailbox_name

#: The folder local delivery writes to.
INBOX = "INBOX"
#: Listeners one Maildir may have at once: each notice costs every listener a look at the
#: disk, so a user with more idling sessions than this has the rest poll instead.
MAX_LISTENERS = 64


def folder_key(name: str) -> str:
    """A folder name as notices compare it (INBOX is case-insensitive, RFC 3501 5.1)."""
    return INBOX if name.upper() == INBOX else name


@implementer(IMailboxNotices)
class MailboxNotices:
    """
    Listeners per Maildir, keyed as delivery names the directory
    (L{mailbox_name}: an address and the IMAP user it delivers to share
    one). A listener stays until it unsubscribes; a Maildir's entry goes
    with its last listener, so ended sessions leave nothing behind.

    @param limit: the most listeners one Maildir may have (L{MAX_LISTENERS}).
    """

    log = Logger()

    def __init__(self, limit: int = MAX_LISTENERS) -> None:
        self.limit = limit
        self._listeners: dict[str, dict[object, Callable[[str], object]]] = {}

    def subscribe(self, address: str, callback: Callable[[str], object]) -> Callable[[], None] | None:
        """
        Call C{callback(folder)} (in the reactor, at once) for each notice
        about C{address}'s Maildir. Returns the function that ends this
        subscription (calling it again does nothing), or None when the
        Maildir has L{limit} listeners already: the caller polls instead.
        """
        key = mailbox_name(address)
        listeners = self._listeners.setdefault(key, {})
        if len(listeners) >= self.limit:
            if not listeners:
                del self._listeners[key]
            return None
        token = object()
        listeners[token] = callback

        def unsubscribe() -> None:
            current = self._listeners.get(key)
            if current is not None and current.pop(token, None) is not None and not current:
                del self._listeners[key]

        return unsubscribe

    def notify(self, address: str, folder: str = INBOX) -> int:
        """
        Tell C{address}'s listeners that C{folder} changed (mail added or
        removed): the number told. A listener that raises is logged; the
        others are told all the same.
        """
        callbacks = list(self._listeners.get(mailbox_name(address), {}).values())
        for callback in callbacks:
            try:
                callback(folder)
            except Exception:  # noqa: BLE001 - one broken listener must not silence the others
                self.log.failure("a mailbox notice listener failed ({folder})", folder=folder)
        return len(callbacks)

    def listeners(self, address: str | None = None) -> int:
        """How many listeners C{address}'s Maildir has (None: all Maildirs together)."""
        if address is not None:
            return len(self._listeners.get(mailbox_name(address), {}))
        return sum(len(listeners) for listeners in self._listeners.values())


__all__ = ["INBOX", "MAX_LISTENERS", "MailboxNotices", "folder_key"]
