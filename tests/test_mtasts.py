"""
MTA-STS (gomail.delivery.mtasts): policies parsed, fetched over real HTTPS
from a local server with a test CA, cached for max_age on a task.Clock, and
enforced by direct delivery (an MX the policy does not name is not used).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent
from twisted.web.resource import Resource
from twisted.web.server import Site

from gomail.delivery.direct import DirectAgent
from gomail.delivery.mtasts import MTASTS, STSPolicy, https_fetcher, parse_policy, txt_id
from gomail.delivery.mx import Destination
from gomail.spool.envelope import Envelope, Recipient
from tests.processes import free_port
from tests.testca import TestCA

POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmx: *.backup.remote.test\r\nmax_age: 86400\r\n"


class ParseTests(SynchronousTestCase):
    """RFC 8461 3.1 and 3.2."""

    def test_policy(self) -> None:
        """Mode, mx patterns, max_age; wildcards match exactly one label."""
        policy = parse_policy(POLICY.decode())
        self.assertEqual((policy.mode, policy.mx, policy.max_age),
                         ("enforce", ("mx.remote.test", "*.backup.remote.test"), 86400))
        self.assertTrue(policy.allows("MX.remote.test."))
        self.assertTrue(policy.allows("a.backup.remote.test"))
        self.assertFalse(policy.allows("a.b.backup.remote.test"))
        self.assertFalse(policy.allows("backup.remote.test"))
        self.assertFalse(policy.allows("evil.test"))

    def test_bad_policies(self) -> None:
        """A wrong version, mode or max_age, or enforce without mx: ValueError."""
        for text in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                     "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                     "version: STSv1\nmode: enforce\nmax_age: 1\n",
                     "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n"):
            self.assertRaises(ValueError, parse_policy, text)

    def test_txt_records(self) -> None:
        """One v=STSv1 record with an id; none or two: no policy."""
        self.assertEqual(txt_id(["v=STSv1; id=20261204T01"]), "20261204T01")
        self.assertIsNone(txt_id(["v=spf1 -all"]))
        self.assertIsNone(txt_id(["v=STSv1; id=a", "v=STSv1; id=b"]))


class _TXT:
    """A resolver answering _mta-sts TXT lookups from C{records} (a missing name fails)."""

    def __init__(self) -> None:
        self.records: dict[str, bytes] = {}

    def lookupText(self, name: str, timeout: Any = None) -> Deferred:
        if name not in self.records:
            return fail(Exception("NXDOMAIN"))
        return succeed(([dns.RRHeader(name.encode(), dns.TXT, payload=dns.Record_TXT(self.records[name]))], [], []))


class CacheTests(SynchronousTestCase):
    """Fetched once per id, kept for max_age, the cache used when fetching fails."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.txt = _TXT()
        self.fetched: list[str] = []
        self.body: Any = POLICY
        self.sts = MTASTS(self.txt, self.fetch, self.clock, timeout=5)

    def fetch(self, url: str) -> Deferred:
        self.fetched.append(url)
        return fail(self.body) if isinstance(self.body, Exception) else succeed(self.body)

    def policy(self) -> STSPolicy | None:
        return self.successResultOf(Deferred.fromCoroutine(self.sts.policy("remote.test")))

    def test_fetched_once_then_cached(self) -> None:
        """The same id: one fetch; a new id: fetched again."""
        self.txt.records["_mta-sts.remote.test"] = b"v=STSv1; id=one"
        self.assertEqual(self.policy().mode, "enforce")
        self.assertEqual(self.policy().mode, "enforce")
        self.assertEqual(self.fetched, ["https://mta-sts.remote.test/.well-known/mta-sts.txt"])
        self.txt.records["_mta-sts.remote.test"] = b"v=STSv1; id=two"
        self.policy()
        self.assertEqual(len(self.fetched), 2)

    def test_cache_outlives_dns_and_fetch_failures_until_max_age(self) -> None:
        """No TXT record or a failed fetch: the cached policy, until its max_age; then none."""
        self.txt.records["_mta-sts.remote.test"] = b"v=STSv1; id=one"
        self.policy()
        del self.txt.records["_mta-sts.remote.test"]
        self.assertEqual(self.policy().mode, "enforce")
        self.txt.records["_mta-sts.remote.test"] = b"v=STSv1; id=two"
        self.body = ValueError("HTTP 500")
        self.assertEqual(self.policy().mode, "enforce")
        self.clock.advance(86400)
        self.assertIsNone(self.policy())

    def test_no_record_no_policy(self) -> None:
        """A domain without the TXT record has no policy and nothing is fetched."""
        self.assertIsNone(self.policy())
        self.assertEqual(self.fetched, [])


class _ToLocalServer:
    """An endpoint factory for treq's Agent: every https URL goes to 127.0.0.1:C{port}, TLS checked against C{ca}."""

    def __init__(self, port: int, ca: Certificate) -> None:
        self.port, self.ca = port, ca

    def endpointForURI(self, uri: Any) -> Any:
        return wrapClientTLS(optionsForClientTLS(uri.host.decode(), trustRoot=self.ca),
                             TCP4ClientEndpoint(reactor, "127.0.0.1", self.port))


class Policy(Resource):
    isLeaf = True

    def __init__(self, body: bytes, kind: bytes = b"text/plain") -> None:
        super().__init__()
        self.body, self.kind = body, kind

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.kind)
        return self.body


class HTTPSFetchTests(TestCase):
    """https_fetcher against a real HTTPS server whose certificate a test CA signed."""

    async def serve(self, resource: Resource, host: str = "mta-sts.remote.test") -> tuple[int, Certificate]:
        ca = TestCA()
        cert, key = ca.issue(host)
        port = free_port()
        listening = await SSL4ServerEndpoint(reactor, port, PrivateCertificate.loadPEM(cert + key).options(),
                                             interface="127.0.0.1").listen(Site(resource))
        self.addCleanup(listening.stopListening)
        return port, Certificate.loadPEM(ca.ca_pem)

    async def test_fetch_verified_policy(self) -> None:
        """The policy file over HTTPS, the certificate checked against the test CA and the policy host."""
        port, ca = await self.serve(Policy(POLICY))
        fetch = https_fetcher(Agent.usingEndpointFactory(reactor, _ToLocalServer(port, ca)))
        body = await fetch("https://mta-sts.remote.test/.well-known/mta-sts.txt")
        self.assertEqual(parse_policy(body.decode()).mx, ("mx.remote.test", "*.backup.remote.test"))

    async def test_wrong_certificate_name_fails(self) -> None:
        """A certificate for another name: the fetch fails (no policy is taken from it)."""
        port, ca = await self.serve(Policy(POLICY), host="elsewhere.test")
        fetch = https_fetcher(Agent.usingEndpointFactory(reactor, _ToLocalServer(port, ca)))
        await self.assertFailure(fetch("https://mta-sts.remote.test/.well-known/mta-sts.txt"), Exception)

    async def test_wrong_content_type_fails(self) -> None:
        """A policy not served as text/plain is refused."""
        port, ca = await self.serve(Policy(POLICY, b"text/html"))
        fetch = https_fetcher(Agent.usingEndpointFactory(reactor, _ToLocalServer(port, ca)))
        await self.assertFailure(fetch("https://mta-sts.remote.test/.well-known/mta-sts.txt"), ValueError)


class EnforceTests(SynchronousTestCase):
    """Direct delivery under an enforce policy."""

    def agent(self, mx: str) -> tuple[DirectAgent, list]:
        class Resolver:
            def destinations(self, domain: str) -> Deferred:
                return succeed([Destination(mx, 10, ("127.0.0.9",))])

        class Policies:
            def policy(self, domain: str) -> Deferred:
                return succeed(parse_policy(POLICY.decode()))

        plans: list = []

        class Relay:
            possible_duplicates = 0

            def __init__(self, smarthosts: list) -> None:
                plans.append(smarthosts)

            def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
                return succeed({r.address: (250, "ok") for r in recipients})

            def close(self) -> None:
                pass

        agent = DirectAgent(Resolver(), Relay, mtasts=Policies())  # type: ignore[arg-type]
        return agent, plans

    def deliver(self, agent: DirectAgent) -> dict:
        envelope = Envelope("q", "a@example.org", [Recipient("b@remote.test")], 0.0)
        return self.successResultOf(Deferred.fromCoroutine(agent._domain(envelope, "/x", "remote.test",
                                                                         list(envelope.recipients))))

    def test_wrong_mx_name_deferred(self) -> None:
        """An MX the policy does not name is not used: 451 4.7.5, nothing connected."""
        agent, plans = self.agent("mx.attacker.test")
        result = self.deliver(agent)
        self.assertEqual(result["b@remote.test"][0], 451)
        self.assertIn("4.7.5", result["b@remote.test"][1])
        self.assertEqual(plans, [])

    def test_named_mx_over_verified_tls_only(self) -> None:
        """A named MX: TLS required and verified, no plaintext fallback."""
        agent, plans = self.agent("mx.remote.test")
        self.assertEqual(self.deliver(agent)["b@remote.test"][0], 250)
        [plan] = plans
        self.assertEqual([(s.require_tls, s.verify, s.plaintext) for s in plan], [(True, True, False)])


class EndToEndTests(TestCase):
    """Direct delivery asking a real DNS server for MX and TXT, and fetching the policy over real HTTPS."""

    async def test_policy_with_a_wrong_mx_defers(self) -> None:
        """remote.test publishes enforce for mx.remote.test; its MX record names another host: 451 4.7.5."""
        from tests.dnsserver import DNSServer, MemoryAuthority

        zone = {"remote.test": [dns.Record_MX(10, b"mx.attacker.test", ttl=300)],
                "mx.attacker.test": [dns.Record_A("127.0.0.9", ttl=300)],
                "_mta-sts.remote.test": [dns.Record_TXT(b"v=STSv1; id=20261204", ttl=300)]}
        server = DNSServer(reactor, MemoryAuthority("test", zone))
        self.addCleanup(server.stop)
        ca = TestCA()
        cert, key = ca.issue("mta-sts.remote.test")
        port = free_port()
        listening = await SSL4ServerEndpoint(reactor, port, PrivateCertificate.loadPEM(cert + key).options(),
                                             interface="127.0.0.1").listen(Site(Policy(POLICY)))
        self.addCleanup(listening.stopListening)
        fetch = https_fetcher(Agent.usingEndpointFactory(reactor, _ToLocalServer(port,
                                                                                 Certificate.loadPEM(ca.ca_pem))))
        connected: list = []

        def relay_for(smarthosts: list) -> Any:
            connected.append(smarthosts)
            raise AssertionError("no connection may be planned to an MX the policy does not name")

        from gomail.delivery.mx import MXResolver

        agent = DirectAgent(MXResolver(server.resolver, timeout=2), relay_for,
                            mtasts=MTASTS(server.resolver, fetch, reactor, timeout=5))
        envelope = Envelope("q", "a@example.org", [Recipient("b@remote.test")], 0.0)
        result = await agent.deliver(envelope, "/nowhere", list(envelope.recipients))
        self.assertEqual(result["b@remote.test"][0], 451)
        self.assertIn("4.7.5", result["b@remote.test"][1])
        self.assertEqual(connected, [])
