# -*- test-case-name: tests.test_relay_client -*-
"""Dot-stuffing outgoing DATA so that nothing stored can end it early."""

from __future__ import annotations

import re

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


class DotStuffer:
    """
    Turns stored content into DATA bytes, whatever the chunk boundaries.

    By default: CRLF line endings only (bare CR and LF become CRLF), a dot
    doubled at the start of every line. For content recorded as transparent
    (C{transparent=True}: CRLF only and no dot at a line start, checked at
    intake) the bytes go out as they are, which is the same wire for such
    content; should a dot after a CRLF show up anyway (the file changed after
    its check), the default treatment takes over from there.
    """

    def __init__(self, transparent: bool = False) -> None:
        self._carry = b""
        self._line_start = True
        #: The content is known to need no change (L{gomail.delivery.content.ContentSource.transparent}):
        #: its chunks go out as they are, only the end of data is added.
        self.transparent = transparent
        self._last = b""

    #: An incomplete line longer than this is sent on rather than held.
    MAX_CARRY = 64 * 1024

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send for C{chunk}; by default an incomplete last line is held back."""
        if self.transparent:
            # One search instead of three counts and a replace (bench/README.md, "transparent
            # content"). It guards against a file changed since its check: a dot after a CRLF
            # turns the stuffing back on, so such bytes cannot end the DATA for a server that
            # ends it only at CRLF.CRLF (and the digest check fails the send before the final
            # dot). A dot after a bare CR or LF is not searched for (a two-byte search costs
            # more than the stuffing): only a lenient server reading a tampered file would see it.
            if b"\r\n." in chunk or b"\r\n." in self._last + chunk[:2] or (not self._last and chunk[:1] == b"."):
                self.transparent, self._line_start, head = False, self._last in (b"", b"\r\n"), b""
                if self._last.endswith(b"\r") and chunk.startswith(b"\n"):
                    head, chunk = b"\n", chunk[1:]  # the rest of a CRLF already half sent
                    self._line_start = True
                return head + self.feed(chunk)
            if chunk:
                self._last = (self._last + chunk[-2:])[-2:]
            return chunk
        data = self._carry + chunk
        cut = data.rfind(b"\n") + 1
        if len(data) - cut > self.MAX_CARRY:
            # No line end for a long while: send, keeping a final CR (half a CRLF?).
            cut = len(data) - 1 if data.endswith(b"\r") else len(data)
        self._carry, data = data[cut:], data[:cut]
        return self._stuff(data)

    def finish(self) -> bytes:
        """The held-back rest, the final CRLF if missing, and the end-of-data line."""
        if self.transparent:
            return (b"" if self._last in (b"", b"\r\n") else b"\r\n") + b".\r\n"
        rest = self._stuff(self._carry)
        self._carry = b""
        if rest and not rest.endswith(b"\r\n"):
            rest += b"\r\n"
        elif not rest and not self._line_start:
            rest = b"\r\n"
        return rest + b".\r\n"

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
            # Stored content has CRLF endings only (the DATA reader saw to it): counting
            # them costs a third of rewriting every ending, which is then rarely needed.
            data = _LINE_ENDING.sub(b"\r\n", data)
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
        # replace() cannot see a dot that starts the next chunk's first line.
        self._line_start = data.endswith(b"\r\n")
        return data
