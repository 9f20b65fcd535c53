# -*- test-case-name: tests.test_delivery_queue -*-
"""Which delivery agent gets which recipient of a queued message."""

from __future__ import annotations

from collections.abc import Iterable

from gomail.interfaces import IDeliveryAgent
from gomail.smtp.address import canonical_domain
from gomail.spool.envelope import Recipient


class Router:
    """
    Picks the agent for each recipient: local domains to the mailbox, the rest
    to the relay (if any). Envelope addresses are canonical (see
    L{gomail.smtp.address}), so their domains are compared as they are; only
    the configured C{local_domains} are canonicalised here.
    """

    def __init__(self, local: IDeliveryAgent, relay: IDeliveryAgent | None = None,
                 local_domains: Iterable[str] = frozenset(),
                 routes: Iterable[tuple[str, IDeliveryAgent]] = ()) -> None:
        self.local, self.relay = local, relay
        self.local_domains = frozenset(canonical_domain(d) for d in local_domains)
        #: Plugins' agents by recipient domain (IRoutedDeliveryAgent): asked before the built-in ones.
        self.routes = {canonical_domain(domain): agent for domain, agent in routes}

    def route(self, recipients: list[Recipient]) -> list[tuple[IDeliveryAgent, list[Recipient]]]:
        if self.routes:
            return self._route_plugins(recipients)
        if self.relay is None:
            return [(self.local, recipients)] if recipients else []
        local = [r for r in recipients if self._is_local(r.address.rpartition("@")[2])]
        remote = [r for r in recipients if r not in local]
        return [(agent, group) for agent, group in ((self.local, local), (self.relay, remote)) if group]

    def _route_plugins(self, recipients: list[Recipient]) -> list[tuple[IDeliveryAgent, list[Recipient]]]:
        groups: dict[int, tuple[IDeliveryAgent, list[Recipient]]] = {}
        rest = []
        for recipient in recipients:
            agent = self.routes.get(recipient.address.rpartition("@")[2].lower().rstrip("."))
            if agent is None:
                rest.append(recipient)
            else:
                groups.setdefault(id(agent), (agent, []))[1].append(recipient)
        routes, self.routes = self.routes, {}
        try:
            built_in = self.route(rest)
        finally:
            self.routes = routes
        return [*groups.values(), *built_in]

    def _is_local(self, domain: str) -> bool:
        # Envelopes queued before addresses were canonical at parse time may
        # still hold "Example.COM.": they must not be relayed for that.
        return domain in self.local_domains or domain.lower().rstrip(".") in self.local_domains


__all__ = ["Router"]
