"""
Parsing of MAIL FROM / RCPT TO arguments (RFC 5321 4.1.2, 4.5.3.1).

gomail does not offer SMTPUTF8, so addresses are ASCII. Source routes
(``<@a,@b:user@example.com>``) are accepted and their route ignored, as the
RFC asks. Nothing here touches the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = re.compile(rf"^(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})$")
_ROUTE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
_PARAM = re.compile(r"^(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?$")


class AddressError(ValueError):
    """A path or parameter the server refuses, with the reply to send."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


@dataclass(frozen=True)
class Path:
    """A parsed reverse-path or forward-path with its ESMTP parameters."""

    address: str  # "" for the null reverse-path <>
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        """The domain, lower-cased ("" for <> and <Postmaster>)."""
        local, at, domain = self.address.rpartition("@")
        return domain.lower() if at else ""


def parse_path(argument: bytes, keyword: bytes, allow_null: bool) -> Path:
    """
    Parse C{FROM:<path> params} or C{TO:<path> params}.

    @raise AddressError: with a 501/553/555 reply for anything malformed.
    """
    try:
        text = argument.decode("ascii")
    except UnicodeDecodeError:
        raise AddressError(553, "5.6.7", "Non-ASCII addresses are not supported (no SMTPUTF8)") from None
    head, sep, rest = text.partition(":")
    if not sep or head.strip().upper() != keyword.decode():
        raise AddressError(501, "5.5.4", f"Syntax: {'MAIL FROM:<address>' if allow_null else 'RCPT TO:<address>'}")
    rest = rest.lstrip(" ")
    if not rest.startswith("<"):
        raise AddressError(501, "5.5.4", "Syntax: the address must be enclosed in <>")
    close = rest.find(">")
    if close < 0:
        raise AddressError(501, "5.5.4", "Syntax: missing > after the address")
    inner, params_text = rest[1:close], rest[close + 1:]
    if params_text and not params_text.startswith(" "):
        raise AddressError(501, "5.5.4", "Syntax: parameters must follow the address after a space")
    if len(inner) + 2 > MAX_PATH:
        raise AddressError(501, "5.1.3" if not allow_null else "5.1.7", "Address too long")
    params = _parse_params(params_text)
    if inner == "":
        if allow_null:
            return Path("", params)
        raise AddressError(501, "5.1.3", "Empty recipient address")
    if not allow_null and inner.lower() == "postmaster":
        return Path("postmaster", params)  # RFC 5321 4.5.1: must be accepted without a domain
    route = _ROUTE.match(inner)
    if route:
        inner = inner[route.end():]
    match = _MAILBOX.match(inner)
    status = "5.1.7" if allow_null else "5.1.3"
    if not match:
        raise AddressError(501, status, "Bad address syntax (local-part@domain expected)")
    if len(match.group("local")) > MAX_LOCAL_PART or len(match.group("domain")) > MAX_DOMAIN:
        raise AddressError(501, status, "Address too long")
    return Path(inner, params)


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.match(word)
        if not match:
            raise AddressError(501, "5.5.4", "Syntax error in parameters")
        params[match.group("key").upper()] = match.group("value")
    return params
