# -*- test-case-name: tests.test_imap,tests.test_imap_sections -*-
"""
Messages as twisted.mail's IMAP server reads them (C{IMessage}).

twisted's FETCH and SEARCH code calls these methods synchronously, so
what a request needs is read before (in the I/O pool,
L{gomail.mailaccess.imapsections}), one message at a time, and dropped once
it has been sent: only the header (a L{MessageHeader}: ENVELOPE,
HEADER.FIELDS, the header keys of SEARCH), and for sections and
BODYSTRUCTURE the message's MIME index (L{gomail.mailaccess.mimeindex},
which splits the file into its entities without holding it; twisted reads
it through L{gomail.mailaccess.imapstructure}). No message is held split in
memory: bodies are sent from the file, or cut from the bytes of a small one.
"""

from __future__ import annotations

import email.utils
import re
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Any

from twisted.mail.imap4 import IMessage
from zope.interface import implementer

from gomail.mailaccess.imapstore import Entry

if TYPE_CHECKING:
    from gomail.mailaccess.imapreadahead import ReadAhead
    from gomail.mailaccess.mimeindex import MimeIndex

#: MIME nesting followed (deeper entities are leaves), and parts of one multipart listed.
MAX_MIME_DEPTH = 12
MAX_MIME_PARTS = 500


class HeaderEnd:
    """
    Where a message's header ends (after its first empty line, C{\\n} or
    C{\\r\\n}; a message that starts with one has an empty header), found in
    its bytes fed in order, whatever the blocks they come in.
    """

    def __init__(self) -> None:
        self.end: int | None = None
        self._pos = 0
        # The last two bytes fed; before the first, a line break (the message starts a line).
        self._last = b"\n"

    def feed(self, data: bytes) -> int | None:
        """The next bytes: the offset just after the header's empty line once it was fed, else None."""
        if self.end is None and data:
            window = self._last + data
            found = [at + len(sep) for sep in (b"\n\n", b"\n\r\n") if (at := window.find(sep)) >= 0]
            if found:
                self.end = self._pos - len(self._last) + min(found)
            self._last = window[-2:]
            self._pos += len(data)
        return self.end


def split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header with its blank line, body); a message without a blank line is all header."""
    end = HeaderEnd().feed(raw)
    return (raw, b"") if end is None else (raw[:end], raw[end:])


def _ascii(value: str) -> str:
    # twisted encodes what it sends as ASCII; 8-bit header bytes (not RFC 2047 encoded) become "?".
    return value.encode("ascii", "replace").decode("ascii")


def _names(names: tuple[Any, ...]) -> set[str]:
    return {(n.decode("ascii", "replace") if isinstance(n, bytes) else str(n)).lower() for n in names}


class MessageHeader:
    """
    A MIME entity's header from its bytes (up to and with its blank line,
    or a bounded copy of its fields), as twisted reads header fields
    (C{getHeaders}), and as C{HEADER.FIELDS} sends them (L{header_section}).
    """

    def __init__(self, header: bytes) -> None:
        self.header_bytes = header
        self.parsed: Message = BytesHeaderParser(policy=compat32).parsebytes(header)

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        """The header fields named (or all but them with C{negate}; all when none are named), lower-case keys."""
        wanted = _names(names)
        result: dict[str, str] = {}
        for name, value in self.parsed.items():
            key = name.lower()
            if not names or ((key in wanted) != negate):
                result.setdefault(key, _ascii(str(value)))
        if "content-type" not in result and (not names or ("content-type" in wanted) != negate):
            result["content-type"] = "text/plain; charset=us-ascii"  # RFC 2045 5.2's default
        return result

    def is_multipart(self) -> bool:
        """Whether its Content-Type is a multipart (its parts are in the MIME index)."""
        return self.parsed.get_content_maintype() == "multipart"

    def header_section(self, negate: bool = False, names: tuple[Any, ...] = ()) -> bytes:
        """The header (all of it, or the named fields, or all but them) as stored, ending with the blank line."""
        if not names:
            return self.header_bytes
        wanted = _names(names)
        lines = re.split(rb"\r?\n(?![ \t])", self.header_bytes.rstrip(b"\r\n"))
        kept = [line for line in lines
                if line and ((line.split(b":", 1)[0].strip().decode("ascii", "replace").lower() in wanted) != negate)]
        return b"".join(line + b"\r\n" for line in kept) + b"\r\n"


@implementer(IMessage)
class IMAPMessage:
    """
    One message of a selected folder as twisted's server sees it: the
    entry's UID, flags (and C{\\Recent} for this session), time and size,
    and once L{load}ed its header (C{content}), its MIME C{index} and, for a
    small message, its bytes (C{data}). C{words}: the BODY/TEXT words of a
    SEARCH found in it. C{folder}: the folder it was listed in (the
    session's C{mbox} is None once the client is gone; a FETCH under way
    keeps using this); C{read_ahead}: the reading ahead of the FETCH that
    asked for it, if any.
    """

    def __init__(self, entry: Entry, recent: bool, folder: Any = None, read_ahead: ReadAhead | None = None) -> None:
        self.entry = entry
        self.recent = recent
        self.folder = folder
        self.read_ahead = read_ahead
        self.content: MessageHeader | None = None
        self.index: MimeIndex | None = None
        self.data: bytes | None = None
        self.words: set[tuple[bytes, bytes]] = set()

    def load(self, content: MessageHeader | None, index: MimeIndex | None = None, data: bytes | None = None) -> None:
        """What was read of the message (None: all dropped again)."""
        self.content, self.index, self.data = content, index, data
        if content is None:
            self.words = set()

    def _header(self) -> MessageHeader:
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
        return self._header().getHeaders(negate, *names)

    def isMultipart(self) -> bool:
        return self._header().is_multipart()

    # IMessagePart asks for these; twisted's server calls them only from the FETCH and SEARCH code
    # gomail replaces (imapfetch, imapsearch: bodies come from the file), so they are never called.

    def getBodyFile(self) -> Any:
        """Not kept: bodies are sent from the message's file (L{gomail.mailaccess.imapfetch})."""
        raise NotImplementedError("message bodies are sent from their files")

    def getSubPart(self, part: int) -> Any:
        """Not kept: parts are in the MIME index (L{gomail.mailaccess.imapstructure})."""
        raise NotImplementedError("message parts are read from the MIME index")


__all__ = ["MAX_MIME_DEPTH", "MAX_MIME_PARTS", "HeaderEnd", "IMAPMessage", "MessageHeader", "split_header"]
