# -*- test-case-name: tests.test_smtp_xclient -*-
"""
Postfix's XCLIENT command: a trusted proxy (nginx's mail module) tells us who
its client really is.

nginx, with ``xclient on``, opens its backend session with ``EHLO``, then
``XCLIENT ADDR=<client ip> LOGIN=<user> NAME=<rdns or [UNAVAILABLE]>``,
expects a 220 (or 250) and sends the client's own ``EHLO``. After it the
session is the client's: its address for the blacklist, the relay rules,
limits, logs and the Received: header; its LOGIN as the authenticated user
for requireAuth, sender ownership and rate limits (nginx checked the password
through auth_http).

This module parses the command (attribute values are xtext, RFC 3461 4; the
values C{[UNAVAILABLE]} and C{[TEMPUNAVAIL]} mean unknown); the session
applies it (L{gomail.smtp.protocol.GomailESMTP.ext_XCLIENT}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gomail.netaddr import parse_ip

#: Attributes we accept, as advertised in EHLO (Postfix's names).
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
#: Values that mean "not known".
UNKNOWN = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
_XTEXT_ESCAPE = re.compile(r"\+([0-9A-F]{2})")
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,255}$")


class XClientError(ValueError):
    """A malformed XCLIENT command; the text is the reply's."""


@dataclass(frozen=True)
class XClient:
    """What one XCLIENT command says (None: not given, or unknown)."""

    addr: str | None = None
    port: int | None = None
    name: str | None = None
    helo: str | None = None
    proto: str | None = None
    login: str | None = None


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 xtext (C{+XX} hex escapes); a stray C{+} is an error."""
    decoded = _XTEXT_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value)
    if "+" in _XTEXT_ESCAPE.sub("", value):
        raise XClientError("Bad XCLIENT attribute value (xtext)")
    return decoded


def parse(arguments: bytes) -> XClient:
    """
    Parse the arguments of an XCLIENT command.

    @raise XClientError: an unknown attribute, a bad value, or none at all.
    """
    try:
        text = arguments.decode("ascii")
    except UnicodeDecodeError:
        raise XClientError("Bad XCLIENT attribute value (not ASCII)") from None
    found: dict[str, str | None] = {}
    for item in text.split():
        name, sep, raw = item.partition("=")
        name = name.upper()
        if not sep or name not in ATTRIBUTES:
            raise XClientError(f"Bad XCLIENT attribute name: {name[:32]}" if sep else "Syntax: XCLIENT attribute=value...")
        value = xtext_decode(raw)
        found[name] = None if value.upper() in UNKNOWN else value
    if not found:
        raise XClientError("Syntax: XCLIENT attribute=value...")
    return XClient(addr=_address(found.get("ADDR")), port=_port(found.get("PORT")),
                   name=_printable(found.get("NAME"), "NAME"), helo=_printable(found.get("HELO"), "HELO"),
                   proto=_proto(found.get("PROTO")), login=_printable(found.get("LOGIN"), "LOGIN"))


def _address(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper().startswith("IPV6:"):
        value = value[5:]
    ip = parse_ip(value)
    if ip is None:
        raise XClientError("Bad XCLIENT ADDR value")
    return str(ip)


def _port(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise XClientError("Bad XCLIENT PORT value")
    return int(value)


def _proto(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in ("SMTP", "ESMTP"):
        raise XClientError("Bad XCLIENT PROTO value")
    return value.upper()


def _printable(value: str | None, name: str) -> str | None:
    # No spaces or control characters: these reach log lines and the Received: header.
    if value is not None and not _PRINTABLE.match(value):
        raise XClientError(f"Bad XCLIENT {name} value")
    return value
