# -*- test-case-name: tests.test_spool -*-
"""
Files of removed messages, kept in ``tmp/`` to hold the next messages.

Creating a file is, on some file systems, the most expensive step of a commit:
on ext4 a new inode is searched for in its directory's block group, and in a
crowded group that took 400-600 us of CPU here against 20 us elsewhere on the
same disk (see bench/README.md), twice per message. Overwriting a file that
already exists costs neither that search nor a new block allocation. So a
removed message's files are renamed into ``tmp/`` instead of unlinked (up to
a limit), and the next commit takes one, renames it to its temporary name,
overwrites it and cuts it to length before the fsync. Nothing about
durability changes: the file is still written, trimmed and fsynced in
``tmp/`` before it is renamed into ``queue/``, and ``tmp/`` (spares included)
is emptied at start.

A file with other links (a local delivery hard-linked it into a Maildir) is
never taken: it belongs to the mailbox now. A retired file over
L{KEEP_BLOCKS} bytes is emptied at once, so spares hold little disk space (a
small one keeps its blocks: overwriting them in place is the cheapest commit
of all), and a spare becomes available only once its removal from
``queue/`` is on disk: were it reused earlier, a crash could bring back the
old queue entry holding the new message's bytes.
"""

from __future__ import annotations

import itertools
import os
import threading

from gomail.spool.fs import FileSystem

#: A retired file up to this size keeps its blocks for the next message (256 spares: 16 MiB at most).
KEEP_BLOCKS = 64 * 1024
#: How the name of a spare in C{tmp/} begins.
SPARE_PREFIX = "spare-"


class SpareFiles:
    """The spares of one spool. Safe to use from several threads (the writers and the I/O pool)."""

    def __init__(self, directory: str, limit: int = 256) -> None:
        self.directory = directory
        self.limit = limit
        self._names: list[str] = []
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._names)

    def create(self, fs: FileSystem, path: str) -> int:
        """
        A descriptor of a new file at C{path}, open for writing from its start:
        a spare renamed there when there is one, else a new file. The caller
        writes it and then calls C{fs.trim(fd, length)} before the fsync.
        """
        with self._lock:
            spare = self._names.pop() if self._names else None
        if spare is not None:
            try:
                fs.rename(spare, path)
            except FileNotFoundError:
                pass  # tmp/ was emptied under us: make a new one
            else:
                return fs.open_existing(path)
        return fs.create(path)

    def retire(self, fs: FileSystem, path: str) -> str | None:
        """
        Remove C{path} from where it is: emptied and renamed into C{tmp/} when
        there is room and nothing else links it, else unlinked. Returns the
        spare's path, to be L{publish}ed once the removal is durable.
        """
        with self._lock:
            number = next(self._numbers) if len(self._names) < self.limit else None
        try:
            if number is None:
                fs.unlink(path)
                return None
            links, size = fs.links_and_size(path)
            if links != 1:
                fs.unlink(path)
                return None
            if size > KEEP_BLOCKS:
                fs.empty(path)
            spare = os.path.join(self.directory, f"{SPARE_PREFIX}{number}")
            fs.rename(path, spare)
        except FileNotFoundError:
            return None  # already gone: removal is idempotent
        return spare

    def publish(self, spares: list[str]) -> None:
        """Offer C{spares} (from L{retire}) to new commits: call only once their removals are on disk."""
        with self._lock:
            # The limit is checked at retire time, so removals in flight together may pass it by a few.
            self._names.extend(spares)

    def forget(self) -> None:
        """Drop every spare from the list (C{tmp/} is being emptied)."""
        with self._lock:
            self._names.clear()
