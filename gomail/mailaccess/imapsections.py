# -*- test-case-name: tests.test_imap_sections,tests.test_imap_sections_fetch -*-
"""
What FETCH reads of a message before twisted formats it, and where in the
file each C{BODY[...]} section lies.

L{load}: only the header when that is all a request needs (ENVELOPE,
HEADER.FIELDS: what a client's message list asks for); otherwise the header
and the MIME index (L{gomail.mailaccess.mimeindex}), and, for a message of
at most L{SMALL_MESSAGE} octets, its bytes. L{locate} turns a section into
bytes (header fields, bounded) or a byte range of the file, which FETCH
sends from memory for a small message or from the file block by block.
Blocking functions here run in the I/O pool (the account's C{run}).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, BinaryIO

from gomail.mailaccess import imapstore
from gomail.mailaccess.imapmessage import RawPart, split_header
from gomail.mailaccess.imapstore import Entry
from gomail.mailaccess.mimeindex import BLOCK, Entity, MimeIndex, index_bytes, index_file

#: A message up to this size is read whole for a FETCH that needs more than its header, in
#: one job (one thread hand-off, as before the index existed) and its sections are cut from
#: memory; a larger one is indexed and sent from its file block by block. Its bytes are
#: held only while that message is sent, so a session holds at most this much of them.
SMALL_MESSAGE = 256 * 1024
#: Bytes read from a message's start at a time to find the end of its header.
HEADER_BLOCK = 64 * 1024
#: A header longer than this is cut here (it is not a real mail header).
MAX_HEADER = 1024 * 1024
#: Indexes a session keeps (of messages over SMALL_MESSAGE), and the memory they may take together.
CACHE_ENTRIES = 16
CACHE_COST = 4 * 1024 * 1024

Range = tuple[int, int | None]  # [start, end) of the file; end None: its end


def read_header(f: BinaryIO) -> bytes:
    """(blocking) A message's header, with its blank line, from an open file at its start (at most about MAX_HEADER)."""
    data = b""
    while len(data) < MAX_HEADER:
        block = f.read(HEADER_BLOCK)
        data += block
        if not block or b"\n\r\n" in data or b"\n\n" in data or data.startswith((b"\r\n", b"\n")):
            break
    return split_header(data)[0]


def read_content(path: str, entry: Entry) -> RawPart:
    """(blocking) A message's header only (up to its blank line)."""
    with open(imapstore.message_path(path, entry), "rb") as f:
        return RawPart(read_header(f), header_only=True)


def read_indexed(path: str, entry: Entry, cached: MimeIndex | None) -> tuple[RawPart, MimeIndex, bytes | None]:
    """
    (blocking) A message's header, its index (C{cached} when it is of a
    file of this size) and, for a small message, its bytes.
    """
    with open(imapstore.message_path(path, entry), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= SMALL_MESSAGE:
            data = f.read(size)
            return RawPart(split_header(data)[0], header_only=True), index_bytes(data), data
        header = RawPart(read_header(f), header_only=True)
        index = cached if cached is not None and cached.size == size else index_file(f, size)
        return header, index, None


class IndexCache:
    """
    The indexes of the large messages a session looked at last, by folder and
    unique name (a Maildir file never changes; its size is checked on use),
    so BODYSTRUCTURE then BODY[1] reads the file once. Bounded in entries and memory.
    """

    def __init__(self, entries: int = CACHE_ENTRIES, cost: int = CACHE_COST) -> None:
        self.entries = entries
        self.cost = cost
        self._indexes: OrderedDict[tuple[str, str], MimeIndex] = OrderedDict()
        self._total = 0

    def get(self, key: tuple[str, str]) -> MimeIndex | None:
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
        return index

    def put(self, key: tuple[str, str], index: MimeIndex) -> None:
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
        message.load(await account.run(read_content, path, message.entry))
        return
    key = (path, message.entry.unique)
    header, index, data = await account.run(read_indexed, path, message.entry, account.indexes.get(key))
    if data is None:
        account.indexes.put(key, index)
    message.load(header, index, data)


def locate(message: Any, part: Any) -> bytes | Range:
    """
    What C{BODY[...]} (C{part}, twisted's parsed section, before any
    partial range) sends of C{message}: bytes, or a range of its file. The
    same sections RawPart cut in memory: a part number past a single-part
    entity or a missing part is empty; HEADER and TEXT of a part are of the
    message/rfc822 it is.
    """
    if not part.part:
        if part.header:
            return message.content.header_section(part.header.negate, tuple(part.header.fields or ()))
        if part.empty:
            return 0, None
    entity: Entity = message.index.root
    for p in part.part:
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
            return RawPart(entity.header, header_only=True).header_section(part.header.negate,
                                                                           tuple(part.header.fields))
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


def open_range(path: str, entry: Entry, start: int, end: int | None) -> tuple[Any, int, int, bytes]:
    """
    (blocking) Open a message's file at C{start} and read its first block of
    C{[start, end)} (end None or past the file: its end), in one job:
    (the file, or None when the range was read whole; start; end; the block).
    """
    f = open(imapstore.message_path(path, entry), "rb")  # noqa: SIM115 - closed here or by the caller
    try:
        size = os.fstat(f.fileno()).st_size
        end = size if end is None else min(end, size)
        start = min(start, end)
        f.seek(start)
        first = f.read(min(BLOCK, end - start))
    except BaseException:
        f.close()
        raise
    if len(first) >= end - start:
        f.close()
        return None, start, end, first
    return f, start, end, first


__all__ = ["MAX_HEADER", "SMALL_MESSAGE", "IndexCache", "load", "locate", "open_range", "partial", "read_content",
           "read_header", "read_indexed"]
