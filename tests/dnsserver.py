"""
A real authoritative DNS server for tests: twisted.names on a free UDP and
TCP port of 127.0.0.1, answering from records the test gives, with names
that answer SERVFAIL or never answer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.names import authority, common, dns, server
from twisted.names.client import Resolver

from tests.processes import free_port


class ServFail(Exception):
    """What a name in C{servfail} raises: the server answers SERVFAIL."""


class _Factory(server.DNSServerFactory):
    """Answers L{ServFail} with SERVFAIL without logging it as an error (it is the test's intent)."""

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(ServFail):
            self.sendReply(protocol, self._responseFromMessage(message=message, rCode=dns.ESERVER), address)
            return
        super().gotResolverError(failure, protocol, message, address)


class MemoryAuthority(authority.FileAuthority):
    """A zone from a dict (C{name -> [Record_*]}), no file; C{servfail} and C{silent} names misbehave."""

    def __init__(self, zone: str, records: dict[str, list[Any]], servfail: set[str] = frozenset(),
                 silent: set[str] = frozenset()) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns." + zone.encode(), rname=b"root." + zone.encode(), serial=1,
                             refresh=60, retry=60, expire=600, minimum=60, ttl=60)
        self.soa = (zone.encode(), soa)
        self.records = {name.lower().encode(): list(found) for name, found in records.items()}
        self.records.setdefault(zone.encode(), []).append(soa)
        self.servfail = {name.encode() for name in servfail}
        self.silent = {name.encode() for name in silent}

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any = None) -> Deferred:
        if name.lower() in self.servfail:
            return fail(ServFail(name))
        if name.lower() in self.silent:
            return Deferred()  # never answers: the client's timeout decides
        return super()._lookup(name, cls, type, timeout)


class DNSServer:
    """The server (C{port}) and a client resolver asking it (C{resolver}), no cache."""

    def __init__(self, reactor: Any, authority_: MemoryAuthority) -> None:
        factory = _Factory(authorities=[authority_])
        # One number for UDP and TCP, claimed below the ephemeral range (free_port): a UDP port the kernel
        # picked could be some other connection's TCP port.
        self.port = free_port()
        self.udp = reactor.listenUDP(self.port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        try:
            self.tcp = reactor.listenTCP(self.port, factory, interface="127.0.0.1")
        except Exception:
            self.udp.stopListening()
            raise
        self.resolver = Resolver(servers=[("127.0.0.1", self.port)], reactor=reactor)

    def stop(self) -> Deferred:
        self.tcp.stopListening()
        return self.udp.stopListening()
