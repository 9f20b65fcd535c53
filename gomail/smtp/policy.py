# -*- test-case-name: tests.test_smtp_policy -*-
"""Who may connect and whom they may send to: the relay rules, free of I/O."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gomail.netaddr import IPAddress, parse_ip
from gomail.smtp.address import canonical_domain

__all__ = ["IPAddress", "RelayPolicy", "local_domains", "own_domain", "parse_ip"]


def own_domain(hostname: str) -> str:
    """
    The server's own mail domain: its C{smtp.hostname}, canonical, or
    C{localhost} for a host name that is no mail domain (C{my_host}).
    """
    try:
        return canonical_domain(hostname)
    except ValueError:
        return "localhost"


def local_domains(configured: Iterable[str], hostname: str) -> frozenset[str]:
    """
    The domains delivered locally: C{smtp.localDomains} and the server's own
    domain (L{own_domain}: as Postfix's C{mydestination} holds
    C{$myhostname}, so that C{postmaster@<hostname>} and C{<postmaster>}
    stay here), in canonical form.
    """
    return frozenset({canonical_domain(d) for d in configured} | {own_domain(hostname)})


class RelayPolicy:
    """
    The relay rules of a server without (or before) authentication:

    - a client in C{trusted_networks} (loopback by default) may send anywhere;
    - anyone else may send only to C{local_domains};
    - an authenticated client may send anywhere;
    - with C{allow_local_only}, only loopback (and UNIX socket) clients may connect at all;
    - with C{require_auth}, MAIL needs an authenticated session, trusted or not.

    Configured domains are canonicalised here (L{canonical_domain}); the
    domains asked about come from L{gomail.smtp.address.parse_path}, which
    canonicalised them already, and are compared as they are.
    """

    def __init__(self, trusted_networks: Iterable[str], local_domains: Iterable[str],
                 require_auth: bool, allow_local_only: bool) -> None:
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_networks]
        self.local_domains = frozenset(canonical_domain(d) for d in local_domains)
        self.require_auth = require_auth
        self.allow_local_only = allow_local_only

    def may_connect(self, ip: IPAddress | None) -> bool:
        """Whether a client may open a session at all."""
        return not self.allow_local_only or ip is None or ip.is_loopback

    def is_trusted(self, ip: IPAddress | None) -> bool:
        """Whether a client's address is in the trusted networks (a UNIX socket peer is)."""
        if ip is None:
            return True
        return any(ip in network for network in self.trusted)

    def is_local_domain(self, domain: str) -> bool:
        """Whether mail for the canonical C{domain} is ours to deliver locally."""
        return domain in self.local_domains

    def may_relay(self, ip: IPAddress | None, authenticated: bool, domain: str) -> bool:
        """Whether a recipient in the canonical C{domain} is accepted from this client."""
        return authenticated or self.is_trusted(ip) or self.is_local_domain(domain)
