# -*- test-case-name: tests.test_plugins_smtp -*-
"""Removing header fields from a message as it streams in (for L{gomail.interfaces.IHeaderFilter} plugins)."""

from __future__ import annotations

from collections.abc import Callable


class HeaderStripper:
    """
    Feeds a message's content through, leaving out the header fields
    C{drops(name)} names (and their folded continuation lines), up to the end
    of the header section; the body passes untouched. Holds back at most one
    unfinished line (lines are bounded by the DATA reader).
    """

    def __init__(self, drops: Callable[[str], bool]) -> None:
        self._drops = drops
        self._pending = b""
        self._done = False
        self._dropping = False

    def no_header_section(self) -> None:
        """The message has no header section: everything is body."""
        self._done = True

    def feed(self, block: bytes) -> bytes:
        """What of C{block} (with what was held back) goes into the message."""
        if self._done:
            return block
        data, self._pending = self._pending + block, b""
        kept = []
        position = 0
        while True:
            end = data.find(b"\n", position)
            if end < 0:
                self._pending = data[position:]
                break
            line = data[position:end + 1]
            if line in (b"\r\n", b"\n") or (line[:1] not in (b" ", b"\t") and b":" not in line):
                # The blank line (or a line that is no header field): the body starts here.
                self._done = True
                kept.append(data[position:])
                break
            if line[:1] not in (b" ", b"\t"):
                name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
                self._dropping = self._drops(name)
            if not self._dropping:
                kept.append(line)
            position = end + 1
        return b"".join(kept)

    def finish(self) -> bytes:
        """The end of the message: what was held back (a last line without its line end)."""
        pending, self._pending = self._pending, b""
        self._done = True
        return b"" if self._dropping and pending[:1] in (b" ", b"\t") else pending
