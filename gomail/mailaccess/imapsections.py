# -*- test-case-name: tests.test_imap_sections,tests.test_imap_sections_fetch -*-
"""
What FETCH reads of a message before twisted formats it, and where in the
file each C{BODY[...]} section lies.

L{load}: only the header when that is all a request needs (ENVELOPE,
HEADER.FIELDS: what a client's message list asks for); otherwise the header
and the MIME index (L{gomail.mailaccess.mimeindex}; the session keeps the
last ones it made, L{IndexCache}), and, for a message of at most
L{SMALL_MESSAGE} octets, its bytes. L{locate} turns a section into bytes
(header fields, bounded) or a byte range of the file, which FETCH sends
from memory for a small message or from the file block by block, opened
at its start by L{open_range}. Blocking functions here run in the I/O pool
(the account's C{run}).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, BinaryIO

from gomail.mailaccess import imapstore
from gomail.mailaccess.imapmessage import HeaderEnd, MessageHeader, split_header
from gomail.mailaccess.imapstore import BLOCK, Entry
from gomail.mailaccess.mimeindex import Entity, MimeIndex, index_bytes, index_file

#: A message up to this size is read whole for a FETCH that needs more than its header, in
#: one job (one thread hand-off, as before the index existed) and its sections are cut from
#: memory; a larger one is indexed and sent from its file block by block. Its bytes are
#: held only while that message is sent, so a session holds at most this much of them.
SMALL_MESSAGE = 256 * 1024
#: A header longer than this is cut here (it is not a real mail header).
MAX_HEADER = 1024 * 1024
#: Indexes a session keeps (of the messages it looked at last), and the memory they may take together.
CACHE_ENTRIES = 16
CACHE_COST = 4 * 1024 * 1024

Range = tuple[int, int | None]  # [start, end) of the file; end None: its end


@dataclass
class FirstBlock:
    """
    Octets C{[start, end)} of a message's file and the first of them
    (C{first}); C{file}: still open over the rest, or None when C{first} is all of them.
    """

    file: BinaryIO | None
    start: int
    end: int
    first: bytes

    @property
    def size(self) -> int:
        """Octets of the range (its literal's size)."""
        return self.end - self.start


def read_header(f: BinaryIO) -> bytes:
    """(blocking) A message's header, with its blank line, from an open file at its start (at most about MAX_HEADER)."""
    blocks: list[bytes] = []
    read = 0
    ends = HeaderEnd()
    while read < MAX_HEADER:
        block = f.read(BLOCK)
        blocks.append(block)
        read += len(block)
        if not block or ends.feed(block) is not None:
            break
    data = b"".join(blocks)
    return data if ends.end is None else data[:ends.end]


def read_message_header(path: str, entry: Entry) -> MessageHeader:
    """(blocking) A message's header only (up to its blank line)."""
    with imapstore.open_message(path, entry) as f:
        return MessageHeader(read_header(f))


def read_indexed(path: str, entry: Entry, cached: MimeIndex | None) -> tuple[MessageHeader, MimeIndex, bytes | None]:
    """
    (blocking) A message's header, its index (C{cached} when it is of a
    file of this size, else made now) and, for a small message, its bytes.
    """
    with imapstore.open_message(path, entry) as f:
        size = os.fstat(f.fileno()).st_size
        usable = cached if cached is not None and cached.size == size else None
        if size <= SMALL_MESSAGE:
            data = f.read(size)
            return MessageHeader(split_header(data)[0]), usable or index_bytes(data), data
        header = MessageHeader(read_header(f))
        return header, usable or index_file(f, size), None


class IndexCache:
    """
    The indexes of the messages a session looked at last, by folder and
    unique name (a Maildir file never changes; its size is checked on use),
    so BODYSTRUCTURE then BODY[1] indexes the file once. Bounded in entries
    and in memory (an index's C{cost}); one that costs more than all is not kept.
    """

    def __init__(self, entries: int = CACHE_ENTRIES, cost: int = CACHE_COST) -> None:
        self.entries = entries
        self.cost = cost
        self._indexes: OrderedDict[tuple[str, str], MimeIndex] = OrderedDict()
        self._total = 0

    def get(self, key: tuple[str, str]) -> MimeIndex | None:
        """The index kept under C{key} (now the most recently used), or None."""
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
        return index

    def put(self, key: tuple[str, str], index: MimeIndex) -> None:
        """Keep C{index} under C{key} (the most recently used), forgetting the least recently used past the bounds."""
        old = self._indexes.pop(key, None)
        self._total -= old.cost if old is not None else 0
        if index.cost > self.cost:
            return
        self._indexes[key] = index
        self._total += index.cost
        while len(self._indexes) > self.entries or self._total > self.cost:
            _, dropped = self._indexes.popitem(last=False)
            self._total -= dropped.cost


async def load(account: Any, path: str, message: Any, header_only: bool) -> None:
    """Read what FETCH needs of C{message} (in the I/O pool) into it: its header, or its header and index."""
    if header_only:
        message.load(await account.run(read_message_header, path, message.entry))
        return
    key = (path, message.entry.unique)
    header, index, data = await account.run(read_indexed, path, message.entry, account.indexes.get(key))
    account.indexes.put(key, index)
    message.load(header, index, data)


def locate(message: Any, part: Any) -> bytes | Range:
    """
    What C{BODY[...]} (C{part}, twisted's parsed section, before any
    partial range) sends of C{message}: bytes, or a range of its file. The
    same sections the in-memory split gave: a part number past a single-part
    entity or a missing part is empty; HEADER and TEXT of a part are of the
    message/rfc822 it is.
    """
    if not part.part:
        if part.header:
            return message.content.header_section(part.header.negate, tuple(part.header.fields or ()))
        if part.empty:
            return 0, None
    entity: Entity = message.index.root
    for step, p in enumerate(part.part):
        if p < 0:  # BODY[0] (twisted makes it -1, which Python reads as "the last part")
            return b""
        if step and entity.content_type == "message/rfc822" and entity.children:
            # Numbers after a message/rfc822 part are of the message it encapsulates
            # (RFC 3501 6.4.5: BODY[1.2] is part 2 of the message attached as part 1).
            entity = entity.children[0]
        if entity.is_multipart():
            if p >= len(entity.children):
                return b""
            entity = entity.children[p]
        elif p != 0:  # a single-part entity has a part 1 only: itself
            return b""
    if part.mime:
        return entity.header_start, entity.body_start
    if (part.header or part.text) and part.part:  # HEADER and TEXT of a part: of the message it encapsulates
        if entity.content_type != "message/rfc822" or not entity.children:
            return b""
        entity = entity.children[0]
    if part.header:
        if part.header.fields:
            return MessageHeader(entity.header).header_section(part.header.negate, tuple(part.header.fields))
        return entity.header_start, entity.body_start
    return entity.body_start, entity.body_end


def partial(part: Any, section: bytes | Range) -> bytes | Range:
    """C{section} cut to C{part}'s C{<origin.octets>}, if it has one."""
    if part.partialBegin is None:
        return section
    begin, length = part.partialBegin, part.partialLength
    if isinstance(section, bytes):
        return section[begin:begin + length]
    start, end = section
    start = start + begin if end is None else min(start + begin, end)
    return start, start + length if end is None else min(start + length, end)


def open_range(path: str, entry: Entry, start: int = 0, end: int | None = None) -> FirstBlock:
    """
    (blocking) Find and open a message's file, and read the first block of
    its octets C{[start, end)} (end None or past the file: to its end), in
    one I/O-pool job; the file is left open when there is more.

    @raise OSError: gone (C{FileNotFoundError}) or unreadable.
    """
    f = imapstore.open_message(path, entry)  # closed here or by the caller
    try:
        size = os.fstat(f.fileno()).st_size
        end = size if end is None else min(end, size)
        start = min(start, end)
        if start:
            f.seek(start)
        first = f.read(min(BLOCK, end - start))
    except BaseException:
        f.close()
        raise
    if len(first) >= end - start:
        f.close()
        return FirstBlock(None, start, end, first)
    return FirstBlock(f, start, end, first)


__all__ = ["MAX_HEADER", "SMALL_MESSAGE", "FirstBlock", "IndexCache", "load", "locate", "open_range", "partial",
           "read_header", "read_indexed", "read_message_header"]
