# -*- test-case-name: tests.test_mx -*-
"""
Where mail for a domain goes (RFC 5321 5.1), asked with C{twisted.names}:

- the MX records, by preference, equal preferences in random order, each
  host's IPv6 and IPv4 addresses;
- no MX record: the domain's own addresses (the implicit MX);
- a null MX (RFC 7505: one MX of preference 0 and exchange "."): the domain
  accepts no mail, L{NoMail} (5.1.10);
- the domain does not exist (NXDOMAIN): L{NoMail} (5.1.2);
- the server failed or did not answer in time: L{DNSUnavailable}, a
  temporary failure: the message is deferred, never bounced for it.

Answers are cached for their TTL by the resolver (C{twisted.names.client.
createResolver} puts a cache in front of the servers).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.names import common, dns
from twisted.names.error import DNSNameError

__all__ = ["DNSUnavailable", "Destination", "MXResolver", "NoMail", "dns_resolver"]


class NoMail(Exception):
    """The domain takes no mail (NXDOMAIN, null MX): a permanent failure with C{status} and C{text}."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(status, text)
        self.status, self.text = status, text


class DNSUnavailable(Exception):
    """The answer could not be had now (SERVFAIL, timeout, no address for any MX): try again later."""


@dataclass(frozen=True)
class Destination:
    """One mail exchanger of a domain, and its addresses (IPv6 first)."""

    host: str
    preference: int
    addresses: tuple[str, ...]


class MXResolver:
    """
    Turns a domain into its L{Destination}s (see the module docstring).

    @param resolver: a C{twisted.names} IResolver (its answers cached).
    @param timeout: seconds for one lookup.
    """

    def __init__(self, resolver: Any, timeout: float = 10.0,
                 random: Callable[[list[Any]], None] = _random.shuffle) -> None:
        self.resolver, self.timeout, self.shuffle = resolver, timeout, random

    async def destinations(self, domain: str) -> list[Destination]:
        """
        The domain's mail exchangers in the order to try them.

        @raise NoMail: the domain takes no mail.
        @raise DNSUnavailable: ask again later.
        """
        timeout = (max(1, round(self.timeout)),)
        name, owners, exchanges = domain.lower(), {domain.lower()}, []
        for _ in range(MAX_ALIASES):
            try:
                answers, _, _ = await self.resolver.lookupMailExchange(name, timeout=timeout)
            except DNSNameError:
                raise NoMail("5.1.2", f"Domain {domain} does not exist (DNS: NXDOMAIN)") from None
            except Exception as e:
                raise DNSUnavailable(f"MX lookup for {domain} failed: {type(e).__name__}") from e
            chain = alias_chain(answers, name)
            owners |= chain
            exchanges = [(r.payload.preference, str(r.payload.name).rstrip(".").lower())
                         for r in answers if r.type == dns.MX and _owner(r) in owners]
            targets = chain - {name}
            if exchanges or not targets:
                break
            # Only the alias came back (an authoritative server does not chase it): ask for its target.
            name = _last(answers, name)
        if any(name == "" for _, name in exchanges):
            if len(exchanges) == 1 and exchanges[0][0] == 0:
                raise NoMail("5.1.10", f"Domain {domain} accepts no mail (null MX)")
            exchanges = [(p, n) for p, n in exchanges if n]  # a misconfigured "." among others: skipped
        if not exchanges:
            exchanges = [(0, domain.lower())]
        ordered = self._order(exchanges)
        found = await DeferredList([Deferred.fromCoroutine(_addresses_of(self.resolver, name, timeout))
                                    for _, name in ordered],
                                   consumeErrors=True)
        destinations = [Destination(name, preference, addresses)
                        for (preference, name), (ok, addresses) in zip(ordered, found, strict=True)
                        if ok and addresses]
        if not destinations:
            raise DNSUnavailable(f"no address for any mail exchanger of {domain}")
        return destinations

    def _order(self, exchanges: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """By preference; hosts of equal preference shuffled (RFC 5321 5.1), duplicates once."""
        by_preference: dict[int, list[str]] = {}
        for preference, name in exchanges:
            hosts = by_preference.setdefault(preference, [])
            if name not in hosts:
                hosts.append(name)
        ordered = []
        for preference in sorted(by_preference):
            hosts = by_preference[preference]
            self.shuffle(hosts)
            ordered += [(preference, name) for name in hosts]
        return ordered


def _owner(record: Any) -> str:
    return str(record.name).rstrip(".").lower()


#: CNAMEs followed at most for one domain.
MAX_ALIASES = 8


def _last(answers: list[Any], name: str) -> str:
    """Where C{name}'s CNAME records in C{answers} end."""
    current, seen = name.lower().rstrip("."), set()
    while current not in seen:
        seen.add(current)
        following = [str(r.payload.name).rstrip(".").lower() for r in answers
                     if r.type == dns.CNAME and _owner(r) == current]
        if not following:
            break
        current = following[0]
    return current


def alias_chain(answers: list[Any], name: str) -> set[str]:
    """C{name} and every name its CNAME records lead to in C{answers} (a resolver answers an alias that way)."""
    names = {name.lower().rstrip(".")}
    changed = True
    while changed:
        changed = False
        for record in answers:
            if record.type == dns.CNAME and _owner(record) in names:
                target = str(record.payload.name).rstrip(".").lower()
                if target not in names:
                    names.add(target)
                    changed = True
    return names


async def _addresses_of(resolver: Any, host: str, timeout: tuple[int, ...]) -> tuple[str, ...]:
    """A host's IPv6 then IPv4 addresses (an address literal as it is); a lookup failing adds none."""
    results = await DeferredList([resolver.lookupIPV6Address(host, timeout=timeout),
                                  resolver.lookupAddress(host, timeout=timeout)], consumeErrors=True)
    addresses: list[str] = []
    for ok, answer in results:
        if not ok:
            continue
        owners = alias_chain(answer[0], host)
        for record in answer[0]:
            if record.type in (dns.A, dns.AAAA) and _owner(record) in owners:
                text = record.payload.dottedQuad() if record.type == dns.A else _ipv6(record.payload.address)
                if text not in addresses:
                    addresses.append(text)
    return tuple(addresses)


def _ipv6(packed: bytes) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET6, packed)


def dns_resolver(reactor: Any, servers: tuple[str, ...] = ()) -> Any:
    """
    A caching C{twisted.names} resolver asking C{servers} (C{address} or
    C{address:port}, IPv6 in brackets), or those of C{/etc/resolv.conf}.
    """
    from twisted.names import cache, client

    from gomail.configdelivery import dns_server

    parsed = [dns_server(server) for server in servers]
    upstream = client.Resolver(resolv=None if parsed else "/etc/resolv.conf", servers=parsed or None,
                               reactor=reactor)
    return CachingResolver(upstream, cache.CacheResolver(reactor=reactor))


class CachingResolver(common.ResolverBase):
    """
    Answers from C{cache} while they are within their TTL, else from
    C{upstream}, whose successful answers fill the cache (a plain
    C{ResolverChain} with a C{CacheResolver} in front never fills it).
    """

    def __init__(self, upstream: Any, cache: Any) -> None:
        common.ResolverBase.__init__(self)
        self.upstream, self.cache = upstream, cache

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred:
        query = dns.Query(name, type, cls)

        def ask_upstream(_: Any) -> Deferred:
            def remember(result: Any) -> Any:
                self.cache.cacheResult(query, result)
                return result
            return self.upstream._lookup(name, cls, type, timeout).addCallback(remember)

        return self.cache._lookup(name, cls, type, timeout).addErrback(ask_upstream)
