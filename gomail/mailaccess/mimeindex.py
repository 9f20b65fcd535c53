# -*- test-case-name: tests.test_imap_sections -*-
"""
A message's MIME structure found by reading its file once, block by block,
without holding it: for each entity the offsets of its header and body,
the body's line count, a bounded copy of its header and its parts
(L{index_file}, L{index_bytes}). FETCH sends sections as byte ranges of the
file and builds BODYSTRUCTURE from it (L{EntityPart} is what twisted's
encoder reads), so a 50 MB message costs a block and its index, not 50 MB.

The rules are those L{gomail.mailaccess.imapmessage.RawPart} applies in
memory, line by line: a header ends at its first empty line; a delimiter
(C{--boundary}, C{--boundary--}, then only spaces or tabs) takes the line
break before it, and a delimiter of an enclosing multipart ends every part
inside it; after C{MAX_MIME_DEPTH} levels an entity is a leaf; a multipart
lists at most C{MAX_MIME_PARTS} parts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, BinaryIO

from twisted.mail.imap4 import IMessagePart
from zope.interface import implementer

from gomail.mailaccess.imapmessage import MAX_MIME_DEPTH, MAX_MIME_PARTS, RawPart

#: Bytes read from the file at a time.
BLOCK = 64 * 1024
#: Bytes of one entity's header kept (BODYSTRUCTURE reads its Content-* fields; real ones are far smaller).
MAX_KEPT_HEADER = 64 * 1024
#: Bytes of header kept for all the entities of one message together.
MAX_INDEX_HEADERS = 1024 * 1024
#: Entities recorded for one message (RawPart had no total: 500 parts at each of 12 levels).
MAX_ENTITIES = 1000
#: Bytes of a line looked at. A longer line is no delimiter (only 64 KiB of blanks after
#: a boundary could make it one) and a longer header line is cut here.
LINE_HEAD = 64 * 1024
#: What an index costs in memory beyond its kept headers, per entity (for the cache's bound).
ENTITY_COST = 256


@dataclass(eq=False)
class Entity:
    """
    One MIME entity: its header at C{[header_start, body_start)} of the file
    (C{header}: the first bytes of it), its body at C{[body_start, body_end)}
    with C{lines} lines (as twisted counts them: what iterating its bytes
    gives), its C{content_type} (lower case, RFC 2045's default) and its
    C{children} (the parts of a multipart, or the message a message/rfc822 holds).
    """

    header_start: int
    depth: int
    header: bytes = b""
    body_start: int = -1
    body_end: int = -1
    lines: int = 0
    content_type: str = "text/plain"
    children: list[Entity] = field(default_factory=list)
    # While scanning: the header's pieces, its boundary while its delimiters are looked for.
    _chunks: list[bytes] = field(default_factory=list, repr=False)
    _kept: int = 0
    _full: bool = False
    _boundary: bytes | None = None
    _after_delimiter: int = -1
    _nl_body: int = 0

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_start

    def is_multipart(self) -> bool:
        """Whether its parts are followed (RawPart.isMultipart's rule)."""
        return self.depth < MAX_MIME_DEPTH and self.content_type.startswith("multipart/")


@dataclass(eq=False)
class MimeIndex:
    """The structure of a message file of C{size} octets; C{cost}: its approximate memory in bytes."""

    root: Entity
    size: int
    cost: int


def _delimiter(content: bytes, boundary: bytes) -> bool | None:
    """Whether a line (without its line break) is a closing delimiter of C{boundary}; None: no delimiter."""
    if not content.startswith(b"--" + boundary):
        return None
    rest = content[len(boundary) + 2:]
    if rest.startswith(b"--") and not rest[2:].strip(b" \t"):
        return True
    return None if rest.strip(b" \t") else False


class Scanner:
    """Builds a L{MimeIndex} from a message's bytes fed in order (L{feed}), then L{finish}."""

    def __init__(self) -> None:
        self.root = Entity(0, 0)
        self.stack = [self.root]  # the entities open at the current line, outermost first
        self.count = 1
        self.budget = MAX_INDEX_HEADERS
        self.pos = 0  # offset of the next byte fed
        self.nl = 0  # line breaks before the line being looked at
        self.tail = b""  # the last bytes fed (up to 3): what precedes a line that starts a block
        # A line begun in an earlier block: its start, first bytes, length, the bytes before it.
        self.partial: bytearray | None = None
        self.p_start = self.p_len = 0
        self.p_before = b""
        self.p_cr = False

    # -- reading lines --------------------------------------------------------------------------

    def _before(self, data: bytes, i: int) -> bytes:
        return data[i - 3:i] if i >= 3 else (self.tail + data[:i])[-3:]

    def feed(self, data: bytes) -> None:
        """The next bytes of the message."""
        i, n = 0, len(data)
        while i < n:
            if self.partial is not None:
                j = data.find(b"\n", i)
                end = n if j < 0 else j + 1
                cr = (data[end - 2] == 13 if end - 1 > i else self.p_cr) if j >= 0 else False
                if len(self.partial) < LINE_HEAD:
                    self.partial += data[i:min(end, i + LINE_HEAD - len(self.partial))]
                self.p_len += end - i
                self.p_cr = data[end - 1] == 13
                i = end
                if j >= 0:
                    self._complete(2 if cr else 1)
                continue
            top = self.stack[-1]
            if top.body_start >= 0:
                if not any(e._boundary is not None for e in self.stack):
                    # Nothing ends this entity before the end of the file: only its lines are counted.
                    self.nl += data.count(b"\n", i)
                    break
                if n - i >= 2 and not data.startswith(b"--", i):
                    # Only lines that start with "--" can be delimiters: skip to the next one.
                    k = data.find(b"\n--", i)
                    if k < 0:
                        k = data.rfind(b"\n", i)
                        if k < 0:
                            self._begin(data, i, n)
                            break
                    self.nl += data.count(b"\n", i, k + 1)
                    i = k + 1
                    continue
            j = data.find(b"\n", i)
            if j < 0:
                self._begin(data, i, n)
                break
            before = self._before(data, i) if data.startswith(b"--", i) else b""
            self._line(self.pos + i, data[i:min(j + 1, i + LINE_HEAD)], j + 1 - i,
                       2 if j > i and data[j - 1] == 13 else 1, before)
            i = j + 1
        self.tail = (self.tail + data[-3:])[-3:]
        self.pos += n

    def _begin(self, data: bytes, i: int, n: int) -> None:
        self.partial = bytearray(data[i:min(n, i + LINE_HEAD)])
        self.p_start, self.p_len = self.pos + i, n - i
        self.p_before = self._before(data, i)
        self.p_cr = data[n - 1] == 13

    def _complete(self, term: int) -> None:
        line, self.partial = bytes(self.partial or b""), None
        self._line(self.p_start, line, self.p_len, term, self.p_before)

    def _line(self, start: int, head: bytes, length: int, term: int, before: bytes) -> None:
        """One line: C{head} (its first bytes) of C{length} octets, the last C{term} of them its line break."""
        nl_at = self.nl
        self.nl += 1 if term else 0
        if head.startswith(b"--") and length <= LINE_HEAD:
            content = head[:length - term]
            for k, entity in enumerate(self.stack):
                if entity._boundary is not None and entity._after_delimiter != start:
                    close = _delimiter(content, entity._boundary)
                    if close is not None:
                        self._delimited(k, start, start + length, close, before, nl_at)
                        return
        top = self.stack[-1]
        if top.body_start < 0:
            self._keep(top, head, length)
            if term and length == term:
                self._end_header(top, start + length)

    # -- entities ---------------------------------------------------------------------------------

    def _keep(self, entity: Entity, head: bytes, length: int) -> None:
        if entity._full:
            return
        room = min(MAX_KEPT_HEADER - entity._kept, self.budget)
        piece = head[:min(length, room)]
        entity._chunks.append(piece)
        entity._kept += len(piece)
        self.budget -= len(piece)
        entity._full = len(piece) < length  # what is kept is always the header's first bytes

    def _end_header(self, entity: Entity, body_start: int) -> None:
        entity.body_start, entity._nl_body = body_start, self.nl
        self._classify(entity)
        if (entity.content_type == "message/rfc822" and entity.depth < MAX_MIME_DEPTH
                and self.count < MAX_ENTITIES):
            self._open_child(entity, body_start)

    def _classify(self, entity: Entity) -> None:
        entity.header, entity._chunks = b"".join(entity._chunks), []
        parsed = BytesHeaderParser(policy=compat32).parsebytes(entity.header)
        entity.content_type = parsed.get_content_type()
        if entity.is_multipart() and entity.body_start >= 0:
            boundary = parsed.get_boundary()
            entity._boundary = boundary.encode("ascii", "replace") if boundary else None

    def _open_child(self, parent: Entity, start: int) -> None:
        child = Entity(start, parent.depth + 1)
        parent.children.append(child)
        self.stack.append(child)
        self.count += 1

    def _delimited(self, k: int, start: int, end: int, close: bool, before: bytes, nl_at: int) -> None:
        """A delimiter of C{stack[k]} at C{[start, end)}: its open part ends before the line break that precedes it."""
        multipart = self.stack[k]
        term = 2 if before.endswith(b"\r\n") else 1 if before.endswith(b"\n") else 0
        last_nl = before[-1 - term:len(before) - term] == b"\n"
        for entity in reversed(self.stack[k + 1:]):
            self._finish(entity, start - term, nl_at - (1 if term else 0), last_nl)
        del self.stack[k + 1:]
        multipart._after_delimiter = end
        if close or len(multipart.children) >= MAX_MIME_PARTS or self.count >= MAX_ENTITIES:
            multipart._boundary = None  # the rest is its epilogue
        else:
            self._open_child(multipart, end)

    def _finish(self, entity: Entity, end: int, nl_end: int, last_nl: bool) -> None:
        """Close C{entity} at offset C{end} (C{nl_end} line breaks before it; C{last_nl}: the byte before it is one)."""
        entity.header_start = min(entity.header_start, end)
        if entity.body_start < 0 or entity.body_start > end:
            # Its header never ended within it: all header, no body (split_header's rule).
            header = b"".join(entity._chunks) if entity.body_start < 0 else entity.header
            entity.header = header[:end - entity.header_start]
            if entity.body_start < 0:
                entity.body_start = end
                self._classify(entity)
                if (entity.content_type == "message/rfc822" and entity.depth < MAX_MIME_DEPTH
                        and self.count < MAX_ENTITIES):
                    entity.children.append(Entity(end, entity.depth + 1, body_start=end, body_end=end))
                    self.count += 1
            entity.body_start = end
        entity.body_end = end
        entity._boundary = None
        entity.lines = 0 if end <= entity.body_start else nl_end - entity._nl_body + (0 if last_nl else 1)

    def finish(self) -> MimeIndex:
        """The index, once every byte was fed."""
        if self.partial is not None:
            self._complete(0)
        for entity in reversed(self.stack):
            self._finish(entity, self.pos, self.nl, self.tail.endswith(b"\n"))
        self.stack = []
        cost = MAX_INDEX_HEADERS - self.budget + ENTITY_COST * self.count
        return MimeIndex(self.root, self.pos, cost)


def index_bytes(data: bytes) -> MimeIndex:
    """The index of a message held in memory."""
    scanner = Scanner()
    scanner.feed(data)
    return scanner.finish()


def index_file(f: BinaryIO, size: int) -> MimeIndex:
    """(blocking) The index of an open message file of C{size} octets, read from its start a block at a time."""
    scanner = Scanner()
    f.seek(0)
    remaining = size
    while remaining > 0:
        block = f.read(min(BLOCK, remaining))
        if not block:
            break
        scanner.feed(block)
        remaining -= len(block)
    return scanner.finish()


class LineCount:
    """
    What L{EntityPart.getBodyFile} gives: twisted's BODYSTRUCTURE only
    iterates a body file to count its lines (C{getLineCount}), and the
    index knows that count, so this yields one item per line and holds no
    bytes. Sections are sent from the file, never from here.
    """

    def __init__(self, lines: int) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[bytes]:
        return itertools.repeat(b"", self.lines)


@implementer(IMessagePart)
class EntityPart:
    """An L{Entity} as twisted's C{getBodyStructure} reads it (the answers RawPart gave for the same bytes)."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self._header: RawPart | None = None

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        if self._header is None:
            self._header = RawPart(self.entity.header, header_only=True, depth=self.entity.depth)
        return self._header.getHeaders(negate, *names)

    def getBodyFile(self) -> LineCount:
        return LineCount(self.entity.lines)

    def getSize(self) -> int:
        return self.entity.body_size

    def isMultipart(self) -> bool:
        return self.entity.is_multipart()

    def getSubPart(self, part: int) -> EntityPart:
        """Part C{part} (0-based); IndexError: none."""
        children = self.entity.children
        if not children and part == 0 and self.entity.content_type == "message/rfc822":
            # Past the bounds a message/rfc822 holds no recorded message: an empty one stands
            # in (twisted's BODYSTRUCTURE would fail on IndexError; RawPart's did at depth 12).
            end = self.entity.body_end
            return EntityPart(Entity(end, self.entity.depth + 1, body_start=end, body_end=end))
        return EntityPart(children[part])


__all__ = ["BLOCK", "MAX_ENTITIES", "MAX_INDEX_HEADERS", "MAX_KEPT_HEADER", "Entity", "EntityPart", "LineCount",
           "MimeIndex", "Scanner", "index_bytes", "index_file"]
