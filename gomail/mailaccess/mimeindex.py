# -*- test-case-name: tests.test_imap_sections,tests.test_imap_structure -*-
"""
A message's MIME structure found by reading its file once, block by block,
without holding it: for each entity the offsets of its header and body,
the body's line count, a bounded copy of its header and its parts
(L{index_file}, L{index_bytes}). FETCH sends sections as byte ranges of the
file and builds BODYSTRUCTURE from it
(L{gomail.mailaccess.imapstructure}), so a 50 MB message costs a block and
its index, not 50 MB.

The rules are those of the in-memory splitting it replaced (kept as the
tests' oracle, C{tests.mimetesting.RawPart}), line by line: a header ends
at its first empty line; a delimiter (C{--boundary}, C{--boundary--}, then
only spaces or tabs) takes the line break before it, and a delimiter of an
enclosing multipart ends every part inside it; after C{MAX_MIME_DEPTH}
levels an entity is a leaf; a multipart lists at most C{MAX_MIME_PARTS} parts.

Python looks only at the lines that can matter
(L{gomail.mailaccess.mimelines}): in a body, those that start with C{--}
and one of the boundaries open there (found by a regular expression, in
C); in a header, every line while it is kept whole (MAX_KEPT_HEADER, all
together MAX_INDEX_HEADERS), then only its end, delimiters, C{Content-*}
fields (still kept, MAX_CONTENT_HEADER: a part's type is never lost to the
bounds) and lines the email parser would stop at. Other lines are counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import BinaryIO

from gomail.mailaccess.imapmessage import MAX_MIME_DEPTH, MAX_MIME_PARTS
from gomail.mailaccess.imapstore import BLOCK
from gomail.mailaccess.mimelines import (
    CONTINUED,
    FIELD_START,
    STOP,
    candidates,
    delimiter,
    is_content,
    parsed_on,
)

#: Bytes of one entity's header kept (BODYSTRUCTURE reads its Content-* fields; real ones are far smaller).
MAX_KEPT_HEADER = 64 * 1024
#: Bytes of header kept for all the entities of one message together.
MAX_INDEX_HEADERS = 1024 * 1024
#: Bytes of an entity's Content-* fields kept beyond those bounds (its type, boundary, encoding...).
MAX_CONTENT_HEADER = 2 * 1024
#: Entities recorded for one message (the in-memory code had no total: 500 parts at each of 12 levels).
MAX_ENTITIES = 1000
#: Bytes of a line looked at. A longer line is no delimiter (only 64 KiB of blanks after
#: a boundary could make it one) and a longer header line is not kept.
LINE_HEAD = 64 * 1024
#: What an index costs in memory beyond its kept header bytes, per entity (for the cache's
#: bound): measured with tracemalloc, 360-580 bytes (the entity, its lists, its header's bytes
#: object, the index itself for a one-entity message).
ENTITY_COST = 600

@dataclass(eq=False, slots=True)
class Entity:
    """
    One MIME entity: its header at C{[header_start, body_start)} of the file
    (C{header}: its fields, or as many as the bounds keep, Content-* ones
    first), its body at C{[body_start, body_end)} with C{lines} lines (as
    twisted counts them: what iterating its bytes gives), its
    C{content_type} (lower case, RFC 2045's default) and its C{children}
    (the parts of a multipart, or the message a message/rfc822 holds).
    """

    header_start: int
    depth: int
    header: bytes = b""
    body_start: int = -1
    body_end: int = -1
    lines: int = 0
    content_type: str = "text/plain"
    children: list[Entity] = field(default_factory=list)
    # While scanning: the header lines kept, and how much of each bound they took; whether
    # lines are no longer kept whole (_full), whether the field being read is a kept Content-*
    # one (_continuing: its next lines are kept), whether a stand-in stops the parser
    # (_stopped); its boundary while its delimiters are looked for.
    _pieces: list[bytes] | None = None
    _kept: int = 0
    _content: int = 0
    _full: bool = False
    _continuing: bool = False
    _stopped: bool = False
    _boundary: bytes | None = None
    _after_delimiter: int = -1
    _nl_body: int = 0

    @property
    def body_size(self) -> int:
        """Octets of its body (BODYSTRUCTURE's body size, RFC 3501 7.4.2)."""
        return self.body_end - self.body_start

    def is_multipart(self) -> bool:
        """Whether its parts are followed (a multipart, above the depth bound)."""
        return self.depth < MAX_MIME_DEPTH and self.content_type.startswith("multipart/")


@dataclass(eq=False)
class MimeIndex:
    """
    The structure of a message file of C{size} octets; C{cost}: its
    approximate memory in bytes; C{structures}: its encoded BODYSTRUCTURE
    (True) and BODY (False) once made (or the exception twisted's code raised).
    """

    root: Entity
    size: int
    cost: int
    structures: dict[bool, bytes | Exception] = field(default_factory=dict)


class Scanner:
    """Builds a L{MimeIndex} from a message's bytes fed in order (L{feed}), then L{finish}."""

    def __init__(self) -> None:
        self.root = Entity(0, 0)
        self.stack = [self.root]  # the entities open at the current line, outermost first
        self.count = 1
        self.budget = MAX_INDEX_HEADERS
        self.kept = 0  # header bytes kept, all entities
        self.pos = 0  # offset of the next byte fed
        self.nl = 0  # line breaks before the line being looked at
        self.tail = b""  # the last bytes fed (up to 3): what precedes a line that starts a block
        # A line begun in an earlier block: its start, first bytes, length, the bytes before it.
        self.partial: bytearray | None = None
        self.p_start = self.p_len = 0
        self.p_before = b""
        self.p_cr = False
        self._patterns: dict[tuple[tuple[bytes, ...], bool, bool, bool], re.Pattern[bytes]] = {}

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
            # A line a block starts with is looked at (no line break before it to search for);
            # so is every line of a header still kept whole.
            if i and (top.body_start >= 0 or top._full):
                pattern = self._pattern(top)
                if pattern is None:
                    # Nothing ends this entity before the end of the file: only its lines are counted.
                    self.nl += data.count(b"\n", i)
                    break
                found = pattern.search(data, i - 1)
                # No line to look at: up to the last line begun here (a delimiter may go on in
                # the next block). A line break precedes i, so k >= i.
                k = found.start() + 1 if found else data.rfind(b"\n", i - 1) + 1
                if k > i:
                    i = self._skip(top, data, i, k)
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

    def _pattern(self, top: Entity) -> re.Pattern[bytes] | None:
        boundaries = tuple(e._boundary for e in self.stack if e._boundary is not None)
        header = top.body_start < 0
        if not header and not boundaries:
            return None
        content = header and top._content < MAX_CONTENT_HEADER
        key = (boundaries, header, content, content and not top._stopped)
        pattern = self._patterns.get(key)
        if pattern is None:
            pattern = self._patterns[key] = candidates(*key)
        return pattern

    def _skip(self, top: Entity, data: bytes, i: int, k: int) -> int:
        """
        Lines C{[i, k)} that need no look of their own: counted; in a header
        past its bounds, those that go on a kept Content-* field are kept.
        Where to go on from.
        """
        if top.body_start < 0 and top._continuing:
            found = FIELD_START.search(data, i - 1, k)
            end = found.start() + 1 if found else k
            if end == i:
                top._continuing = False  # a new field (not a Content-* one: those are looked at)
                return i
            room = MAX_CONTENT_HEADER - top._content
            cut = end if end - i <= room else max(i, data.rfind(b"\n", i, i + room) + 1)
            if cut > i:
                self._store(top, data[i:cut], content=True)
            if cut < end:
                top._continuing = False  # the rest of that field is not kept
                top._content = MAX_CONTENT_HEADER
            k = end
        self.nl += data.count(b"\n", i, k)
        return k

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
                    close = delimiter(content, entity._boundary)
                    if close is not None:
                        self._delimited(k, start, start + length, close, before, nl_at)
                        return
        top = self.stack[-1]
        if top.body_start < 0:
            if term and length == term:
                self._end_header(top, start + length)
            else:
                self._keep(top, head, length)

    # -- headers ----------------------------------------------------------------------------------

    def _keep(self, entity: Entity, head: bytes, length: int) -> None:
        """
        A header line: kept whole while the entity's and the message's bounds
        allow; past them, only the lines of Content-* fields, up to
        MAX_CONTENT_HEADER. Where a line not kept would have stopped the email
        parser, a stand-in stops it (the Content-* fields after it are kept
        for HEADER.FIELDS, which reads every line).
        """
        if not head.startswith(CONTINUED):
            entity._continuing = is_content(head)
        if not entity._full:
            if length <= min(MAX_KEPT_HEADER - entity._kept, self.budget):
                self._store(entity, head, content=False)
                return
            entity._full = True
        if entity._continuing:
            if length <= MAX_CONTENT_HEADER - entity._content:
                self._store(entity, head, content=True)
                return
            entity._continuing = False  # the rest of that field is not kept, nor other Content-* fields
            entity._content = MAX_CONTENT_HEADER
        if not entity._stopped and not parsed_on(head):
            entity._stopped = True
            self._store(entity, STOP, content=True)

    def _store(self, entity: Entity, piece: bytes, content: bool) -> None:
        if entity._pieces is None:
            entity._pieces = []
        entity._pieces.append(piece)
        self.kept += len(piece)
        if content:
            entity._content += len(piece)
        else:
            entity._kept += len(piece)
            self.budget -= len(piece)

    # -- entities ---------------------------------------------------------------------------------

    def _end_header(self, entity: Entity, body_start: int) -> None:
        entity.body_start, entity._nl_body = body_start, self.nl
        self._classify(entity)
        if (entity.content_type == "message/rfc822" and entity.depth < MAX_MIME_DEPTH
                and self.count < MAX_ENTITIES):
            self._open_child(entity, body_start)

    def _classify(self, entity: Entity) -> None:
        entity.header, entity._pieces = b"".join(entity._pieces or ()), None
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
        if entity.body_start < 0:
            # Its header never ended within it: all header, no body. (The line break its last
            # line kept belongs to the delimiter; the fields read the same without it.)
            entity.body_start = end
            self._classify(entity)
            if (entity.content_type == "message/rfc822" and entity.depth < MAX_MIME_DEPTH
                    and self.count < MAX_ENTITIES):
                entity.children.append(Entity(end, entity.depth + 1, body_start=end, body_end=end))
                self.count += 1
        entity.body_start = min(entity.body_start, end)  # its empty line's break taken by a delimiter
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
        return MimeIndex(self.root, self.pos, self.kept + ENTITY_COST * self.count)


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


__all__ = ["ENTITY_COST", "LINE_HEAD", "MAX_CONTENT_HEADER", "MAX_ENTITIES", "MAX_INDEX_HEADERS", "MAX_KEPT_HEADER",
           "Entity", "MimeIndex", "Scanner", "index_bytes", "index_file"]
