"""A DNS server for bench/direct.py: d0.bench ... d<N-1>.bench, each with MX mx.bench (127.0.0.3)."""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.names import authority, common, dns, server


class Zone(authority.FileAuthority):
    """The zone from a dict, no file."""

    def __init__(self, records: dict[bytes, list]) -> None:
        common.ResolverBase.__init__(self)
        soa = dns.Record_SOA(mname=b"ns.bench", rname=b"root.bench", serial=1, refresh=60, retry=60,
                             expire=600, minimum=60, ttl=3600)
        self.soa = (b"bench", soa)
        self.records = {**records, b"bench": [soa]}


def main() -> None:
    port, domains = int(sys.argv[1]), int(sys.argv[2])
    records: dict[bytes, list] = {f"d{i}.bench".encode(): [dns.Record_MX(10, b"mx.bench", ttl=3600)]
                                  for i in range(domains)}
    records[b"mx.bench"] = [dns.Record_A("127.0.0.3", ttl=3600)]
    factory = server.DNSServerFactory(authorities=[Zone(records)])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("dns ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
