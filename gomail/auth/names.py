# -*- test-case-name: tests.test_userdb -*-
"""
The one canonical form of user names and allowed sender entries.

Every place that takes a user name from outside (the login checker, the user
database, the C{gomail user} command) goes through L{canonical_username}, so
C{Alice}, C{ alice } and the fullwidth C{ＡＬＩＣＥ} are one user everywhere.
"""

from __future__ import annotations

import functools
import unicodedata

#: The longest user name accepted (in characters): an e-mail address fits.
MAX_NAME_LENGTH = 254


@functools.lru_cache(maxsize=4096)  # pure, and asked at every login: the same names again and again
def canonical_username(raw: str) -> str:
    """
    The canonical form of a user name: NFKC, surrounding whitespace trimmed,
    case-folded, NFKC again (case folding can undo normalisation, Unicode
    §3.13 / UAX #15, hence the second pass).

    @raise ValueError: the name is empty, longer than L{MAX_NAME_LENGTH}, or
        contains whitespace or control/format characters.
    """
    if not isinstance(raw, str):
        raise ValueError("a user name must be text")  # noqa: TRY004 - callers catch ValueError for every bad name
    # NFKC first so that exotic spaces (U+3000, U+00A0) become plain spaces and are trimmed.
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).strip().casefold())
    if not name:
        raise ValueError("the user name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"the user name is longer than {MAX_NAME_LENGTH} characters")
    for char in name:
        if char.isspace() or unicodedata.category(char)[0] in "CZ":
            raise ValueError(f"the user name contains a space or control character ({char!r})")
    return name


def canonical_sender(raw: str) -> str:
    """
    The canonical form of an allowed sender entry: C{alice@example.com} (one
    address) or C{@example.com} (every address of the domain). Surrounding
    whitespace is trimmed and the domain lowercased; the local part is kept as
    given (RFC 5321 leaves its case to the receiving domain).

    @raise ValueError: with a one-line explanation of what is wrong.
    """
    if not isinstance(raw, str):
        raise ValueError("a sender address must be text")  # noqa: TRY004 - callers catch ValueError
    text = raw.strip()
    if not text:
        raise ValueError("the sender address is empty")
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"the sender address {text!r} is longer than {MAX_NAME_LENGTH} characters")
    local, at, domain = text.rpartition("@")
    if not at:
        raise ValueError(f"the sender {text!r} is neither an address (alice@example.com) "
                         f"nor a domain (@example.com)")
    for char in text:
        if char.isspace() or unicodedata.category(char)[0] in "CZ" or char in "<>\"(),;:[]\\":
            raise ValueError(f"the sender {text!r} contains a character not allowed here ({char!r})")
    if "@" in local:
        raise ValueError(f"the sender {text!r} contains more than one @")
    domain = domain.lower()
    labels = domain.split(".")
    if not domain or any(not label for label in labels):
        raise ValueError(f"the sender {text!r} has no valid domain after the @")
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        raise ValueError(f"the domain of the sender {text!r} has a label starting or ending with '-'")
    return f"{local}@{domain}"


__all__ = ["MAX_NAME_LENGTH", "canonical_sender", "canonical_username"]
