# -*- test-case-name: tests.test_pop3 -*-
"""
A message's bytes as POP3 sends them, block by block (RFC 1939 3): lines end
in CRLF, a line starting with C{.} gets another C{.} in front, and a line
C{.} ends the response. TOP sends only the header and the first lines of the
body (L{TopFilter}).

Both work on blocks as they are read from disk, so that no message is held
whole, and give the same bytes however the message is cut into blocks: a
CRLF or a line's leading dot may fall on a block boundary. (twisted.mail's
POP3 transforms each block alone, so a dot or a CRLF split across two
blocks goes wrong there, and it turns an existing CRLF into CR CR LF.)
"""

from __future__ import annotations

import re

_BARE_LF = re.compile(rb"(?<!\r)\n")


class DotStuffer:
    """
    Turns a message's blocks into a multi-line response's body: bare LF
    becomes CRLF (gomail stores CRLF; another program's Maildir files may
    hold LF), leading dots are doubled, and L{end} gives the terminator.
    """

    def __init__(self) -> None:
        self.at_line_start = True
        self._after_cr = False  # the previous block ended with a CR, whose LF may start this one

    def encode(self, block: bytes) -> bytes:
        """The next block, encoded."""
        if not block:
            return b""
        out = _BARE_LF.sub(b"\r\n", block)
        if self._after_cr and block[:1] == b"\n":
            out = out[1:]  # that LF completes the previous block's CR: no CR added
        # Every LF in out now ends a line, so a dot after one starts a line.
        out = out.replace(b"\n.", b"\n..")
        if self.at_line_start and out[:1] == b".":
            out = b"." + out
        self._after_cr = block.endswith(b"\r")
        self.at_line_start = out.endswith(b"\n")
        return out

    def end(self) -> bytes:
        """The end of the response: a CRLF first if the message did not end with one, then C{.} CRLF."""
        return b".\r\n" if self.at_line_start else b"\r\n.\r\n"


class TopFilter:
    """
    What TOP sends of a message (RFC 1939 7): the header, the empty line
    after it, and at most C{lines} lines of the body. Feed it the raw blocks
    in order; L{feed} returns what to send of each, and whether that was the
    last of it.
    """

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.in_header = True
        self.body_lines = 0
        self.done = False
        self._start = b""  # the first two bytes of the current line (enough to see an empty one)
        self._length = 0  # the current line's length so far

    def feed(self, block: bytes) -> tuple[bytes, bool]:
        """C{(part of block to send, done)}."""
        if self.done:
            return b"", True
        position = 0
        counted = False
        while True:
            if not self.in_header and not counted:
                counted = True  # once per block: the line-by-line loop below then ends within it
                ends = block.count(b"\n", position)
                if self.lines - self.body_lines <= ends:
                    continue
                # Every line ending in the rest of this block is still wanted: no need to look at each.
                self.body_lines += ends
                if ends:
                    position = block.rindex(b"\n") + 1
                    self._start, self._length = b"", 0
                self._partial(block[position:])
                return block, False
            end = block.find(b"\n", position)
            if end < 0:
                self._partial(block[position:])
                return block, False
            line = block[position:end]
            empty = self._length + len(line) <= 1 and (self._start + line) in (b"", b"\r")
            self._start, self._length = b"", 0
            position = end + 1
            if self.in_header:
                if empty:
                    self.in_header = False
                    if self.lines == 0:
                        self.done = True
            else:
                self.body_lines += 1
                if self.body_lines >= self.lines:
                    self.done = True
            if self.done:
                return block[:position], True

    def _partial(self, rest: bytes) -> None:
        if rest:
            self._start = (self._start + rest[:2])[:2]
            self._length += len(rest)


__all__ = ["DotStuffer", "TopFilter"]
