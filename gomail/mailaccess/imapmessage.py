# -*- test-case-name: tests.test_imap -*-
"""
Messages as twisted.mail's IMAP server reads them (C{IMessage},
C{IMessagePart}): L{RawPart} splits a MIME entity's bytes into header and
body (and a multipart body into its parts) without re-encoding anything,
so the bytes FETCH sends for a section are exactly the bytes stored, and
the sizes and line counts of BODYSTRUCTURE agree with them.

twisted's FETCH and SEARCH code calls these methods synchronously, so
what a request needs is read before (in the I/O pool,
L{gomail.mailaccess.imapsections}), one message at a time, and dropped once
it has been sent: only the header (a RawPart of it: ENVELOPE, HEADER.FIELDS),
and for sections and BODYSTRUCTURE the message's MIME index
(L{gomail.mailaccess.mimeindex}, which splits the file the same way without
holding it). A RawPart of a whole message is no longer made by the server.
"""

from __future__ import annotations

import email.utils
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.mail.imap4 import IMessage, IMessagePart
from zope.interface import implementer

from gomail.mailaccess.imapstore import Entry

if TYPE_CHECKING:
    from gomail.mailaccess.mimeindex import MimeIndex

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header with its blank line, body); a message without a blank line is all header."""
    if raw.startswith((b"\r\n", b"\n")):
        blank = 2 if raw.startswith(b"\r\n") else 1
        return raw[:blank], raw[blank:]
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[:match.end()], raw[match.end():]


#: MIME nesting followed (deeper entities are leaves), and parts of one multipart listed.
MAX_MIME_DEPTH = 12
MAX_MIME_PARTS = 500


def _ascii(value: str) -> str:
    # twisted encodes what it sends as ASCII; 8-bit header bytes (not RFC 2047 encoded) become "?".
    return value.encode("ascii", "replace").decode("ascii")


@implementer(IMessagePart)
class RawPart:
    """
    One MIME entity from its bytes. C{header_only}: only the header was
    read (the body is unknown: asking for it is a programming error).
    """

    def __init__(self, raw: bytes, header_only: bool = False, depth: int = 0) -> None:
        self.header_bytes, self.body = split_header(raw)
        self.header_only = header_only
        self.depth = depth
        self.parsed: Message = BytesHeaderParser(policy=compat32).parsebytes(self.header_bytes)
        self._parts: list[RawPart] | None = None

    # -- IMessagePart ---------------------------------------------------------------------------

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        """The header fields named (or all but them with C{negate}; all when none are named), lower-case keys."""
        wanted = {(n.decode("ascii", "replace") if isinstance(n, bytes) else str(n)).lower() for n in names}
        result: dict[str, str] = {}
        for name, value in self.parsed.items():
            key = name.lower()
            if not names or ((key in wanted) != negate):
                result.setdefault(key, _ascii(str(value)))
        if "content-type" not in result and (not names or ("content-type" in wanted) != negate):
            result["content-type"] = "text/plain; charset=us-ascii"  # RFC 2045 5.2's default
        return result

    def getBodyFile(self) -> BytesIO:
        """The body's bytes (as stored, still in their transfer encoding)."""
        self._need_body()
        return BytesIO(self.body)

    def getSize(self) -> int:
        """Octets of the body (BODYSTRUCTURE's body size, RFC 3501 7.4.2)."""
        self._need_body()
        return len(self.body)

    def isMultipart(self) -> bool:
        """
        Whether it is a multipart (whose parts L{getSubPart} gives). Past
        L{MAX_MIME_DEPTH} levels an entity is a leaf: each level holds its own
        copy of its body, and twisted's BODYSTRUCTURE recurses on the reactor
        (a message of 1,200 nested levels raised RecursionError; 40 levels of 2 MB took 88 MB).
        """
        return self.depth < MAX_MIME_DEPTH and self.parsed.get_content_maintype() == "multipart"

    def getSubPart(self, part: int) -> RawPart:
        """Part C{part} (0-based) of a multipart, or the message inside a message/rfc822 (0). IndexError: none."""
        self._need_body()
        if self._parts is None:
            self._parts = self._split()
        return self._parts[part]

    # -- raw sections (what FETCH BODY[...] sends) ----------------------------------------------

    def header_section(self, negate: bool = False, names: tuple[Any, ...] = ()) -> bytes:
        """The header (all of it, or the named fields, or all but them) as stored, ending with the blank line."""
        if not names:
            return self.header_bytes
        wanted = {(n.decode("ascii", "replace") if isinstance(n, bytes) else str(n)).lower() for n in names}
        lines = re.split(rb"\r?\n(?![ \t])", self.header_bytes.rstrip(b"\r\n"))
        kept = [line for line in lines
                if line and ((line.split(b":", 1)[0].strip().decode("ascii", "replace").lower() in wanted) != negate)]
        return b"".join(line + b"\r\n" for line in kept) + b"\r\n"

    def whole(self) -> bytes:
        """Header and body."""
        self._need_body()
        return self.header_bytes + self.body

    def _need_body(self) -> None:
        if self.header_only:
            raise RuntimeError("only the header of this message was read")

    def _split(self) -> list[RawPart]:
        if self.parsed.get_content_type() == "message/rfc822":
            return [RawPart(self.body, depth=self.depth + 1)] if self.depth < MAX_MIME_DEPTH else []
        if not self.isMultipart():
            return []
        boundary = self.parsed.get_boundary()
        if not boundary:
            return []
        delimiter = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode("ascii", "replace")) +
                               rb"(--)?[ \t]*(?:\r?\n|$)")
        parts: list[RawPart] = []
        start: int | None = None
        for match in delimiter.finditer(self.body):
            if len(parts) >= MAX_MIME_PARTS:
                start = None
                break
            if start is not None:
                parts.append(RawPart(self.body[start:match.start()], depth=self.depth + 1))
            if match.group(1):
                start = None
                break
            start = match.end()
        if start is not None:  # no closing delimiter: the rest is the last part
            parts.append(RawPart(self.body[start:], depth=self.depth + 1))
        return parts


@implementer(IMessage)
class IMAPMessage:
    """
    One message of a selected folder as twisted's server sees it: the
    entry's UID, flags (and C{\\Recent} for this session), time and size,
    and once L{load}ed its header (C{content}, a header-only L{RawPart}),
    its MIME C{index} and, for a small message, its bytes (C{data}).
    C{words}: the BODY/TEXT words of a SEARCH found in it.
    """

    def __init__(self, entry: Entry, recent: bool) -> None:
        self.entry = entry
        self.recent = recent
        self.content: RawPart | None = None
        self.index: MimeIndex | None = None
        self.data: bytes | None = None
        self.words: set[tuple[bytes, bytes]] = set()

    def load(self, content: RawPart | None, index: MimeIndex | None = None, data: bytes | None = None) -> None:
        """What was read of the message (None: all dropped again)."""
        self.content, self.index, self.data = content, index, data
        if content is None:
            self.words = set()

    def _part(self) -> RawPart:
        if self.content is None:
            raise RuntimeError(f"message {self.entry.uid} was not read")
        return self.content

    def getUID(self) -> int:
        return self.entry.uid

    def getFlags(self) -> list[str]:
        return sorted(self.entry.flags) + (["\\Recent"] if self.recent else [])

    def getInternalDate(self) -> str:
        """When the message arrived (its file's time), as an RFC 2822 date."""
        return email.utils.formatdate(self.entry.mtime, usegmt=False)

    def getSize(self) -> int:
        return self.entry.size

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        return self._part().getHeaders(negate, *names)

    def getBodyFile(self) -> BytesIO:
        return self._part().getBodyFile()

    def isMultipart(self) -> bool:
        return self._part().isMultipart()

    def getSubPart(self, part: int) -> RawPart:
        return self._part().getSubPart(part)


__all__ = ["IMAPMessage", "RawPart", "split_header"]
