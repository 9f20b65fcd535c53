# -*- test-case-name: tests.test_backends -*-
"""
Which backend mail server nginx hands a login to.

A user's own assignment (C{gomail user backend set}) comes first; then, when a
plugin provides L{gomail.interfaces.IBackendStrategy}, its pick among the live
backends of the protocol (L{BackendRouter.pick}); otherwise (or when the plugin
has no usable answer) the configured pool for the protocol, by one of two
strategies:

- C{hash}: weighted rendezvous hashing of the user name, so a user always
  lands on the same backend, and adding or removing one backend moves only the
  users that belong to it;
- C{round-robin}: smooth weighted round robin (nginx's own algorithm).

nginx does no DNS lookups, so C{Auth-Server} must be an IP literal: backend
names are resolved at start and again at every health check, and a backend
whose name does not resolve, or whose port does not accept a TCP connection,
is marked down. When every backend of a protocol is down, all are candidates
again (better one more try than a certain refusal).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from gomail.configschema import Backend
from gomail.extension.runner import HookFailed
from gomail.servicekit import PeriodicService


class _ProbeFactory(Factory):
    """A connection that only checks the port accepts; quiet (no Starting/Stopping factory lines every interval)."""

    noisy = False
    protocol = Protocol


_PROBE = _ProbeFactory()


class NoBackend(Exception):
    """No usable backend for a login (none configured, or an assignment that is not an IP)."""


def ip_literal(host: str) -> str | None:
    """C{host} as a normalised IP literal, or None when it is a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def parse_assignment(value: str) -> tuple[str, int]:
    """
    A per-user backend, C{IP:PORT} or C{[IPv6]:PORT}.

    @raise ValueError: when it is not an IP literal and a port.
    """
    host, sep, port = value.rpartition(":")
    address = ip_literal(host)
    if not sep or address is None or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not IP:PORT (nginx needs an IP address, not a name)")
    return address, int(port)


@dataclass
class BackendState:
    """A configured backend with its resolved address and health."""

    config: Backend
    address: str | None = None  # IP literal, once resolved
    up: bool = True
    current_weight: int = 0  # smooth round robin
    key: bytes = field(default=b"")

    def __post_init__(self) -> None:
        self.address = ip_literal(self.config.address)
        self.key = f"{self.config.address}:{self.config.port}".encode()


class BackendRouter(Service):
    """Picks backends and keeps their health (a periodic TCP check when C{interval} > 0)."""

    log = Logger()

    def __init__(self, backends: Iterable[Backend], strategy: str, reactor: Any,
                 interval: float = 10.0, timeout: float = 2.0, plugin: tuple[str, Any] | None = None,
                 runner: Any = None) -> None:
        self.pools: dict[str, list[BackendState]] = {}
        for backend in backends:
            self.pools.setdefault(backend.protocol, []).append(BackendState(backend))
        self.strategy = strategy
        self.reactor = reactor
        self.interval = interval
        self.timeout = timeout
        #: (name, IBackendStrategy) of a plugin that picks backends, and the HookRunner it is called through.
        self.plugin, self.runner = plugin, runner

    def replace(self, backends: Iterable[Backend], strategy: str) -> Deferred:
        """
        Route to C{backends} from now on (a configuration reload): a backend
        kept keeps its health, a new one is checked at once (the returned
        Deferred fires when every backend has been checked again).
        """
        known = {state.config: state for pool in self.pools.values() for state in pool}
        pools: dict[str, list[BackendState]] = {}
        for backend in backends:
            pools.setdefault(backend.protocol, []).append(known.get(backend) or BackendState(backend))
        self.pools, self.strategy = pools, strategy
        return self.check()

    # -- choosing -------------------------------------------------------------

    def choose(self, protocol: str, user: str, assignment: str | None = None) -> tuple[str, int]:
        """
        The (IP, port) for C{user} logging in over C{protocol}.

        @raise NoBackend: nothing configured, or an unusable assignment.
        """
        if assignment:
            return parse_assignment(assignment)
        pool = [b for b in self.pools.get(protocol, ()) if b.address is not None]
        if not pool:
            raise NoBackend(f"no {protocol} backend is configured or resolvable")
        live = [b for b in pool if b.up] or pool
        if len(live) == 1:
            chosen = live[0]  # nothing to choose between: spare the hash (nginx asks once per login)
        elif self.strategy == "hash":
            chosen = self._by_hash(live, user)
        else:
            chosen = self._round_robin(live)
        return chosen.address, chosen.config.port  # type: ignore[return-value]

    async def pick(self, protocol: str, user: str, client: str | None,
                   assignment: str | None = None) -> tuple[str, int]:
        """
        L{choose}, asking the backend-strategy plugin first when there is one.

        The order: the user's own assignment (an operator's decision for that
        user, so it wins over any plugin), then the plugin's pick among the
        live backends of C{protocol} (asked through the plugins' runner, so
        bounded by C{plugins.timeout}), then the configured strategy. With no
        live backend the plugin is not asked (L{choose} then tries them all).

        A plugin that fails, times out, or names something that is not one of
        the live backends it was given falls back to the configured strategy
        (logged) rather than failing the login: the credentials were already
        found good, nginx must get an answer, and any live backend is a
        correct one (the plugin only expresses a preference), where a refused
        or "try again later" login is a real outage for the user.

        @raise NoBackend: as L{choose}.
        """
        if assignment or self.plugin is None or self.runner is None:
            return self.choose(protocol, user, assignment)
        live = [b for b in self.pools.get(protocol, ()) if b.address is not None and b.up]
        if live:
            name, strategy = self.plugin
            try:
                chosen = await self.runner.call(name, strategy.choose, user, protocol, client,
                                                [b.config for b in live])
            except HookFailed as e:
                self.log.error("plugin {plugin} could not choose a {protocol} backend ({kind}): the configured "
                               "strategy picks instead", plugin=name, protocol=protocol, kind=e.kind)
                chosen = None
            if chosen is not None:
                # Only a Backend compares: an odd object's own __eq__ is never run here.
                match = [b for b in live if type(chosen) is Backend and b.config == chosen]
                if match:
                    return match[0].address, match[0].config.port  # type: ignore[return-value]
                self.log.error("plugin {plugin} chose {chosen!r}, not one of the live {protocol} backends: "
                               "the configured strategy picks instead", plugin=name, chosen=chosen,
                               protocol=protocol)
        return self.choose(protocol, user, assignment)

    def login_ticket(self, protocol: str, address: str, port: int) -> bool:
        """
        Whether nginx logs in to the backend at C{address:port} with a login
        ticket (L{gomail.auth.tickets}): one of C{protocol}'s backends
        that is a gomail listener (C{loginTicket}).
        """
        return any(b.config.loginTicket and b.address == address and b.config.port == port
                   for b in self.pools.get(protocol, ()))

    @staticmethod
    def _by_hash(pool: list[BackendState], user: str) -> BackendState:
        def score(backend: BackendState) -> float:
            digest = hashlib.sha256(backend.key + b"\0" + user.encode("utf-8", "surrogatepass")).digest()
            # 52 bits and a half step: exactly representable and strictly inside (0, 1), so log() is
            # never 0 (with 53 bits the largest value, 2**53 - 0.5, would round up to 2**53).
            unit = ((int.from_bytes(digest[:8], "big") >> 12) + 0.5) / 2 ** 52
            return -backend.config.weight / math.log(unit)
        return max(pool, key=score)

    @staticmethod
    def _round_robin(pool: list[BackendState]) -> BackendState:
        total = 0
        best = pool[0]
        for backend in pool:
            backend.current_weight += backend.config.weight
            total += backend.config.weight
            if backend.current_weight > best.current_weight:
                best = backend
        best.current_weight -= total
        return best

    # -- health -----------------------------------------------------------------

    def startService(self) -> Deferred | None:  # type: ignore[override]
        """Check every backend once; start-up waits for it, so names are resolved before nginx asks."""
        super().startService()
        if not self.pools:
            return None
        return self.check()

    def health_checks(self) -> list[Service]:
        """The periodic checks, after the first one (none without backends or with interval 0): start after this."""
        if not self.pools or self.interval <= 0:
            return []
        return [PeriodicService("backend health checks", self.interval, self.check, self.reactor, now=False)]

    def check(self) -> Deferred:
        """Resolve every backend's name and try a TCP connection to it (or only resolve, with no interval)."""
        backends = [b for pool in self.pools.values() for b in pool]
        return gatherResults([Deferred.fromCoroutine(self._check(b)) for b in backends]).addCallback(lambda _: None)

    async def _check(self, backend: BackendState) -> None:
        name = backend.config.address
        if ip_literal(name) is None:
            try:
                backend.address = await self.reactor.resolve(name, timeout=(math.ceil(self.timeout),))
            except Exception as e:  # noqa: BLE001 - any resolver failure marks the backend down, named
                self._mark(backend, False, f"{name} does not resolve: {type(e).__name__}")
                return
        if self.interval <= 0:
            return
        address = backend.address or ""
        endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        endpoint = endpoint_type(self.reactor, address, backend.config.port, timeout=self.timeout)
        try:
            # the _PROBE factory's protocol: a plain Protocol
            protocol = cast(Protocol, await endpoint.connect(_PROBE))
        except Exception as e:  # noqa: BLE001 - any connect failure marks the backend down, named
            self._mark(backend, False, f"connection failed: {type(e).__name__}")
            return
        if protocol.transport is not None:
            protocol.transport.loseConnection()
        self._mark(backend, True, "reachable")

    def _mark(self, backend: BackendState, up: bool, why: str) -> None:
        if backend.up != up:
            self.log.warn("{protocol} backend {name}:{port} is {state}: {why}", protocol=backend.config.protocol,
                          name=backend.config.address, port=backend.config.port,
                          state="up" if up else "down", why=why)
        backend.up = up

    def status(self) -> list[dict[str, Any]]:
        """Every backend and whether it is up (for the health endpoint)."""
        return [{"protocol": b.config.protocol, "backend": f"{b.config.address}:{b.config.port}", "up": b.up}
                for pool in self.pools.values() for b in pool]
