# -*- test-case-name: tests.test_imap_sections,tests.test_imap_structure -*-
"""
How the MIME index (L{gomail.mailaccess.mimeindex}) reads lines: which
lines of a block Python must look at (found by a regular expression, in C:
L{candidates}), what a delimiter is (L{delimiter}), and how the email
package's parser, and FETCH's C{HEADER.FIELDS}, read a header line
(L{parsed_on}, L{is_content}).
"""

from __future__ import annotations

import re

# A header line that is not the first line of a field.
CONTINUED = (b" ", b"\t")
# In a header kept past its bounds: the next line that starts a field (ends a kept field's lines).
FIELD_START = re.compile(rb"\n[^ \t]")
# What the email package's parser reads as a header line (its headerRE); it stops reading a
# header at any other line, and it also breaks lines at a carriage return alone.
_FIELD_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_NO_FIELD = rb"(?![\t ]|From |[\x21-\x39\x3b-\x7e]*:)|[^\r\n]*\r(?!\n)"
# Kept for a line not kept where the parser stops: it stops at this one (no field, no blank).
STOP = b"\x7f\n"
# What HEADER.FIELDS strips before a field's name, besides the blanks that make a line a continuation.
_NAME_STRIP = b"\r\x0b\x0c"


def is_content(line: bytes) -> bool:
    """Whether a header line starts a Content-* field (as HEADER.FIELDS reads its name)."""
    return line.lstrip(_NAME_STRIP)[:8].lower() == b"content-"


def parsed_on(line: bytes) -> bool:
    """Whether the email parser reads on past this header line (each of its CR-broken pieces a field's)."""
    body = line[:-2] if line.endswith(b"\r\n") else line[:-1] if line.endswith((b"\n", b"\r")) else line
    return all(_FIELD_LINE.match(piece) for piece in body.split(b"\r"))


def delimiter(content: bytes, boundary: bytes) -> bool | None:
    """Whether a line (without its line break) is a closing delimiter of C{boundary}; None: no delimiter."""
    if not content.startswith(b"--" + boundary):
        return None
    rest = content[len(boundary) + 2:]
    if rest.startswith(b"--") and not rest[2:].strip(b" \t"):
        return True
    return None if rest.strip(b" \t") else False


def candidates(boundaries: tuple[bytes, ...], header: bool, content: bool, stops: bool) -> re.Pattern[bytes]:
    """
    The lines Python must look at, each found from the line break before
    it: delimiters of C{boundaries} (a superset: L{gomail.mailaccess.mimeindex.Scanner} decides),
    in a header its empty line, while Content-* fields are still kept
    (C{content}) their first lines, and (C{stops}) the lines the email parser may stop at.
    """
    alternatives = []
    if boundaries:
        names = b"|".join(re.escape(b) for b in sorted(set(boundaries), key=len, reverse=True))
        alternatives.append(rb"--(?:" + names + rb")(?:--)?[ \t]*\r?\n")
    if header:
        alternatives.append(rb"\r?\n")
    if content:
        alternatives.append(rb"[\r\x0b\x0c]*(?i:content-)")
    if stops:
        alternatives.append(_NO_FIELD)
    return re.compile(rb"\n(?:" + b"|".join(alternatives) + rb")")


__all__ = ["CONTINUED", "FIELD_START", "STOP", "candidates", "delimiter", "is_content", "parsed_on"]
