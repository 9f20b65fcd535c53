"""
BackendRouter: per-user assignments, pools by protocol, the hash and
round-robin strategies, name resolution and TCP health checks, on a
MemoryReactorClock (no socket is opened, no time passes).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gomail.auth.backends import BackendRouter, NoBackend, ip_literal, parse_assignment
from gomail.configschema import Backend

USERS = [f"user{n}@example.org" for n in range(2000)]


class ResolvingReactor(MemoryReactorClock):
    """A MemoryReactorClock whose C{resolve} answers from C{names} (others fail) and counts lookups."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        super().__init__()
        self.names = dict(names or {})
        self.lookups: list[str] = []

    def resolve(self, name, timeout=(1,)):
        self.lookups.append(name)
        if name in self.names:
            return succeed(self.names[name])
        return fail(DNSLookupError(name))

    def answer(self, up: set[str] | None = None) -> list[tuple[str, int]]:
        """Answer every pending TCP connect: those to an address in C{up} connect, the others are refused."""
        asked = []
        for host, port, factory, _timeout, _bind in self.tcpClients:
            asked.append((host, port))
            if up is not None and host in up:
                factory.buildProtocol(None).makeConnection(StringTransport())
            else:
                factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        del self.tcpClients[:]
        return asked


def imap(address: str, port: int = 143, weight: int = 1) -> Backend:
    return Backend(protocol="imap", address=address, port=port, weight=weight)


class AssignmentTests(SynchronousTestCase):
    """A user's own backend, which must be an IP literal and a port."""

    def test_assignment_wins(self) -> None:
        """An assignment is used whatever the pool and protocol hold."""
        router = BackendRouter([imap("192.0.2.1")], "hash", MemoryReactorClock(), interval=0)
        self.assertEqual(router.choose("imap", "alice", "198.51.100.7:1143"), ("198.51.100.7", 1143))
        self.assertEqual(router.choose("pop3", "alice", "198.51.100.7:1143"), ("198.51.100.7", 1143))

    def test_ipv6(self) -> None:
        """[IPv6]:port is accepted and given back as a bare, normalised IPv6 literal."""
        self.assertEqual(parse_assignment("[2001:DB8:0::1]:993"), ("2001:db8::1", 993))

    def test_not_ip_port(self) -> None:
        """Names, missing or out-of-range ports are refused with ValueError: nginx needs an IP."""
        for value in ("mail.example.org:143", "192.0.2.1", "192.0.2.1:", "192.0.2.1:0", "192.0.2.1:65536",
                      "192.0.2.1:imap", ":143", "[mail.example.org]:143", "192.0.2.1:-1"):
            self.assertRaises(ValueError, parse_assignment, value)

    def test_ip_literal(self) -> None:
        """ip_literal normalises addresses and says None for names."""
        self.assertEqual([ip_literal(h) for h in ("192.0.2.1", "[::1]", "2001:DB8::1", "localhost", "")],
                         ["192.0.2.1", "::1", "2001:db8::1", None, None])


class PoolTests(SynchronousTestCase):
    """The configured pools and the two strategies."""

    def test_pool_by_protocol(self) -> None:
        """Each protocol has its own pool; a protocol without one raises NoBackend."""
        router = BackendRouter([imap("192.0.2.1"), Backend(protocol="smtp", address="192.0.2.2", port=25)],
                               "hash", MemoryReactorClock(), interval=0)
        self.assertEqual(router.choose("imap", "alice"), ("192.0.2.1", 143))
        self.assertEqual(router.choose("smtp", "alice"), ("192.0.2.2", 25))
        self.assertRaises(NoBackend, router.choose, "pop3", "alice")

    def test_hash_is_stable(self) -> None:
        """With hash, a user always lands on the same backend, also in another router (another process)."""
        backends = [imap(f"192.0.2.{n}") for n in range(1, 4)]
        one = BackendRouter(backends, "hash", MemoryReactorClock(), interval=0)
        other = BackendRouter(backends, "hash", MemoryReactorClock(), interval=0)
        for user in USERS[:100]:
            self.assertEqual({one.choose("imap", user) for _ in range(3)}, {other.choose("imap", user)})

    def test_hash_spreads(self) -> None:
        """Users spread over every backend of equal weight."""
        router = BackendRouter([imap(f"192.0.2.{n}") for n in range(1, 4)], "hash", MemoryReactorClock(),
                               interval=0)
        counts = Counter(router.choose("imap", user)[0] for user in USERS)
        self.assertEqual(len(counts), 3)
        self.assertTrue(all(500 < count < 830 for count in counts.values()), counts)

    def test_hash_removal_moves_only_its_users(self) -> None:
        """Removing a backend moves only the users that were on it; adding one moves users only to it."""
        three = BackendRouter([imap(f"192.0.2.{n}") for n in range(1, 4)], "hash", MemoryReactorClock(),
                              interval=0)
        two = BackendRouter([imap(f"192.0.2.{n}") for n in range(1, 3)], "hash", MemoryReactorClock(),
                            interval=0)
        for user in USERS:
            before, after = three.choose("imap", user), two.choose("imap", user)
            if before != after:
                self.assertEqual(before, ("192.0.2.3", 143))

    def test_hash_weights(self) -> None:
        """A backend of weight 3 gets about three quarters of the users next to one of weight 1."""
        router = BackendRouter([imap("192.0.2.1", weight=3), imap("192.0.2.2")], "hash", MemoryReactorClock(),
                               interval=0)
        share = sum(router.choose("imap", user)[0] == "192.0.2.1" for user in USERS) / len(USERS)
        self.assertTrue(0.70 < share < 0.80, share)

    def test_hash_port_is_part_of_identity(self) -> None:
        """Two backends on one IP with different ports are two backends."""
        router = BackendRouter([imap("192.0.2.1", 143), imap("192.0.2.1", 1143)], "hash", MemoryReactorClock(),
                               interval=0)
        self.assertEqual({router.choose("imap", user)[1] for user in USERS[:200]}, {143, 1143})

    def test_round_robin_smooth(self) -> None:
        """round-robin is nginx's smooth weighted round robin: weights 5, 1, 1 give a a b a c a a."""
        router = BackendRouter([imap("192.0.2.1", weight=5), imap("192.0.2.2"), imap("192.0.2.3")],
                               "round-robin", MemoryReactorClock(), interval=0)
        picks = [router.choose("imap", "alice")[0][-1] for _ in range(14)]
        self.assertEqual("".join(picks), "11213111121311")

    def test_down_backends_skipped(self) -> None:
        """A backend marked down gets no logins; its users move, the others stay where they were."""
        router = BackendRouter([imap(f"192.0.2.{n}") for n in range(1, 4)], "hash", MemoryReactorClock(),
                               interval=0)
        before = {user: router.choose("imap", user) for user in USERS[:300]}
        router.pools["imap"][2].up = False
        for user, chosen in before.items():
            now = router.choose("imap", user)
            self.assertNotEqual(now, ("192.0.2.3", 143))
            if chosen != ("192.0.2.3", 143):
                self.assertEqual(now, chosen)

    def test_all_down_all_candidates(self) -> None:
        """When every backend of a protocol is down, all of them are candidates again."""
        router = BackendRouter([imap("192.0.2.1"), imap("192.0.2.2")], "round-robin", MemoryReactorClock(),
                               interval=0)
        for backend in router.pools["imap"]:
            backend.up = False
        self.assertEqual({router.choose("imap", "alice")[0] for _ in range(4)}, {"192.0.2.1", "192.0.2.2"})


class ResolutionTests(SynchronousTestCase):
    """Backends configured by name: only ever handed out as their resolved IP."""

    def test_unresolved_never_chosen(self) -> None:
        """Before any check, and when a name does not resolve, a named backend is never chosen."""
        reactor = ResolvingReactor({"good.example": "10.0.0.5"})
        router = BackendRouter([imap("good.example"), imap("gone.example")], "round-robin", reactor, interval=0)
        self.assertRaises(NoBackend, router.choose, "imap", "alice")
        self.successResultOf(router.check())
        self.assertEqual({router.choose("imap", "alice") for _ in range(4)}, {("10.0.0.5", 143)})
        self.assertEqual([(b["backend"], b["up"]) for b in router.status()],
                         [("good.example:143", True), ("gone.example:143", False)])

    def test_all_unresolvable(self) -> None:
        """When no name resolves there is no backend at all (rather than a name)."""
        router = BackendRouter([imap("gone.example")], "hash", ResolvingReactor(), interval=0)
        self.successResultOf(router.check())
        self.assertRaises(NoBackend, router.choose, "imap", "alice")

    def test_start_resolves_without_health_checks(self) -> None:
        """With interval 0, start-up resolves names and makes no TCP connection."""
        reactor = ResolvingReactor({"good.example": "10.0.0.5"})
        router = BackendRouter([imap("good.example"), imap("192.0.2.1")], "hash", reactor, interval=0)
        self.successResultOf(router.startService())
        self.assertEqual((reactor.lookups, reactor.tcpClients), (["good.example"], []))
        self.assertEqual(router.pools["imap"][0].address, "10.0.0.5")

    def test_re_resolved(self) -> None:
        """Each check resolves names again: a changed address is used from then on."""
        reactor = ResolvingReactor({"good.example": "10.0.0.5"})
        router = BackendRouter([imap("good.example")], "hash", reactor, interval=0)
        router.check()
        reactor.names["good.example"] = "10.0.0.6"
        router.check()
        self.assertEqual(router.choose("imap", "alice"), ("10.0.0.6", 143))


class HealthCheckTests(SynchronousTestCase):
    """The periodic TCP check marks backends down and up again."""

    def setUp(self) -> None:
        self.reactor = ResolvingReactor({"named.example": "10.0.0.5", "six.example": "2001:db8::9"})
        self.router = BackendRouter([imap("192.0.2.1"), imap("named.example", 993),
                                     Backend(protocol="pop3", address="six.example", port=110)],
                                    "round-robin", self.reactor, interval=10, timeout=2.5)

    def start(self, router: BackendRouter | None = None) -> Any:
        """Start the router and then its periodic checks, as the server does (gomail.web.service)."""
        router = router or self.router
        started = router.startService()
        self.periodic = router.health_checks()
        for service in self.periodic:
            service.startService()
        return started

    def stop(self) -> None:
        for service in self.periodic:
            service.stopService()
        self.router.stopService()

    def test_start_waits_for_first_check(self) -> None:
        """Start-up connects to every backend (by IP, with the timeout) and fires once all have answered."""
        started = self.start()
        self.assertNoResult(started)
        self.assertEqual(sorted((h, p, t) for h, p, _, t, _ in self.reactor.tcpClients),
                         [("10.0.0.5", 993, 2.5), ("192.0.2.1", 143, 2.5), ("2001:db8::9", 110, 2.5)])
        self.reactor.answer(up={"192.0.2.1", "10.0.0.5", "2001:db8::9"})
        self.assertIsNone(self.successResultOf(started))
        self.assertTrue(all(b["up"] for b in self.router.status()))
        self.stop()

    def test_down_then_up(self) -> None:
        """A refused connection marks a backend down until a later check reaches it."""
        self.start()
        self.reactor.answer(up={"192.0.2.1", "2001:db8::9"})
        self.assertEqual({self.router.choose("imap", "alice") for _ in range(4)}, {("192.0.2.1", 143)})
        self.reactor.advance(9)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.answer(up={"192.0.2.1", "10.0.0.5", "2001:db8::9"})), 3)
        self.assertEqual({self.router.choose("imap", "alice") for _ in range(4)},
                         {("192.0.2.1", 143), ("10.0.0.5", 993)})
        self.stop()

    def test_unresolvable_is_down_without_connecting(self) -> None:
        """A name that stops resolving marks its backend down, and no connection is tried for it."""
        self.start()
        self.reactor.answer(up={"192.0.2.1", "10.0.0.5", "2001:db8::9"})
        del self.reactor.names["named.example"]
        self.reactor.advance(10)
        self.assertEqual(sorted(h for h, _ in self.reactor.answer(up={"192.0.2.1", "2001:db8::9"})),
                         ["192.0.2.1", "2001:db8::9"])
        self.assertEqual([b["up"] for b in self.router.status()], [True, False, True])
        self.stop()

    def test_stop(self) -> None:
        """After stopService no more checks run."""
        self.start()
        self.reactor.answer()
        self.stop()
        self.reactor.advance(100)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_no_backends(self) -> None:
        """A router without backends starts without checking anything."""
        router = BackendRouter([], "hash", self.reactor, interval=10)
        self.assertIsNone(self.start(router))
        self.reactor.advance(100)
        self.assertEqual(self.reactor.tcpClients, [])


class SingleBackendTests(SynchronousTestCase):
    """A pool of one (or with one live backend) answers it for every user, whatever the strategy."""

    def test_pool_of_one(self) -> None:
        """Every user goes to the only backend, with the hash and with round-robin."""
        for strategy in ("hash", "round-robin"):
            router = BackendRouter([imap("192.0.2.1", 1143)], strategy, MemoryReactorClock(), interval=0)
            self.assertEqual({router.choose("imap", user) for user in USERS[:50]}, {("192.0.2.1", 1143)},
                             strategy)


class ReplaceTests(SynchronousTestCase):
    """replace(): the backends of a reloaded configuration."""

    def test_kept_backend_keeps_its_health_new_one_is_checked(self) -> None:
        """A backend kept stays down until its next check passes; a new one is chosen once checked; a removed one never."""
        reactor = ResolvingReactor({"new.example": "192.0.2.9"})
        router = BackendRouter([imap("192.0.2.1"), imap("192.0.2.2")], "hash", reactor, interval=10)
        router.check()
        reactor.answer(up={"192.0.2.2"})  # 192.0.2.1 is down
        router.replace([imap("192.0.2.1"), imap("new.example")], "round-robin")
        self.assertEqual(reactor.lookups, ["new.example"])
        self.assertEqual(sorted(reactor.answer(up={"192.0.2.9"})), [("192.0.2.1", 143), ("192.0.2.9", 143)])
        self.assertEqual(router.strategy, "round-robin")
        chosen = {router.choose("imap", user) for user in USERS[:20]}
        self.assertEqual(chosen, {("192.0.2.9", 143)})
