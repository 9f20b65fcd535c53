# -*- test-case-name: tests.test_direct_delivery -*-
"""
Direct delivery (the Go relay's C{directDelivery}): each recipient domain's
mail goes to that domain's mail exchangers (L{gomail.delivery.mx}) instead
of a smarthost.

Per attempt and domain: the MX hosts are looked up (answers cached for
their TTL), the first C{retryCount} of them in preference order are the
destinations, each of their addresses in turn; the domain's recipients go
in batches over reused connections exactly as to a smarthost, through a
L{RelayAgent} of that domain (its failover is the next address, then the
next MX). A domain that takes no mail bounces its recipients (null MX
C{556 5.1.10}, NXDOMAIN C{550 5.1.2}); a DNS failure defers them.

TLS is opportunistic: STARTTLS when the MX offers it, its certificate
checked against the MX host name unless C{insecureSkipVerify}; a handshake
(or verification) failure is tried again on the same address without TLS,
since nothing here requires TLS (what Postfix calls the C{may} level),
and logged as the failure of the TLS destination.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    TimeoutError,
)
from twisted.logger import Logger
from zope.interface import implementer

from gomail.delivery.mtasts import MTASTS
from gomail.delivery.mx import Destination, DNSUnavailable, MXResolver, NoMail
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient

Reply = tuple[int, str]
#: Destination domains whose relay (idle connections, health) is kept.
MAX_DOMAINS = 1000


def smarthosts_for(destinations: list[Destination], port: int, limit: int, level: str = "may") -> list[Smarthost]:
    """
    The connections to try, in order: each address of the first C{limit}
    MX hosts, as the TLS C{level} says (L{gomail.configdelivery.TLSPolicy}):
    C{may}: with STARTTLS (checked against the MX name unless
    insecureSkipVerify) and then, for the same address, without; C{none}:
    without; C{encrypt}: TLS required, not checked; C{verify}: TLS required
    and checked.
    """
    found = []
    for destination in destinations[:limit]:
        for address in destination.addresses:
            name = destination.host
            if level == "none":
                found.append(Smarthost(address, port, tls_name=name, plaintext=True))
            elif level in ("encrypt", "verify"):
                found.append(Smarthost(address, port, tls_name=name, require_tls=True, verify=level == "verify"))
            else:
                found.append(Smarthost(address, port, tls_name=name))
                found.append(Smarthost(address, port, tls_name=name, plaintext=True))
    return [dataclasses.replace(s, priority=index) for index, s in enumerate(found)]


def literal_destination(domain: str) -> list[Destination] | None:
    """An address literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}) is its own destination (no DNS); else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        raise NoMail("5.1.2", f"{domain} is not an address") from None
    return [Destination(address, 0, (address,))]


@implementer(IDeliveryAgent)
class DirectAgent:
    """
    Delivers to each recipient domain's MX (see the module docstring).

    @param relay_for: builds the L{RelayAgent} for a list of destinations
        (the server's own connector, batch size, timeouts...).
    """

    name = "mx"
    idempotent = False
    log = Logger()

    def __init__(self, resolver: MXResolver, relay_for: Callable[[list[Smarthost]], RelayAgent],
                 port: int = 25, retry_count: int = 3, per_domain: int = 5,
                 tls_levels: dict[str, str] | None = None, mtasts: MTASTS | None = None,
                 clock: Any = None, slot_timeout: float = 300.0) -> None:
        self.resolver, self.relay_for = resolver, relay_for
        #: MTA-STS policies (None: not asked); a domain's own TLS level (tls_levels) comes first.
        self.mtasts = mtasts
        #: How long an attempt waits for one of its domain's maxPerDomain slots (then 451).
        self.clock, self.slot_timeout = clock, slot_timeout
        #: TLS level by recipient domain (directDelivery.tlsPolicies); others: may.
        self.tls_levels = tls_levels or {}
        self.port, self.retry_count = port, retry_count
        #: Attempts to one domain at a time (a semaphore per domain, dropped when unused).
        self.per_domain = per_domain
        self._gates: dict[str, DeferredSemaphore] = {}
        self._relays: dict[str, tuple[frozenset[Smarthost], RelayAgent]] = {}
        self._retired_duplicates = 0
        self._retired_tls: dict[str, int] = {}

    @property
    def attempt_grace(self) -> float:
        """As L{RelayAgent.attempt_grace}: the wait for a final dot's reply is not cut."""
        return RelayAgent.GRACE_MARGIN + max((relay.data_timeout for _, relay in self._relays.values()),
                                             default=600.0)

    @property
    def possible_duplicates(self) -> int:
        """Final dots whose reply never came, over every destination."""
        return self._retired_duplicates + sum(relay.possible_duplicates for _, relay in self._relays.values())

    @property
    def tls_sessions(self) -> dict[str, int]:
        """Sessions opened, by TLS state, over every destination."""
        total: dict[str, int] = dict(self._retired_tls)
        for _, relay in self._relays.values():
            for state, count in relay.tls_sessions.items():
                total[state] = total.get(state, 0) + count
        return total

    def failing(self) -> list[str]:
        """Nothing: an MX of someone else's domain failing says nothing about this server's health."""
        return []

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        by_domain: dict[str, list[Recipient]] = {}
        for recipient in recipients:
            by_domain.setdefault(recipient.address.rpartition("@")[2].lower().rstrip("."), []).append(recipient)
        attempts = [Deferred.fromCoroutine(self._domain_safe(envelope, message_path, domain, group))
                    for domain, group in by_domain.items()]

        def merge(results: list[tuple[bool, dict[str, Reply]]]) -> dict[str, Reply]:
            merged: dict[str, Reply] = {}
            for _, result in results:
                merged.update(result)
            return merged

        def cancel(_: Deferred) -> None:
            # The queue cut the attempt: domains still under way answer 451 (_domain_safe); those done keep
            # their results, so a domain that took the message is not sent it again.
            for attempt in attempts:
                if not attempt.called:
                    attempt.cancel()

        done: Deferred = Deferred(cancel)
        DeferredList(attempts).addCallback(merge).chainDeferred(done)
        return done

    async def _domain_safe(self, envelope: Envelope, path: str, domain: str,
                           recipients: list[Recipient]) -> dict[str, Reply]:
        """One domain's results; its failure or cancellation is a 451 for its recipients only."""
        try:
            return await self._domain(envelope, path, domain, recipients)
        except CancelledError:
            reply: Reply = (451, f"4.4.7 Delivery attempt to {domain} cut short")
        except Exception as e:  # noqa: BLE001 -- one domain's fault never costs the others their results
            self.log.failure("{queue_id}: delivery to {domain} failed", queue_id=envelope.id, domain=domain)
            reply = (451, f"4.3.0 Local delivery fault: {type(e).__name__}")
        return {r.address: reply for r in recipients}

    async def _domain(self, envelope: Envelope, path: str, domain: str,
                      recipients: list[Recipient]) -> dict[str, Reply]:
        try:
            destinations = literal_destination(domain) or await self.resolver.destinations(domain)
        except NoMail as e:
            code = 556 if e.status == "5.1.10" else 550
            self.log.info("{queue_id}: {domain} takes no mail: {code} {status} {text}", queue_id=envelope.id,
                          domain=domain, code=code, status=e.status, text=e.text)
            return {r.address: (code, f"{e.status} {e.text}") for r in recipients}
        except DNSUnavailable as e:
            return {r.address: (451, f"4.4.3 {e}") for r in recipients}
        level = self.tls_levels.get(domain)
        if level is None and self.mtasts is not None:
            policy = await self.mtasts.policy(domain)
            if policy is not None and policy.mode != "none":
                allowed = [d for d in destinations if policy.allows(d.host)]
                if policy.mode == "enforce":
                    if not allowed:
                        self.log.warn("{queue_id}: no MX of {domain} matches its MTA-STS policy ({mx}): deferred",
                                      queue_id=envelope.id, domain=domain, mx=", ".join(policy.mx))
                        return {r.address: (451, f"4.7.5 No MX of {domain} matches its MTA-STS policy")
                                for r in recipients}
                    destinations, level = allowed, "verify"
                elif len(allowed) < len(destinations):
                    self.log.info("MTA-STS testing policy of {domain} would refuse MX {hosts}", domain=domain,
                                  hosts=", ".join(d.host for d in destinations if d not in allowed))
        relay = self._relay(domain, smarthosts_for(destinations, self.port, self.retry_count, level or "may"))
        gate = self._gates.get(domain)
        if gate is None:
            gate = self._gates[domain] = DeferredSemaphore(self.per_domain)
        waiting = gate.acquire()
        if self.clock is not None:
            waiting.addTimeout(self.slot_timeout, self.clock)
        try:
            await waiting
        except TimeoutError:
            return {r.address: (451, f"4.4.5 Too many deliveries to {domain} under way, try again later")
                    for r in recipients}
        try:
            return await relay.deliver(envelope, path, recipients)
        finally:
            gate.release()
            if gate.tokens == gate.limit and not gate.waiting:
                self._gates.pop(domain, None)

    def _relay(self, domain: str, smarthosts: list[Smarthost]) -> RelayAgent:
        """
        The domain's relay, kept (with its idle connections and health) while
        its destinations stay the same set (equal-preference MX hosts come in
        a new order each time: that alone does not replace it). At most
        L{MAX_DOMAINS} are kept, the least recently used closed first.
        """
        key = frozenset(dataclasses.replace(s, priority=0) for s in smarthosts)
        known = self._relays.pop(domain, None)
        if known is not None and known[0] == key:
            self._relays[domain] = known  # most recently used last
            return known[1]
        if known is not None:
            self._retire(known[1])
        relay = self.relay_for(smarthosts)
        self._relays[domain] = (key, relay)
        while len(self._relays) > MAX_DOMAINS:
            oldest = next(iter(self._relays))
            self._retire(self._relays.pop(oldest)[1])
        return relay

    def _retire(self, relay: RelayAgent) -> None:
        self._retired_duplicates += relay.possible_duplicates
        for state, count in relay.tls_sessions.items():
            self._retired_tls[state] = self._retired_tls.get(state, 0) + count
        relay.close()

    def close(self) -> None:
        """Close every idle connection (at shutdown)."""
        for _, relay in self._relays.values():
            relay.close()

