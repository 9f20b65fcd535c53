"""
Finding a domain's mail exchangers (gomail.delivery.mx) against a real
authoritative DNS server started by the test on a free loopback port.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.names import dns
from twisted.names.error import DNSQueryTimeoutError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.delivery.mx import DNSUnavailable, MXResolver, NoMail
from tests.dnsserver import DNSServer, MemoryAuthority


def mx(preference: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(preference, name.encode(), ttl=300)


ZONE = {
    "multi.test": [mx(20, "backup.multi.test"), mx(10, "a.multi.test"), mx(10, "b.multi.test")],
    "a.multi.test": [dns.Record_A("127.0.0.2", ttl=300), dns.Record_AAAA("::1", ttl=300)],
    "b.multi.test": [dns.Record_A("127.0.0.3", ttl=300)],
    "backup.multi.test": [dns.Record_A("127.0.0.4", ttl=300)],
    "aonly.test": [dns.Record_A("127.0.0.5", ttl=300)],
    "nullmx.test": [mx(0, "")],
    "broken-mx.test": [mx(10, "nowhere.broken-mx.test")],
    "halfnull.test": [mx(0, ""), mx(10, "a.multi.test")],
}


class MXResolverTests(TestCase):
    """RFC 5321 5.1 and RFC 7505 against a real DNS server."""

    def setUp(self) -> None:
        authority = MemoryAuthority("test", ZONE, servfail={"servfail.test"})
        self.server = DNSServer(reactor, authority)
        self.addCleanup(self.server.stop)
        self.reversed: list[list[str]] = []

        def reverse(hosts: list) -> None:  # a stand-in for shuffle, visible in the order
            hosts.reverse()
            self.reversed.append(list(hosts))

        self.mx = MXResolver(self.server.resolver, timeout=1, random=reverse)

    async def test_preference_order_and_addresses(self) -> None:
        """MX hosts by preference, equal ones shuffled, each with its IPv6 then IPv4 addresses."""
        found = await Deferred.fromCoroutine(self.mx.destinations("multi.test"))
        self.assertEqual([(d.host, d.preference, d.addresses) for d in found],
                         [("b.multi.test", 10, ("127.0.0.3",)), ("a.multi.test", 10, ("::1", "127.0.0.2")),
                          ("backup.multi.test", 20, ("127.0.0.4",))])
        self.assertIn(["b.multi.test", "a.multi.test"], self.reversed)

    async def test_implicit_mx(self) -> None:
        """No MX record: the domain's own address."""
        [found] = await Deferred.fromCoroutine(self.mx.destinations("aonly.test"))
        self.assertEqual((found.host, found.addresses), ("aonly.test", ("127.0.0.5",)))

    async def test_null_mx(self) -> None:
        """A null MX: NoMail 5.1.10."""
        error = await self.assertFailure(Deferred.fromCoroutine(self.mx.destinations("nullmx.test")), NoMail)
        self.assertEqual(error.status, "5.1.10")

    async def test_null_mx_among_others_is_skipped(self) -> None:
        """A "." beside real MX records is a misconfiguration: the real ones are used."""
        found = await Deferred.fromCoroutine(self.mx.destinations("halfnull.test"))
        self.assertEqual([d.host for d in found], ["a.multi.test"])

    async def test_nxdomain(self) -> None:
        """A domain that does not exist: NoMail 5.1.2."""
        error = await self.assertFailure(Deferred.fromCoroutine(self.mx.destinations("absent.test")), NoMail)
        self.assertEqual(error.status, "5.1.2")

    async def test_servfail_is_temporary(self) -> None:
        """SERVFAIL: DNSUnavailable (deferred, never bounced)."""
        await self.assertFailure(Deferred.fromCoroutine(self.mx.destinations("servfail.test")), DNSUnavailable)

    async def test_mx_without_address_is_temporary(self) -> None:
        """An MX whose name has no address: nothing to connect to now, DNSUnavailable."""
        await self.assertFailure(Deferred.fromCoroutine(self.mx.destinations("broken-mx.test")), DNSUnavailable)


class TimeoutTests(SynchronousTestCase):
    """A lookup that times out (the resolver's own timeout error) is temporary."""

    def test_timeout_is_temporary(self) -> None:
        """DNSQueryTimeoutError from the resolver: DNSUnavailable, and the configured timeout was passed on."""
        asked = []

        class Silent:
            def lookupMailExchange(self, name: str, timeout: tuple) -> Deferred:
                asked.append(timeout)
                return fail(DNSQueryTimeoutError(name))

        failure = self.failureResultOf(Deferred.fromCoroutine(MXResolver(Silent(), timeout=7).destinations("x.test")))
        failure.trap(DNSUnavailable)
        self.assertEqual(asked, [(7,)])


ALIASES = {
    "alias.test": [dns.Record_CNAME(b"real.test", ttl=300)],
    "real.test": [dns.Record_MX(10, b"mx.real.test", ttl=300), dns.Record_A("127.0.0.9", ttl=300)],
    "mx.real.test": [dns.Record_A("127.0.0.7", ttl=300)],
    "cnamemx.test": [dns.Record_MX(10, b"mxalias.cnamemx.test", ttl=300)],
    "mxalias.cnamemx.test": [dns.Record_CNAME(b"mx.real.test", ttl=300)],
}


class AliasAndCacheTests(TestCase):
    """CNAMEs are followed; answers are cached for their TTL."""

    def setUp(self) -> None:
        self.server = DNSServer(reactor, MemoryAuthority("test", ALIASES))
        self.addCleanup(self.server.stop)

    async def test_domain_and_mx_aliases(self) -> None:
        """A domain that is an alias, and an MX host that is one: their mail exchangers and addresses are found."""
        mx = MXResolver(self.server.resolver, timeout=1)
        [found] = await Deferred.fromCoroutine(mx.destinations("alias.test"))
        self.assertEqual((found.host, found.addresses), ("mx.real.test", ("127.0.0.7",)))
        [found] = await Deferred.fromCoroutine(mx.destinations("cnamemx.test"))
        self.assertEqual((found.host, found.addresses), ("mxalias.cnamemx.test", ("127.0.0.7",)))

    async def test_answers_cached(self) -> None:
        """After one lookup the server may go: the cached answers serve the next one (within their TTL)."""
        from twisted.internet.task import Clock
        from twisted.names import cache

        from gomail.delivery.mx import CachingResolver

        clock = Clock()
        resolver = CachingResolver(self.server.resolver, cache.CacheResolver(reactor=clock))
        mx = MXResolver(resolver, timeout=1)
        first = await Deferred.fromCoroutine(mx.destinations("cnamemx.test"))
        await self.server.stop()
        self.assertEqual(await Deferred.fromCoroutine(mx.destinations("cnamemx.test")), first)
        clock.advance(301)  # past the TTL: the cache is empty again
        await self.assertFailure(Deferred.fromCoroutine(mx.destinations("cnamemx.test")), DNSUnavailable)
