"""
Fixtures for the MIME index tests: the in-memory reference (L{RawPart}: the
code FETCH ran when it held a whole message, split in memory), MIME
messages of every awkward shape, a hypothesis strategy for more, and a
large message whose delimiters sit on the edges of the 64 KiB blocks files
are read in.
"""

from __future__ import annotations

import hashlib
import re
from io import BytesIO
from typing import Any

from hypothesis import strategies as st
from twisted.mail import imap4
from twisted.mail.imap4 import IMessagePart
from zope.interface import implementer

from gomail.mailaccess.imapmessage import MAX_MIME_DEPTH, MAX_MIME_PARTS, MessageHeader
from gomail.mailaccess.imapstore import BLOCK
from gomail.mailaccess.imapstructure import mend_content_type
from tests.smtphelpers import TLSStringTransport

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _split_header(raw: bytes) -> tuple[bytes, bytes]:
    """(header with its blank line, body); a message without a blank line is all header."""
    if raw.startswith((b"\r\n", b"\n")):
        blank = 2 if raw.startswith(b"\r\n") else 1
        return raw[:blank], raw[blank:]
    match = _HEADER_END.search(raw)
    if match is None:
        return raw, b""
    return raw[:match.end()], raw[match.end():]


@implementer(IMessagePart)
class RawPart(MessageHeader):
    """
    The oracle: one MIME entity from all of its bytes, split into header
    and body (and a multipart body into its parts) in memory, as the server
    did before the MIME index (L{gomail.mailaccess.mimeindex}) replaced it.
    Its Content-Type is mended as the server's (twisted's parser raised on
    some), so the two agree on every message.
    """

    def __init__(self, raw: bytes, depth: int = 0) -> None:
        header, self.body = _split_header(raw)
        super().__init__(header)
        self.depth = depth
        self._parts: list[RawPart] | None = None

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        """L{MessageHeader.getHeaders}, the Content-Type mended as the server's."""
        headers = super().getHeaders(negate, *names)
        if "content-type" in headers:
            headers["content-type"] = mend_content_type(headers["content-type"])
        return headers

    def getBodyFile(self) -> BytesIO:
        """The body's bytes (as stored, still in their transfer encoding)."""
        return BytesIO(self.body)

    def getSize(self) -> int:
        """Octets of the body."""
        return len(self.body)

    def isMultipart(self) -> bool:
        """A multipart, above MAX_MIME_DEPTH levels (deeper ones are leaves)."""
        return self.depth < MAX_MIME_DEPTH and self.parsed.get_content_maintype() == "multipart"

    def getSubPart(self, part: int) -> RawPart:
        """Part C{part} (0-based) of a multipart, or the message inside a message/rfc822 (0). IndexError: none."""
        if self._parts is None:
            self._parts = self._split()
        return self._parts[part]

    def whole(self) -> bytes:
        """Header and body."""
        return self.header_bytes + self.body

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


def fetch_part(section: bytes) -> Any:
    """twisted's parsed C{BODY[section]}."""
    parser = imap4._FetchParser()
    parser.parseString(b"BODY[" + section + b"]")
    return parser.result[0]


def reference_section(top: RawPart, part: Any) -> bytes:
    """What FETCH sent for a section when the message was held whole (the code the index replaced)."""
    entity = top
    try:
        for step, p in enumerate(part.part):
            if p < 0:  # BODY[0]: no such part
                return b""
            if step and entity.parsed.get_content_type() == "message/rfc822":
                # RFC 3501 6.4.5: numbers after a message/rfc822 part are of the message it holds
                # (the in-memory code took them as of the part itself: BODY[1.1] was the whole attachment).
                inner = entity.getSubPart(0)
                if inner is not None:
                    entity = inner
            if entity.isMultipart():
                entity = entity.getSubPart(p)
            elif p != 0:
                return b""
        if part.mime:
            return entity.header_bytes
        if part.header or part.text:
            if part.part:
                if entity.parsed.get_content_type() != "message/rfc822":
                    return b""
                entity = entity.getSubPart(0)
            if part.header:
                return entity.header_section(part.header.negate, tuple(part.header.fields or ()))
            return entity.body
        return entity.body if part.part else entity.whole()
    except IndexError:
        return b""


def reference_structure(data: bytes) -> bytes:
    """BODYSTRUCTURE as twisted encoded it from a RawPart of the whole message."""
    return imap4.collapseNestedLists([imap4.getBodyStructure(RawPart(data), True)])


def section_names(levels: int = 2, width: int = 4) -> list[bytes]:
    """Every section a test asks for: part numbers up to C{width} wide and C{levels} deep, with each suffix."""
    names = [b"HEADER", b"TEXT", b"HEADER.FIELDS (Subject)", b"HEADER.FIELDS.NOT (Subject)"]
    numbers: list[bytes] = []
    layer = [b""]
    for _ in range(levels):
        layer = [(prefix + b"." if prefix else b"") + b"%d" % n for prefix in layer for n in range(1, width + 1)]
        numbers += layer
    for number in numbers:
        names += [number + suffix for suffix in (b"", b".MIME", b".HEADER", b".TEXT",
                                                  b".HEADER.FIELDS (Subject Content-Type)")]
    return names


def multipart(boundary: bytes, parts: list[bytes], nl: bytes = b"\r\n", close: bool = True,
              preamble: bytes = b"", epilogue: bytes = b"", subtype: bytes = b"mixed") -> bytes:
    """A multipart entity (header and body) of C{parts} (each an entity: header, blank line, body)."""
    head = b'Content-Type: multipart/' + subtype + b'; boundary="' + boundary + b'"' + nl + nl
    body = preamble + b"".join(b"--" + boundary + nl + p + nl for p in parts)
    return head + body + (b"--" + boundary + b"--" + nl + epilogue if close else b"")


TEXT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nline one\r\nline two\r\n"
INNER = b"Subject: inner\r\nFrom: x@y\r\n\r\ninner body\r\n"

#: Messages of every awkward shape the in-memory code handled: the index must agree on each.
CASES: dict[str, bytes] = {
    "plain": b"From: a@b\r\nSubject: one\r\n\r\nhello\r\n",
    "no body": b"Subject: only a header\r\n",
    "empty": b"",
    "blank first": b"\r\nbody without header\r\n",
    "nested": b"Subject: n\r\n" + multipart(b"outer", [TEXT, multipart(b"inner", [TEXT, TEXT], subtype=b"alternative"),
                                                        b"Content-Type: message/rfc822\r\n\r\n" + INNER]),
    "rfc822 holding a multipart": b"Subject: r\r\nContent-Type: message/rfc822\r\n\r\n" + b"Subject: in\r\n" +
                                  multipart(b"q", [TEXT, TEXT]),
    "no final boundary": b"Subject: m\r\n" + multipart(b"XX", [TEXT, TEXT + b"no end"], close=False),
    "preamble and epilogue": b"Subject: p\r\n" + multipart(b"XX", [TEXT], preamble=b"pre\r\n--XXnot\r\n",
                                                           epilogue=b"epi\r\n--XX\r\nafter\r\n"),
    "lf only": (b"Subject: n\r\n" + multipart(b"outer", [TEXT, multipart(b"inner", [TEXT, INNER])])).replace(
        b"\r\n", b"\n"),
    "boundary prefix of another": b"Subject: b\r\n" + multipart(b"X", [multipart(b"XX", [TEXT, TEXT]), TEXT]),
    "outer ends inner": b"Subject: o\r\n" + multipart(b"A", [multipart(b"B", [TEXT], close=False), TEXT]),
    "consecutive delimiters": b"Subject: c\r\nContent-Type: multipart/mixed; boundary=Z\r\n\r\n"
                              b"--Z\r\n--Z\r\n\r\nx\r\n--Z \t\r\n\r\n--Z--\r\n",
    "part without blank line": b"Subject: h\r\nContent-Type: multipart/mixed; boundary=Z\r\n\r\n--Z\r\n"
                               b"Content-Type: message/rfc822\r\n--Z\r\nContent-Type: text/plain\r\n\r\n--Z--",
    "no boundary parameter": b"Subject: nb\r\nContent-Type: multipart/mixed\r\n\r\n--\r\nbody\r\n",
    "mixed line ends": b"Subject: x\nContent-Type: multipart/mixed; boundary=M\r\n\n--M\r\n\r\n\n--M\n"
                       b"Content-Type: text/html\r\n\r\n<p>\r\r\n--M--\r\n",
}


@st.composite
def mime_entities(draw: Any, depth: int = 0) -> bytes:
    """A MIME entity: text, noise, multipart (any delimiters, missing ends) or message/rfc822, mixed line ends."""
    nl = draw(st.sampled_from([b"\r\n", b"\n"]))
    kind = draw(st.sampled_from(["text", "noise", "multipart", "rfc822"] if depth < 3 else ["text", "noise"]))
    boundary = draw(st.sampled_from([b"XX", b"X", b"b%d" % depth, b"=_a'b"]))
    header = [b"Subject: s"] if draw(st.booleans()) else []
    header += {"multipart": [b'Content-Type: multipart/mixed; boundary="' + boundary + b'"'],
               "rfc822": [b"Content-Type: message/rfc822"],
               "noise": [b"Content-Type: application/octet-stream", b"--" + boundary]}.get(kind, [])
    out = b"".join(h + nl for h in header) + (nl if draw(st.integers(0, 9)) else b"")
    if kind == "multipart":
        for _ in range(draw(st.integers(0, 3))):
            out += b"--" + boundary + draw(st.sampled_from([b"", b" \t", b"x", b"--"])) + nl
            out += draw(mime_entities(depth + 1)) + draw(st.sampled_from([nl, b"", nl + nl]))
        out += draw(st.sampled_from([b"--" + boundary + b"--" + nl, b"", b"--" + boundary + b"--  " + nl + b"epi"]))
    elif kind == "rfc822":
        out += draw(mime_entities(depth + 1))
    else:
        lines = draw(st.lists(st.sampled_from([b"hello", b"", b"--", b"--XX", b"--X--", b"  ", b"x" * 80]),
                              max_size=5))
        out += b"".join(line + draw(st.sampled_from([nl, b"\r", b"\n"])) for line in lines)
    return out


def large_message(body_size: int, on_edge: int = 3) -> bytes:
    """
    A multipart message with a text part, a base64 part of about
    C{body_size} octets and a message/rfc822 part, whose delimiters start
    C{on_edge} octets before a 64 KiB block edge (the delimiter split across two reads).
    """
    head = b"From: a@b\r\nSubject: large\r\nContent-Type: multipart/mixed; boundary=\"=_edge\"\r\n\r\n"
    first = b"--=_edge\r\n" + TEXT
    line = b"QUJD" * 19 + b"\r\n"
    big_head = b"\r\n--=_edge\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    start = len(head) + len(first) + len(big_head)
    lines = body_size // len(line)
    end = start + lines * len(line)
    pad = (-(end + on_edge) % BLOCK) if on_edge >= 0 else 0
    big = line * lines + b"x" * pad
    tail = b"\r\n--=_edge\r\nContent-Type: message/rfc822\r\n\r\n" + INNER + b"\r\n--=_edge--\r\n"
    return head + first + big_head + big + tail


class DigestTransport(TLSStringTransport):
    """
    A transport that, once C{digesting}, keeps a digest of what is written,
    its size and its first and last bytes, not the bytes themselves (a 20 MB
    answer would otherwise be what the memory test measures).
    """

    digesting = False

    def start_digest(self) -> None:
        """From now on keep a digest of what is written, not the bytes."""
        self.digesting = True
        self.digest = hashlib.sha256()
        self.count = 0
        self.head = self.tail = b""

    def write(self, data: bytes) -> None:
        """Kept, or digested once C{digesting}."""
        if not self.digesting:
            return super().write(data)
        self.digest.update(data)
        self.count += len(data)
        if len(self.head) < 256:
            self.head = (self.head + data)[:256]
        self.tail = (self.tail + data)[-256:]

    def writeSequence(self, data: list[bytes]) -> None:
        """As L{write} of each piece."""
        for piece in data:
            self.write(piece)


__all__ = ["CASES", "DigestTransport", "RawPart", "fetch_part", "large_message", "mime_entities", "multipart", "reference_section",
           "reference_structure", "section_names"]
