# -*- test-case-name: tests.test_config -*-
"""
The building blocks of the configuration schema (L{gomail.configschema}):
L{setting}, the field with gomail's metadata, and the value checks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import field
from typing import Any

Check = Callable[[Any], str | None]


def setting(default: Any, *, check: Check | None = None, env: str | None = None,
            secret: bool = False) -> Any:
    """A dataclass field with gomail's metadata."""
    meta = {"check": check, "env": env, "secret": secret}
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata=meta)
    return field(default=default, metadata=meta)


def between(low: float, high: float | None = None) -> Check:
    """Accept numbers in [low, high]."""
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            upper = "" if high is None else f" and <= {high}"
            return f"must be >= {low}{upper}, got {value}"
        return None
    return check


def one_of(*choices: str) -> Check:
    """Accept one of a fixed set of strings."""
    def check(value: str) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"
        return None
    return check


def networks(values: tuple[str, ...]) -> str | None:
    """Accept a list of IP networks in CIDR form (a bare address is a /32 or /128)."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP network (use CIDR form such as 10.0.0.0/8)"
    return None


def domains(values: tuple[str, ...]) -> str | None:
    """Accept a list of domain names (internationalised ones too: they are used in A-label form)."""
    from gomail.smtp.address import canonical_domain

    for value in values:
        try:
            canonical_domain(value)
        except ValueError:
            return f"{value!r} is not a domain name"
    return None


def host_names(values: tuple[str, ...]) -> str | None:
    """Accept a list of names a Host header may carry (a name or an IP literal, IPv6 in brackets, no port)."""
    from gomail.web.guard import split_host

    for value in values:
        parsed = split_host(value)
        if parsed is None or parsed[1] is not None:
            return f"{value!r} is not a host name (a name or an address such as [::1], without a port)"
    return None


def web_origins(values: tuple[str, ...]) -> str | None:
    """Accept a list of web origins (C{https://admin.example.com}, C{http://localhost:3000}: scheme, host, port)."""
    from gomail.web.guard import split_host

    for value in values:
        scheme, sep, authority = value.partition("://")
        if scheme not in ("http", "https") or not sep or "/" in authority or split_host(authority) is None:
            return f"{value!r} is not a web origin (such as https://admin.example.com, no path)"
    return None


def mailbox_or_empty(value: str) -> str | None:
    """Accept an address (local-part@domain) or nothing."""
    from gomail.smtp.address import canonical_address

    if value:
        try:
            canonical_address(value)
        except ValueError:
            return f"{value!r} is not an address such as postmaster@example.com"
    return None


def endpoints(values: tuple[str, ...]) -> str | None:
    """Accept a list of Twisted server endpoint strings."""
    from twisted.internet.endpoints import serverFromString

    for value in values:
        try:
            # Parsing only stores the reactor, so no reactor is needed to check the
            # syntax (an ssl: description also reads its certificate files).
            serverFromString(None, value)
        except Exception as e:  # noqa: BLE001 -- endpoint parsers raise ValueError, KeyError, TypeError...
            return f"{value!r} is not a valid endpoint description ({e})"
    return None


def non_empty(value: str) -> str | None:
    """Reject an empty string."""
    return "must not be empty" if not value.strip() else None


PORT = between(0, 65535)
