# -*- test-case-name: tests.test_web_http,tests.test_web_monitor -*-
"""
What a request must show before the monitor and admin routes serve it, beyond
its peer (issue 14 item 14: DNS rebinding, CSRF and forwarded headers).

  - B{Host}: a browser tricked by DNS rebinding sends the attacker's name
    (C{Host: evil.example}); only the configured names (by default
    C{localhost}, C{127.0.0.1}, C{[::1]}) and the listener's own address are
    served, with or without a port. Others: 421.
  - B{Origin}: a state-changing request (POST, PUT, PATCH, DELETE) carrying
    an C{Origin} other than the request's own (scheme, Host and port), or
    C{Sec-Fetch-Site: cross-site}/C{same-site}, comes from another site's
    page: 403.
  - B{A header no form can send}: a state-changing request needs the bearer
    token (when one is configured) or C{X-Gomail-Request} (any non-empty
    value). A page of another origin can send neither without a CORS
    preflight, which gomail never grants.
  - B{Forwarded headers} (C{Forwarded}, C{X-Forwarded-For}, C{X-Real-IP}) say
    who the client is only when the socket peer is a trusted proxy; from any
    other peer a forwarded request's client is unknown (a local proxy in
    front of the listener must not make everyone it forwards "local").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address

from gomail.netaddr import IPAddress, parse_ip

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "[::1]")
STATE_CHANGING = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
#: The header that marks a request as sent by a program, not by a form of another site.
REQUEST_HEADER = b"X-Gomail-Request"
FORWARDED_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")


def split_host(value: str) -> tuple[str, int | None] | None:
    """
    A C{Host} value (or a configured name) as (name, port): lower case, no
    final dot, an IPv6 literal in brackets; None when malformed.
    """
    value = value.strip().lower()
    port: str | None = None
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        name += "]"
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        name = f"[{value}]"  # a bare IPv6 address (configured names only; a Host needs brackets)
    else:
        name, colon, after = value.partition(":")
        port = after if colon else None
    name = name.rstrip(".")
    if not name or any(c in name for c in " /\\@?#"):
        return None
    if port is not None and not (port.isdigit() and 0 < len(port) <= 5):
        return None
    return name, int(port) if port is not None else None


class HostNames:
    """The names a listener answers to (see the module docstring)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        parsed = [split_host(name) for name in (tuple(names) or DEFAULT_HOSTNAMES)]
        self.names = frozenset(p[0] for p in parsed if p is not None)

    def allows(self, host: str | None, local: Any) -> bool:
        """
        Whether C{host} (the C{Host} header, None when absent) names this
        listener, whose own address is C{local}. A request without C{Host}
        (HTTP/1.0) is no browser's and passes.
        """
        if host is None:
            return True
        parsed = split_host(host)
        if parsed is None:
            return False
        name = parsed[0]
        if name in self.names:
            return True
        own = parse_ip(getattr(local, "host", None))
        return own is not None and parse_ip(name.strip("[]")) == own


def origin_matches(origin: str, host: str | None, secure: bool) -> bool:
    """Whether C{Origin} names the request's own origin: its scheme, and the C{Host} it was sent to."""
    scheme, sep, authority = origin.strip().lower().partition("://")
    if not sep or host is None or scheme not in ("http", "https") or "/" in authority:
        return False  # "null" (a sandboxed or file: page), garbage, or no Host to compare with
    if scheme != ("https" if secure else "http"):
        return False
    default = 443 if secure else 80
    theirs, ours = split_host(authority), split_host(host)
    if theirs is None or ours is None:
        return False
    return (theirs[0], theirs[1] or default) == (ours[0], ours[1] or default)


class ForwardedFor:
    """Who the client of a forwarded request is, believing only C{trusted} proxies."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)

    def is_trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip in network for network in self.trusted)

    def client(self, request: Any) -> Any:
        """
        The client's address: the socket peer when no forwarded header is
        present; else, from a trusted proxy, the nearest address the headers
        name that is not itself a trusted proxy; else None (unknown: the
        request was forwarded by a proxy nobody vouches for, or the headers
        disagree or cannot be read).
        """
        peer = request.getClientAddress()
        chains = []
        for name in FORWARDED_HEADERS:
            values = request.requestHeaders.getRawHeaders(name)
            if values:
                chains.append(_chain(name, [v.decode("latin-1") for v in values]))
        if not chains:
            return peer
        if not self.is_trusted(parse_ip(getattr(peer, "host", None))):
            return None
        # Several kinds of header that disagree: one was set by the client, not by the proxy.
        clients = {self._nearest_untrusted(chain) for chain in chains}
        if len(clients) != 1:
            return None
        client = clients.pop()
        if client is None:
            return None
        return (IPv6Address if client.version == 6 else IPv4Address)("TCP", str(client), 0)

    def _nearest_untrusted(self, chain: list[IPAddress | None] | None) -> IPAddress | None:
        if not chain:
            return None
        for ip in reversed(chain):
            if ip is None:
                return None  # "unknown", an obfuscated name: the client cannot be told
            if not self.is_trusted(ip):
                return ip
        return chain[0]


def _chain(name: bytes, values: list[str]) -> list[IPAddress | None] | None:
    """The addresses a forwarded header names, the client first, the nearest proxy's client last."""
    text = ",".join(values)
    if name == b"forwarded":
        entries = []
        for element in text.split(","):
            for pair in element.split(";"):
                key, _, value = pair.strip().partition("=")
                if key.lower() == "for":
                    entries.append(value.strip().strip('"'))
    else:
        entries = [entry.strip() for entry in text.split(",")]
    addresses: list[IPAddress | None] = []
    for entry in entries:
        if entry.startswith("["):
            entry = entry[1:].partition("]")[0]  # [2001:db8::1]:4711
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]  # 192.0.2.1:4711
        addresses.append(parse_ip(entry))
    return addresses or None
