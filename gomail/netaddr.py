# -*- test-case-name: tests.test_netaddr -*-
"""Client addresses as every part of gomail reads them."""

from __future__ import annotations

import functools
import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


#: Longer than any IP literal with a zone: not worth parsing (nor caching).
MAX_LENGTH = 64


def parse_ip(host: str | None) -> IPAddress | None:
    """
    The IP address in C{host}: IPv4-mapped IPv6 unwrapped, an IPv6 zone
    (C{%eth0}) dropped; None when it is not an IP address (a UNIX socket peer,
    a name, garbage).
    """
    if not host or len(host) > MAX_LENGTH:
        return None
    return _parse(host)


@functools.lru_cache(maxsize=4096)
def _parse(host: str) -> IPAddress | None:
    # Cached: the same few client addresses are parsed on every connection and
    # login, and the parse is most of what the address checks cost.
    if ":" in host:
        host = host.split("%", 1)[0]  # only IPv6 has zones
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def ip_text(host: str | None) -> str | None:
    """L{parse_ip}'s address in its canonical text form (C{str}), or None; cached like the parse."""
    if not host or len(host) > MAX_LENGTH:
        return None
    return _text(host)


@functools.lru_cache(maxsize=4096)
def _text(host: str) -> str | None:
    address = _parse(host)
    return None if address is None else str(address)
