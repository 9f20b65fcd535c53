# -*- test-case-name: tests.test_smtp_reader -*-
"""
The DATA stream parser: finds the end of the message, removes dot-stuffing and
enforces size, line-length and line-ending rules, chunk by chunk.

Only ``<CRLF>.<CRLF>`` ends a message (RFC 5321 4.1.1.4). Bare ``<LF>`` and
``<CR>`` never end anything; a message containing them is rejected or has them
normalised to CRLF, by configuration (SMTP smuggling, CVE-2023-51764 family).
A line longer than the limit makes the message fail but never leaves DATA
mode: its rest is read and dropped up to the real end of data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_BARE_ENDING = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class DataError:
    """Why a message failed; the reply is sent after the end of data."""

    code: int
    status: str
    text: str


TOO_BIG = DataError(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = DataError(552, "5.6.0", "Message line too long")
BARE_LINE_ENDING = DataError(550, "5.5.2", "Bare CR or LF in message is not allowed; use CRLF line endings")


class DataReader:
    """
    Consume the bytes that follow a 354 reply.

    @param sink: called with each run of message content (whole lines,
        dot-unstuffed, CRLF endings), in order; not called again once the
        message has failed.
    @param max_size: the most content octets accepted.
    @param max_line: the longest line accepted, without its CRLF.
    @param normalize: turn bare CR/LF into CRLF instead of failing the message.
    """

    def __init__(self, sink: Callable[[bytes], None], max_size: int, max_line: int,
                 normalize: bool = False) -> None:
        self._sink = sink
        self._max_size = max_size
        self._max_line = max_line
        self._normalize = normalize
        self._tail = b""
        # True while dropping the rest of an over-long line: its next bytes are
        # not at the start of a line, so they can neither end nor un-stuff anything.
        self._in_long_line = False
        self.size = 0
        #: Whether a line of the content may start with a dot (then it is not
        #: "transparent": sending it again needs dot-stuffing, RFC 5321 4.5.2).
        self.dot_lines = False
        self.error: DataError | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes | None:
        """
        Consume C{data}. Returns None while the message goes on, or, once the
        end-of-data line is seen, the bytes after it (pipelined commands).
        """
        buf = self._tail + data if self._tail else data
        self._tail = b""
        if self._in_long_line:
            newline = buf.find(b"\r\n")
            if newline < 0:
                self._drop_long_line(buf)
                return None
            self._count(newline + 2)
            buf = buf[newline + 2:]
            self._in_long_line = False
        # One search finds the end-of-data line and any dot-stuffed line; most chunks have neither.
        first_dot = buf.find(b"\r\n.")
        end = _end_of_data(buf, first_dot)
        stuffed = first_dot >= 0 or buf[:1] == b"."
        if end >= 0:
            self._lines(buf[:end], stuffed)
            self.done = True
            return buf[end + 3:]
        cut = buf.rfind(b"\r\n") + 2
        if cut >= 2:
            self._lines(buf[:cut], stuffed)
        tail = buf[cut:] if cut >= 2 else buf
        if len(tail) > self._max_line + 1:
            # +1: the CR of a CRLF may be waiting in the tail.
            self._fail(LINE_TOO_LONG)
            self._drop_long_line(tail)
            self._in_long_line = True
        else:
            self._tail = tail
        return None

    def _drop_long_line(self, part: bytes) -> None:
        """Drop part of an over-long line, keeping a final CR: it may start the CRLF (and <CRLF>.<CRLF>)."""
        if part.endswith(b"\r"):
            self._count(len(part) - 1)
            self._tail = b"\r"
        else:
            self._count(len(part))

    def _count(self, octets: int) -> None:
        self.size += octets
        if self.size > self._max_size:
            self._fail(TOO_BIG)

    def _fail(self, error: DataError) -> None:
        if self.error is None:
            self.error = error

    def _lines(self, block: bytes, stuffed: bool = True) -> None:
        """
        Handle complete CRLF-terminated lines that start at a line start
        (C{stuffed}: some may start with a dot; False when the caller knows none does).
        """
        if not block:
            return
        self._count(len(block))
        if self.error is not None:
            return
        if len(block) > self._max_line + 2 and _has_long_line(block, self._max_line):
            self._fail(LINE_TOO_LONG)
            return
        if stuffed and (block[:1] == b"." or b"\r\n." in block):
            block = (b"\r\n" + block).replace(b"\r\n.", b"\r\n")[2:]
            self.dot_lines = True
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            if not self._normalize:
                self._fail(BARE_LINE_ENDING)
                return
            block = _BARE_ENDING.sub(b"\r\n", block)
            # A line end made here may put a dot at the start of a line.
            self.dot_lines = True
        self._sink(block)


def _end_of_data(buf: bytes, at: int) -> int:
    """
    Where the end-of-data line starts in C{buf} (a chunk that begins at a
    line start), or -1; C{at} is where C{<CRLF>.} is first found in it (-1: nowhere).
    """
    if buf.startswith(b".\r\n"):
        return 0
    while at >= 0:
        if buf.startswith(b"\r\n", at + 3):
            return at + 2
        at = buf.find(b"\r\n.", at + 3)
    return -1


def _has_long_line(block: bytes, max_line: int) -> bool:
    """
    Whether a line of C{block} (complete CRLF-terminated lines) is longer
    than C{max_line} octets. Jumps from line start to the last line end
    within reach instead of splitting the block into lines: a few dozen
    C{rfind}s for 64 KiB of ordinary mail, and no list of a thousand lines.
    """
    start, size = 0, len(block)
    while size - start > max_line + 2:
        last = block.rfind(b"\r\n", start, start + max_line + 2)
        if last < 0:
            return True
        start = last + 2
    return False
