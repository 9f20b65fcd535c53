"""
Direct delivery to each domain's MX (gomail.delivery.direct) without the
internet: a real authoritative DNS server and real SMTP sinks on loopback
addresses (127.0.0.2, 127.0.0.3) on a free port, gomail's real connector
and relay client.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.names import dns
from twisted.trial.unittest import TestCase

from gomail.configschema import DeliverySettings
from gomail.delivery.connect import make_connector
from gomail.delivery.direct import DirectAgent, smarthosts_for
from gomail.delivery.mx import Destination, MXResolver
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.spool.envelope import Envelope, Recipient
from tests.dnsserver import DNSServer, MemoryAuthority
from tests.processes import free_port
from tests.smarthost import SmarthostFactory


def mx(preference: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(preference, name.encode(), ttl=300)


def a(address: str) -> dns.Record_A:
    return dns.Record_A(address, ttl=300)


ZONE = {
    # The preferred MX has no server listening: the backup takes the mail.
    "fallback.test": [mx(10, "down.fallback.test"), mx(20, "up.fallback.test")],
    "down.fallback.test": [a("127.0.0.2")],
    "up.fallback.test": [a("127.0.0.3")],
    "aonly.test": [a("127.0.0.3")],
    "nullmx.test": [mx(0, "")],
    "other.test": [mx(5, "up.fallback.test")],
}


class DirectDeliveryTests(TestCase):
    """DirectAgent end to end on loopback."""

    def setUp(self) -> None:
        self.server = DNSServer(reactor, MemoryAuthority("test", ZONE, servfail={"servfail.test"}))
        self.addCleanup(self.server.stop)
        self.port = free_port()
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        self.announced: list[str] = []
        factory = SmarthostFactory(self.spool, reject="nobody", tempfail=None, announce=self.announced.append)
        listening = reactor.listenTCP(self.port, factory, interface="127.0.0.3")
        self.addCleanup(listening.stopListening)
        settings = DeliverySettings(connectTimeout=5, commandTimeout=10)
        connect = make_connector(reactor, "mx.gomail.test", settings, verify=False)
        self.relays: list[RelayAgent] = []

        def relay_for(smarthosts: list[Smarthost]) -> RelayAgent:
            relay = RelayAgent(smarthosts, connect, reactor, 20, 0, True, idle_timeout=0.5)
            self.relays.append(relay)
            return relay

        self.agent = DirectAgent(MXResolver(self.server.resolver, timeout=2), relay_for, port=self.port)
        self.addCleanup(self.agent.close)
        self.message = os.path.join(self.spool, "message.eml")
        with open(self.message, "wb") as f:
            f.write(b"Subject: direct\r\n\r\nhello\r\n")

    def stored(self) -> list[bytes]:
        found = []
        for name in sorted(os.listdir(self.spool)):
            if name.endswith(".eml") and name != "message.eml":
                with open(os.path.join(self.spool, name), "rb") as f:
                    found.append(f.read())
        return found

    async def deliver(self, *addresses: str) -> dict:
        envelope = Envelope("q1", "alice@example.org", [Recipient(x) for x in addresses], 0.0)
        return await self.agent.deliver(envelope, self.message, list(envelope.recipients))

    async def test_next_mx_when_the_first_is_down(self) -> None:
        """The preferred MX refuses connections: the mail goes to the next one, 250."""
        results = await self.deliver("bob@fallback.test")
        self.assertEqual(results["bob@fallback.test"][0], 250)
        [stored] = self.stored()
        self.assertTrue(stored.startswith(b"X-Envelope: <alice@example.org> <bob@fallback.test>\r\n"))
        self.assertIn(b"hello", stored)

    async def test_address_record_without_mx(self) -> None:
        """A domain with only an A record gets its mail there."""
        results = await self.deliver("carol@aonly.test")
        self.assertEqual(results["carol@aonly.test"][0], 250)

    async def test_no_mail_domains_bounce_dns_failure_defers(self) -> None:
        """Null MX: 556 5.1.10; NXDOMAIN: 550 5.1.2; SERVFAIL: 451 (tried again later); others delivered."""
        results = await self.deliver("x@nullmx.test", "y@absent.test", "z@servfail.test", "ok@aonly.test")
        self.assertEqual(results["x@nullmx.test"][0], 556)
        self.assertIn("5.1.10", results["x@nullmx.test"][1])
        self.assertEqual(results["y@absent.test"][0], 550)
        self.assertIn("5.1.2", results["y@absent.test"][1])
        self.assertEqual(results["z@servfail.test"][0], 451)
        self.assertEqual(results["ok@aonly.test"][0], 250)

    async def test_recipients_grouped_by_domain(self) -> None:
        """Two recipients of one domain share a transaction; another domain gets its own; a 5xx is per recipient."""
        results = await self.deliver("b1@fallback.test", "nobody@fallback.test", "b2@fallback.test",
                                     "d@other.test")
        self.assertEqual([results[x][0] for x in ("b1@fallback.test", "b2@fallback.test", "d@other.test")],
                         [250, 250, 250])
        self.assertEqual(results["nobody@fallback.test"][0], 550)
        envelopes = sorted(m.split(b"\r\n", 1)[0] for m in self.stored())
        self.assertEqual(envelopes, [b"X-Envelope: <alice@example.org> <b1@fallback.test,b2@fallback.test>",
                                     b"X-Envelope: <alice@example.org> <d@other.test>"])

    async def test_connection_reused_per_destination(self) -> None:
        """A second message to the same domain reuses the idle connection (one session, two MAILs)."""
        await self.deliver("b1@aonly.test")
        await self.deliver("b2@aonly.test")
        self.assertEqual(len(self.relays), 1)
        self.assertEqual(len(self.stored()), 2)
        self.assertFalse([line for line in self.announced if line.startswith("session:")])


class PlanTests(TestCase):
    """The order of connections for a domain's destinations."""

    def test_addresses_with_tls_then_without(self) -> None:
        """Each address first with STARTTLS (named by its MX host), then without; retryCount MX hosts."""
        plan = smarthosts_for([Destination("mx1.test", 10, ("::1", "127.0.0.2")),
                               Destination("mx2.test", 20, ("127.0.0.3",)),
                               Destination("mx3.test", 30, ("127.0.0.4",))], 25, limit=2)
        self.assertEqual([str(s) for s in plan],
                         ["mx1.test [::1]:25", "mx1.test [::1]:25 (no TLS)", "mx1.test [127.0.0.2]:25",
                          "mx1.test [127.0.0.2]:25 (no TLS)", "mx2.test [127.0.0.3]:25",
                          "mx2.test [127.0.0.3]:25 (no TLS)"])
        self.assertEqual([s.priority for s in plan], list(range(6)))


class PerDomainLimitTests(TestCase):
    """directDelivery.maxPerDomain: attempts to one domain at a time."""

    def test_second_attempt_waits_for_the_first(self) -> None:
        """With a limit of 1, a second message to the same domain waits; another domain does not."""
        from twisted.internet.defer import succeed

        class Resolver:
            def destinations(self, domain: str) -> Deferred:
                return succeed([Destination("mx." + domain, 10, ("127.0.0.9",))])

        started: list[tuple[str, Deferred]] = []

        class Relay:
            possible_duplicates = 0

            def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
                d: Deferred = Deferred()
                started.append((recipients[0].address, d))
                return d

            def close(self) -> None:
                pass

        agent = DirectAgent(Resolver(), lambda smarthosts: Relay(), per_domain=1)  # type: ignore[arg-type]

        def deliver(address: str) -> Deferred:
            envelope = Envelope("q", "a@example.org", [Recipient(address)], 0.0)
            return agent.deliver(envelope, "/nowhere", list(envelope.recipients))

        first, second, other = deliver("a@one.test"), deliver("b@one.test"), deliver("c@two.test")
        self.assertEqual([address for address, _ in started], ["a@one.test", "c@two.test"])
        started[0][1].callback({"a@one.test": (250, "ok")})
        self.assertEqual([address for address, _ in started], ["a@one.test", "c@two.test", "b@one.test"])
        self.assertEqual(self.successResultOf(first), {"a@one.test": (250, "ok")})
        for _, d in started[1:]:
            d.callback({})
        self.successResultOf(second)
        self.successResultOf(other)


class IndependentDomainsTests(TestCase):
    """A message to several domains: one domain's trouble never costs another its result."""

    def setUp(self) -> None:
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        class Resolver:
            def destinations(self, domain: str) -> Deferred:
                if domain == "broken.test":
                    raise RuntimeError("resolver bug")
                return succeed([Destination("mx." + domain, 10, ("127.0.0.9",))])

        self.pending: list[Deferred] = []
        pending = self.pending

        class Relay:
            possible_duplicates = 0

            def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
                if recipients[0].address.endswith("@fast.test"):
                    return succeed({r.address: (250, "2.0.0 ok") for r in recipients})
                d: Deferred = Deferred()
                pending.append(d)
                return d

            def close(self) -> None:
                pass

        self.clock = Clock()
        self.agent = DirectAgent(Resolver(), lambda smarthosts: Relay(), per_domain=1,  # type: ignore[arg-type]
                                 clock=self.clock, slot_timeout=30)

    def deliver(self, *addresses: str) -> Deferred:
        envelope = Envelope("q", "a@example.org", [Recipient(a) for a in addresses], 0.0)
        return self.agent.deliver(envelope, "/nowhere", list(envelope.recipients))

    def test_cut_attempt_keeps_finished_domains(self) -> None:
        """The queue cancels an attempt: the domain that took the message keeps its 250; the other gets 451."""
        result = self.deliver("a@fast.test", "b@slow.test")
        result.cancel()
        replies = self.successResultOf(result)
        self.assertEqual(replies["a@fast.test"][0], 250)
        self.assertEqual(replies["b@slow.test"][0], 451)

    def test_one_domain_fault_is_its_own(self) -> None:
        """A fault while delivering one domain: 451 for its recipients only (logged)."""
        replies = self.successResultOf(self.deliver("a@fast.test", "c@broken.test"))
        self.assertEqual((replies["a@fast.test"][0], replies["c@broken.test"][0]), (250, 451))
        self.flushLoggedErrors(RuntimeError)

    def test_slot_wait_is_bounded(self) -> None:
        """Waiting longer than slot_timeout for a domain's slot: 451 4.4.5, the others unaffected."""
        first = self.deliver("a@slow.test")
        second = self.deliver("b@slow.test")
        self.clock.advance(30)
        self.assertIn("4.4.5", self.successResultOf(second)["b@slow.test"][1])
        self.pending[0].callback({"a@slow.test": (250, "ok")})
        self.assertEqual(self.successResultOf(first)["a@slow.test"][0], 250)


class AddressLiteralTests(TestCase):
    """user@[192.0.2.1]: no DNS, the address itself."""

    def test_literals(self) -> None:
        """IPv4 and IPv6 literals are their own destination; a bad one is no mail domain."""
        from gomail.delivery.direct import literal_destination
        from gomail.delivery.mx import NoMail

        self.assertEqual(literal_destination("[192.0.2.1]"), [Destination("192.0.2.1", 0, ("192.0.2.1",))])
        self.assertEqual(literal_destination("[IPv6:2001:DB8::1]")[0].addresses, ("2001:db8::1",))
        self.assertIsNone(literal_destination("example.com"))
        self.assertRaises(NoMail, literal_destination, "[not-an-address]")
