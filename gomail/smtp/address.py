# -*- test-case-name: tests.test_smtp_address -*-
"""
Parsing of MAIL FROM / RCPT TO arguments (RFC 5321 4.1.2, 4.5.3.1), and the
one canonical form of an address.

An address is canonicalised here, once, as it is parsed: the domain is
lower-cased and loses one trailing dot (C{Example.COM.} is C{example.com}),
an address literal is checked and written one way (C{[192.0.2.1]},
C{[ipv6:2001:db8::1]}), and the local part is kept as given (RFC 5321 2.4
leaves its case to the receiving domain). Everything later (relay policy,
recipient lookup, routing, rate limits, logs, the envelope) uses that form
and never normalises again, so no two of them can disagree about a domain.

gomail does not offer SMTPUTF8, so addresses are ASCII: an internationalised
domain arrives in its A-label form (C{xn--...}) and is compared as such;
configured domains are converted to that form (L{canonical_domain}). Source
routes (C{<@a,@b:user@example.com>}) are accepted and their route ignored, as
the RFC asks. Nothing here touches the network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
#: The one address that needs no domain (RFC 5321 4.5.1), in its canonical form.
POSTMASTER = "postmaster"

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
_LITERAL = r"\[(?:[0-9.]+|[Ii][Pp][Vv]6:[0-9A-Fa-f:.]+)\]"
_MAILBOX = re.compile(rf"^(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})$")
_ROUTE = re.compile(rf"^@{_DOMAIN}(?:,@{_DOMAIN})*:")
_PARAM = re.compile(r"^(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e]+))?$")
_NUMERIC = re.compile(r"^[0-9]+$")


class AddressError(ValueError):
    """A path or parameter the server refuses, with the reply to send."""

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


@dataclass(frozen=True)
class Path:
    """
    A parsed reverse-path or forward-path with its ESMTP parameters.
    C{address} is canonical (see the module docstring).
    """

    address: str  # "" for the null reverse-path <>, "postmaster" for <Postmaster>
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        """The (canonical) domain; "" for <> and <Postmaster>."""
        return self.address.rpartition("@")[2] if "@" in self.address else ""


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
    if not allow_null and inner.lower() == POSTMASTER:
        return Path(POSTMASTER, params)  # RFC 5321 4.5.1: must be accepted without a domain
    route = _ROUTE.match(inner)
    if route:
        inner = inner[route.end():]
    return Path(_canonical_mailbox(inner, "5.1.7" if allow_null else "5.1.3"), params)


def canonical_address(text: str) -> str:
    """
    The canonical form of a mailbox C{local@domain} given without angle
    brackets (an alias, a target, a configured address).

    @raise AddressError: (a ValueError) for anything that is not a mailbox.
    """
    if not text.isascii():
        raise AddressError(553, "5.6.7", "Non-ASCII addresses are not supported (no SMTPUTF8)")
    return _canonical_mailbox(text, "5.1.3")


def canonical_domain(text: str) -> str:
    """
    The canonical form of a configured domain name: an internationalised name
    in A-labels (IDNA 2008, UTS #46 mapping), lower-cased, without the
    trailing dot. For configuration values; addresses are canonicalised by
    L{parse_path}.

    @raise ValueError: not a domain name.
    """
    name = text.strip()
    if not name.isascii():
        import idna  # a dependency of Twisted (through hyperlink)

        try:
            name = idna.encode(name.rstrip("."), uts46=True).decode("ascii") + "." * name.endswith(".")
        except idna.IDNAError as e:
            raise ValueError(f"{text!r} is not a domain name ({e})") from None
    try:
        return _canonical_domain(name, "5.1.3")
    except AddressError as e:
        raise ValueError(f"{text!r} is not a domain name ({e.text})") from None


def _canonical_mailbox(text: str, status: str) -> str:
    match = _MAILBOX.match(text)
    if not match:
        raise AddressError(501, status, "Bad address syntax (local-part@domain expected)")
    local = match.group("local")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError(501, status, "Address too long")
    return f"{local}@{_canonical_domain(match.group('domain'), status)}"


def _canonical_domain(domain: str, status: str) -> str:
    """A domain that matched the grammar above, checked and in its canonical form."""
    if domain.startswith("["):
        return _canonical_literal(domain[1:-1], status)
    domain = domain.lower()
    domain = domain.removesuffix(".")  # the root: "example.com." is "example.com"
    if not re.fullmatch(_DOMAIN, domain) or domain.endswith("."):
        raise AddressError(501, status, "Bad domain syntax")
    if len(domain) > MAX_DOMAIN:
        raise AddressError(501, status, "Address too long")
    if "." in domain and _NUMERIC.match(domain.rpartition(".")[2]):
        # RFC 3696 2: no top-level domain is all-numeric; "1.2.3.4" is an IP
        # address without its brackets, and would be routed as a name.
        raise AddressError(501, status, "Bad domain: an address literal needs brackets ([192.0.2.1])")
    return domain


def _canonical_literal(content: str, status: str) -> str:
    """C{[192.0.2.1]} and C{[IPv6:2001:DB8::1]} checked and written one way (RFC 5321 4.1.3)."""
    try:
        if content[:5].lower() == "ipv6:":
            return f"[ipv6:{ipaddress.IPv6Address(content[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(content)}]"
    except ValueError:
        raise AddressError(501, status, f"Bad address literal [{content}]") from None


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.match(word)
        if not match:
            raise AddressError(501, "5.5.4", "Syntax error in parameters")
        params[match.group("key").upper()] = match.group("value")
    return params
