# -*- test-case-name: tests.test_spool -*-
"""
The content of recently committed messages, kept in memory for their delivery.

A relayed message is read back from ``queue/`` in the I/O pool: a thread
hand-off, an open, a read and a close for bytes the server had in memory a
moment before. Most mail is small and is relayed within milliseconds of its
250, so the content of a message received whole in memory is kept here, up
to a byte budget, oldest first out, and its delivery reads it from memory.
The file stays the truth: an entry is exactly the bytes written and fsynced
to it (or read back from it and checked against the envelope's digest before
an attempt, see L{gomail.spool.store.Spool.check_content}), is never changed,
and is dropped when the message leaves the queue; whatever is not here
(evicted, too big, recovered at start) is read from disk.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentContent:
    """Bytes of queued messages by id, at most C{budget} bytes in all (0 keeps nothing)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def largest(self) -> int:
        """The largest content kept: an eighth of the budget, so that a few big messages never flush the rest."""
        return self.budget // 8

    def keep(self, queue_id: str, content: bytes) -> None:
        """Remember C{content} (the whole message file) for C{queue_id}, evicting the oldest as needed."""
        if not self.budget or len(content) > self.largest:
            return
        self.forget(queue_id)
        self._entries[queue_id] = content
        self.size += len(content)
        while self.size > self.budget:
            _, evicted = self._entries.popitem(last=False)
            self.size -= len(evicted)

    def get(self, queue_id: str) -> bytes | None:
        """The content kept for C{queue_id}, or None."""
        return self._entries.get(queue_id)

    def forget(self, queue_id: str) -> None:
        """Drop the entry of a message leaving the queue (no error if there is none)."""
        content = self._entries.pop(queue_id, None)
        if content is not None:
            self.size -= len(content)
