# -*- test-case-name: tests.test_imap_structure,tests.test_imap_sections -*-
"""
BODY and BODYSTRUCTURE from a message's MIME index
(L{gomail.mailaccess.mimeindex}): L{EntityPart} is an index entity as
twisted's C{getBodyStructure} reads it. Header fields twisted's parser
cannot take (a Content-Type parameter without C{=} or without a value made
it raise, and the session was dropped on every FETCH BODYSTRUCTURE) are
mended first; should twisted's code fail all the same, L{body_structure}
answers a plain text structure instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from twisted.mail import imap4
from twisted.mail.imap4 import IMessagePart
from zope.interface import implementer

from gomail.mailaccess.imapmessage import MessageHeader
from gomail.mailaccess.mimeindex import Entity


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


def mend_content_type(value: str) -> str:
    """
    A Content-Type value as twisted's C{_getContentType} can split it: the
    parameters that are no C{name=value} (no C{=}, no name, no value) are
    left out; the rest is kept as it is.
    """
    unfolded = "".join(value.splitlines())
    media, *parameters = unfolded.split(";")
    kept = []
    for parameter in parameters:
        name, equals, rest = parameter.strip().partition("=")
        if name and equals and rest:
            kept.append(parameter)
    return ";".join([media, *kept])


@implementer(IMessagePart)
class EntityPart:
    """An L{Entity} as twisted's C{getBodyStructure} reads it (the answers the in-memory split gave)."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity
        self._header: MessageHeader | None = None

    def getHeaders(self, negate: bool, *names: Any) -> dict[str, str]:
        """The entity's header fields (L{MessageHeader.getHeaders}), its Content-Type mended."""
        if self._header is None:
            self._header = MessageHeader(self.entity.header)
        headers = self._header.getHeaders(negate, *names)
        if "content-type" in headers:
            headers["content-type"] = mend_content_type(headers["content-type"])
        return headers

    def getBodyFile(self) -> LineCount:
        """Its lines, to be counted (no bytes)."""
        return LineCount(self.entity.lines)

    def getSize(self) -> int:
        """Octets of its body."""
        return self.entity.body_size

    def isMultipart(self) -> bool:
        """Whether its parts are followed (L{Entity.is_multipart})."""
        return self.entity.is_multipart()

    def getSubPart(self, part: int) -> EntityPart:
        """Part C{part} (0-based); IndexError: none."""
        children = self.entity.children
        if not children and part == 0 and self.entity.content_type == "message/rfc822":
            # Past the bounds a message/rfc822 holds no recorded message: an empty one stands
            # in (twisted's BODYSTRUCTURE would fail on IndexError; the in-memory code's did at depth 12).
            end = self.entity.body_end
            return EntityPart(Entity(end, self.entity.depth + 1, body_start=end, body_end=end))
        return EntityPart(children[part])


def body_structure(root: Entity, extended: bool) -> bytes:
    """
    BODYSTRUCTURE (C{extended}) or BODY of the message whose index C{root}
    is, encoded. @raise Exception: twisted's code failed (see L{plain_structure}).
    """
    return imap4.collapseNestedLists([imap4.getBodyStructure(EntityPart(root), extended)])


def plain_structure(root: Entity) -> bytes:
    """The structure of a message read as one text part: what is answered when L{body_structure} fails."""
    return imap4.collapseNestedLists([["text", "plain", None, None, None, "7bit", root.body_size, root.lines]])


def encode_structures(root: Any, wanted: list[bool]) -> dict[bool, bytes | Exception]:
    """
    (for the I/O pool) BODYSTRUCTURE (True) and BODY (False) of an indexed
    message, each the exception where twisted's code fails on it. Made off the
    reactor: twisted counts a body's lines one by one at every level of
    nesting (12 message/rfc822 levels around 12 million lines held the
    event loop for 3 s).
    """
    made: dict[bool, bytes | Exception] = {}
    for extended in wanted:
        try:
            made[extended] = body_structure(root, extended)
        except Exception as e:  # noqa: BLE001 - answered as a plain structure by the session, which logs it
            made[extended] = e
    return made


__all__ = ["EntityPart", "LineCount", "body_structure", "encode_structures", "mend_content_type", "plain_structure"]
