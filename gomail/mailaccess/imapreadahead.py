# -*- test-case-name: tests.test_imap_readahead -*-
"""
Reading ahead for FETCH of whole messages (C{BODY[]}, C{RFC822}).

A FETCH of many small messages spent most of its time handing one job a
message to the I/O pool and waiting for it (the reactor idle in
C{epoll_wait}), and sending each message with its own C{send()}.
L{ReadAhead} reads the next small messages of the FETCH (those of at most
one block) several to an I/O-pool job (L{read_batch}), while the reactor
writes the ones read before, so that the messages read before wait in
memory, not the reactor for the disk.

What is held is bounded: the bytes read and not yet written to the
transport, and those the job under way may read, are at most C{budget}
(1 MiB, L{READ_AHEAD}); the first job reads a quarter of it, and a new one
starts once a quarter of it is free. A larger message is not read ahead: it
is streamed from its file block by block
(L{gomail.mailaccess.imapsections.open_range}), as fast as the client takes it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gomail.mailaccess.imapsections import FirstBlock
from gomail.mailaccess.imapstore import BLOCK, Entry, listed_names

#: Bytes a FETCH may hold read ahead (read and not yet written to the transport).
READ_AHEAD = 1024 * 1024
#: Messages one I/O-pool job reads at most (small messages cost a file open each).
BATCH_MESSAGES = 256

#: What a batch gives for one message: its bytes, why it could not be read, or None (not read: stream it).
Item = FirstBlock | OSError | None


def read_batch(folder: str, entries: list[Entry], budget: int, block: int) -> list[Item]:
    """
    (blocking) Read whole, in order, the messages of C{entries} of at most
    C{block} bytes, until C{budget} bytes or L{BATCH_MESSAGES} messages (the
    first is always read): one item per message looked at. A larger
    message is skipped (None) without being opened.

    A file renamed since the session listed the folder (a flag changed by
    another session) is found in one listing of C{cur/} for the whole batch,
    made when the first such message is met: a message that listing does
    not hold is gone (C{FileNotFoundError}); one it holds under a name
    gone since is left to be streamed on its own (None).
    """
    cur = os.path.join(folder, "cur")
    names: dict[str, str] | None = None
    items: list[Item] = []
    used = 0
    for entry in entries:
        if len(items) >= BATCH_MESSAGES:
            break
        if entry.size > block:
            items.append(None)
            continue
        if used and used + entry.size > budget:
            break
        try:
            try:
                fd = os.open(os.path.join(cur, entry.filename), os.O_RDONLY)
            except FileNotFoundError:
                if names is None:
                    names = listed_names(cur)
                if entry.unique not in names:
                    raise FileNotFoundError(f"message {entry.unique} is gone") from None
                try:
                    fd = os.open(os.path.join(cur, names[entry.unique]), os.O_RDONLY)
                except FileNotFoundError:
                    items.append(None)  # renamed again since the listing: found on its own
                    continue
            try:
                # Three system calls a message (each takes the GIL back, which the reactor
                # holds most of the time): one more byte than listed shows the end was reached.
                data = os.read(fd, entry.size + 1)
            finally:
                os.close(fd)
        except OSError as e:
            items.append(e)
            continue
        if len(data) != entry.size:
            items.append(None)  # not what the listing said: streamed (and checked) on its own
            continue
        items.append(FirstBlock(None, 0, len(data), data))
        used += len(data)
    return items


class ReadAhead:
    """
    The whole messages of one FETCH (C{entries}, in the order twisted asks
    for them), read ahead in batches by C{run} (the I/O pool) within
    C{budget} bytes. Nothing is read until the first L{take}: a FETCH that
    asks for no whole message costs nothing.
    """

    log = Logger()

    def __init__(self, run: Callable[..., Deferred], folder: str, entries: list[Entry],
                 budget: int = READ_AHEAD, block: int = BLOCK) -> None:
        self._run = run
        self._folder = folder
        self._entries = entries
        self._positions: dict[int, int] | None = None
        self._ready: deque[tuple[int, Item]] = deque()
        self._next = 0  # the first position not yet given to a batch
        self._reading = self._started = False
        self._waiters: list[Deferred] = []
        self.budget = budget
        self.block = block
        #: Bytes read and not taken, plus what the batch under way may still read.
        self.held = 0

    async def take(self, entry: Entry) -> FirstBlock | None:
        """
        C{entry}'s bytes, read ahead: a L{FirstBlock} with C{file} None, or
        None when it was not read ahead (larger than a block, asked for a
        second time, not of this FETCH): the caller reads it itself.

        @raise OSError: it could not be read (gone: C{FileNotFoundError}).
        """
        position = self._position(entry)
        if position is None or self.budget <= 0:
            return None
        while not self._ready or self._ready[-1][0] < position:
            if position < self._next:
                # Its batch is done and it was taken (BODY[] twice), passed over, or not read
                # (larger than a block): never waited for (the batch under way reads others).
                return None
            if self._reading:
                waiter: Deferred = Deferred()
                self._waiters.append(waiter)
                await waiter
                continue
            # The first take, or a jump past messages never asked for: what was read before goes.
            self._drop_before(position)
            self._next = position
            self._start()
        item = self._pop(position, errors=True)
        if isinstance(item, OSError):
            raise item
        return item

    def ready(self, entry: Entry) -> FirstBlock | None:
        """
        C{entry}'s bytes if they are read already (taken then), without
        waiting: None when they are not (yet), or it could not be read
        (L{take} then says why).
        """
        position = self._position(entry)
        if position is None or not self._ready or self._ready[-1][0] < position:
            return None
        item = self._pop(position, errors=False)
        return item if isinstance(item, FirstBlock) else None

    def _pop(self, position: int, errors: bool) -> Item:
        # Messages passed over (gone before their turn, sent another way) are dropped here.
        self._drop_before(position)
        item: Item = None
        if self._ready and self._ready[0][0] == position and (errors or not isinstance(self._ready[0][1], OSError)):
            item = self._ready.popleft()[1]
            if isinstance(item, FirstBlock):
                self.held -= len(item.first)
        # The next batch is read while this one is written (a quarter of the budget at least).
        if not self._reading and self.held <= self.budget * 3 // 4 and self._next < len(self._entries):
            self._start()
        return item

    def _position(self, entry: Entry) -> int | None:
        if self._positions is None:
            self._positions = {e.uid: n for n, e in enumerate(self._entries)}
        position = self._positions.get(entry.uid)
        return position if position is not None and self._entries[position] is entry else None

    def _drop_before(self, position: int) -> None:
        while self._ready and self._ready[0][0] < position:
            item = self._ready.popleft()[1]
            if isinstance(item, FirstBlock):
                self.held -= len(item.first)

    def _start(self) -> None:
        """One I/O-pool job for the messages from C{_next} on, within what the budget leaves."""
        # A small first batch, so that writing starts early; the next is read while it is written.
        limit = self.budget - self.held if self._started else self.budget // 4
        self._started = True
        start = self._next
        self._reading = True
        self.held += limit
        d = self._run(read_batch, self._folder, self._entries[start:start + BATCH_MESSAGES], limit, self.block)
        d.addCallbacks(lambda items: self._read(start, limit, items), lambda failure: self._failed(start, limit, failure))

    def _failed(self, start: int, limit: int, failure: Failure) -> None:
        # Not a message's error (those are items): each message of the batch is read on its own instead.
        self.log.failure("IMAP FETCH: reading ahead failed", failure)
        self._read(start, limit, [None] * min(BATCH_MESSAGES, len(self._entries) - start))

    def _read(self, start: int, limit: int, items: list[Item]) -> None:
        self.held -= limit
        for offset, item in enumerate(items):
            if isinstance(item, FirstBlock):
                self.held += len(item.first)
            self._ready.append((start + offset, item))
        self._next = start + len(items)
        self._reading = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


__all__ = ["BATCH_MESSAGES", "READ_AHEAD", "ReadAhead", "read_batch"]
