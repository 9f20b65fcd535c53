# -*- test-case-name: tests.test_imap_idle -*-
"""
IMAP IDLE (RFC 2177) for L{gomail.mailaccess.imap.GomailIMAP4}: while a
client idles on a selected folder, the session looks at the folder (its
C{refresh}: EXPUNGE, EXISTS, RECENT, flag changes)

- at once when IDLE starts (mail that arrived since the last command),
- at once when a notice says the folder changed
  (L{gomail.mailaccess.notify.MailboxNotices}: local delivery, another
  session's APPEND, COPY or EXPUNGE in this process),
- and every C{imap.idlePollInterval} seconds, for mail other programs write.

One look at a time: notices that come during a look are coalesced into one
more look after it. DONE (or the end of the session) ends the
subscription and the polling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from gomail.mailaccess.notify import folder_key
from gomail.mailaccess.sessionapi import IMAPSessionAPI


class IMAPIdleMixin(IMAPSessionAPI):
    """IDLE for a session with C{server} (its C{clock}, C{notices}), C{settings}, C{account}, C{mbox}."""

    server: Any
    settings: Any
    account: Any
    mbox: Any
    parseState: str
    log: Any

    def init_idle(self) -> None:
        self._idle_tag: bytes | None = None
        self._idle_call: Any = None  # the next poll
        self._idle_looking: Deferred | None = None  # the look at the folder under way
        self._idle_again = False  # a notice came during that look: one more after it
        self._idle_unsubscribe: Any = None

    def do_IDLE(self, tag: bytes) -> None:
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendLine(b"+ idling")
        if self.mbox is not None:
            # None when the user has too many listeners already: this session polls only.
            self._idle_unsubscribe = self.server.notices.subscribe(self.account.name, self._idle_notice)
            # Notices are heard only while idling: look for what came since the last command.
            self._idle_look()

    auth_IDLE: Any = (do_IDLE,)
    select_IDLE: Any = auth_IDLE

    def _idle_notice(self, folder: str) -> None:
        """A folder of this user changed: look now if it is the selected one."""
        if self._idle_tag is not None and self.mbox is not None and folder_key(folder) == folder_key(self.mbox.name):
            self._idle_look()

    def _idle_look(self) -> None:
        looking = self._idle_looking
        if looking is not None and not looking.called:
            self._idle_again = True
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()  # rescheduled after this look
        self._idle_call = None
        self._idle_looking = Deferred.fromCoroutine(self._idle_looks())

    async def _idle_looks(self) -> None:
        while True:
            self._idle_again = False
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - logged; the next notice or poll tries again
                self.log.failure("IMAP IDLE look at the folder failed")
            if not (self._idle_again and self._idle_tag is not None):
                break
        self._schedule_idle_poll()

    def _schedule_idle_poll(self) -> None:
        if self.mbox is not None and self._idle_tag is not None:
            self._idle_call = self.server.clock.callLater(self.settings.idlePollInterval, self._idle_poll)

    def _idle_poll(self) -> None:
        """While IDLE, every idlePollInterval: mail written by other programs is found too."""
        self._idle_call = None
        self._idle_look()

    def stop_idle(self) -> None:
        """End IDLE's subscription and polling (DONE, LOGOUT, the end of the session)."""
        self._idle_tag = None
        self._idle_again = False
        unsubscribe, self._idle_unsubscribe = self._idle_unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def parse_idle(self, line: bytes) -> None:
        """RFC 2177: the client ends IDLE with DONE."""
        tag = self._idle_tag
        self.stop_idle()
        self.parseState = "command"
        done = line.strip().upper() == b"DONE"

        def answer(_: Any = None) -> None:
            if done:
                self.sendPositiveResponse(tag, b"IDLE terminated")
            else:
                self.sendBadResponse(tag, b"Expected DONE: IDLE terminated")

        looking, self._idle_looking = self._idle_looking, None
        if looking is not None and not looking.called:
            # A look at the folder is under way: the answer (and so the next command, which
            # waits for it) comes after its changes, never in the middle of another command.
            looking.addBoth(answer)
        else:
            answer()

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        async def refresh(self) -> None: ...


__all__ = ["IMAPIdleMixin"]
