# -*- test-case-name: tests.test_quota -*-
"""
The per-user quota (C{[imap] quotaMB}, 0: none): the octets a user's
Maildir holds over all its folders, counted in the spool's I/O pool
(L{gomail.mailaccess.imapfolders.usage}) and kept for a minute, with what
this process adds and removes meanwhile. One L{QuotaCounter} is shared by
IMAP's APPEND and COPY (C{NO [OVERQUOTA]}), local delivery (C{452 4.2.2},
retried) and the SMTP RCPT check, so each Maildir is counted once a minute
at most, whoever asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gomail.mailaccess import imapfolders
from gomail.spool.jobs.maildirjobs import mailbox_name

#: Seconds a quota count is trusted before it is made again (other processes change it meanwhile).
QUOTA_CACHE_SECONDS = 60


class QuotaCounter:
    """
    The octets each Maildir holds, counted in the I/O pool (C{run}) and kept
    for L{QUOTA_CACHE_SECONDS}; callers asking while a count is under way
    wait for that count instead of starting another.
    """

    def __init__(self, run: Callable[..., Deferred], clock: Any) -> None:
        self.run = run
        self.clock = clock
        self._counted: dict[str, tuple[int, float]] = {}
        self._counting: dict[str, list[Deferred]] = {}
        #: Octets promised to stores under way (reserve() to release()), per Maildir.
        self._reserved: dict[str, int] = {}

    async def used(self, root: str) -> int:
        """Octets used under the Maildir C{root}. @raise OSError: it could not be counted."""
        counted = self._counted.get(root)
        if counted is not None and self.clock.seconds() - counted[1] < QUOTA_CACHE_SECONDS:
            return counted[0]
        waiting = self._counting.get(root)
        if waiting is not None:
            d: Deferred[int] = Deferred()
            waiting.append(d)
            return await d
        self._counting[root] = []
        try:
            total = await self.run(imapfolders.usage, root)
        except BaseException as e:
            for d in self._counting.pop(root):
                d.errback(e)
            raise
        self._counted[root] = (total, self.clock.seconds())
        for d in self._counting.pop(root):
            d.callback(total)
        return total

    async def reserve(self, root: str, octets: int, limit: int) -> bool:
        """
        Promise C{octets} under C{root} if they fit C{limit} with what is
        stored and what is promised already: whether they were. Checking
        and promising happen in one reactor turn, so stores made in
        parallel (eight APPENDs at once went 7x past the quota while each
        was checked against the same count) cannot all pass the same check.
        Pair with L{release}. @raise OSError: C{root} could not be counted.
        """
        used = await self.used(root)
        if used + self._reserved.get(root, 0) + octets > limit:
            return False
        self.promise(root, octets)
        return True

    def promise(self, root: str, octets: int) -> None:
        """Promise C{octets} under C{root} without a check (pair with L{release})."""
        self._reserved[root] = self._reserved.get(root, 0) + octets

    def release(self, root: str, octets: int, stored: bool) -> None:
        """End a L{reserve}: the octets were stored (counted from now on) or not."""
        left = self._reserved.get(root, 0) - octets
        if left > 0:
            self._reserved[root] = left
        else:
            self._reserved.pop(root, None)
        if stored:
            self.add(root, octets)

    def add(self, root: str, octets: int) -> None:
        """A message of C{octets} was added (negative: removed) by this process."""
        counted = self._counted.get(root)
        if counted is not None:
            self._counted[root] = (max(0, counted[0] + octets), counted[1])


class MailboxQuota:
    """
    The quota of every local Maildir under C{directory} (the spool's
    C{mailbox/}): C{limit} octets each (0: none), counted by C{counter}.
    """

    log = Logger()

    def __init__(self, directory: str, limit: int, counter: QuotaCounter) -> None:
        self.directory = os.path.normpath(directory)
        self.limit = limit
        self.counter = counter

    def root(self, address: str) -> str:
        """The Maildir delivery gives C{address} (the key IMAP's account counts under too)."""
        return os.path.join(self.directory, mailbox_name(address))

    async def exceeded(self, address: str, octets: int = 0) -> bool:
        """
        Whether C{octets} more would take C{address}'s Maildir over the
        limit (with C{octets} 0: whether it is full already, at or over the
        limit). Never with no limit; a Maildir that cannot be counted is
        logged and taken to have room (its delivery meets the same error).
        """
        if not self.limit:
            return False
        try:
            used = await self.counter.used(self.root(address))
        except OSError as e:
            self.log.warn("quota of <{recipient}> not counted: {error}", recipient=address, error=str(e))
            return False
        return used + octets > self.limit if octets else used >= self.limit

    async def reserve(self, address: str, octets: int) -> bool:
        """Promise C{octets} to C{address}'s Maildir if they fit (always, with no limit); see L{QuotaCounter.reserve}."""
        if not self.limit:
            return True
        try:
            return await self.counter.reserve(self.root(address), octets, self.limit)
        except OSError as e:
            self.log.warn("quota of <{recipient}> not counted: {error}", recipient=address, error=str(e))
            self.counter.promise(self.root(address), octets)  # room assumed: released like any other
            return True

    def release(self, address: str, octets: int, stored: bool) -> None:
        """End a L{reserve} of C{address}."""
        if self.limit:
            self.counter.release(self.root(address), octets, stored)

    def add(self, address: str, octets: int) -> None:
        """C{octets} were delivered to C{address}."""
        self.counter.add(self.root(address), octets)


__all__ = ["QUOTA_CACHE_SECONDS", "MailboxQuota", "QuotaCounter"]
