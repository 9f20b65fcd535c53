# -*- test-case-name: tests.test_direct_integration,tests.test_dkim -*-
"""The agent for mail leaving the local domains, built from the configuration (for L{gomail.root})."""

from __future__ import annotations

from typing import Any

from gomail.configdelivery import dkim_keys
from gomail.configschema import Config
from gomail.delivery.connect import make_connector, smarthosts_from
from gomail.delivery.content import content_opener
from gomail.delivery.direct import DirectAgent
from gomail.delivery.dkimsign import DEFAULT_HEADERS, read_key
from gomail.delivery.mtasts import MTASTS, https_fetcher
from gomail.delivery.mx import MXResolver, dns_resolver
from gomail.delivery.relay import RelayAgent, Smarthost
from gomail.delivery.signing import SigningAgent
from gomail.smtp.address import canonical_domain
from gomail.spool.store import Spool


def route_agents(config: Config, reactor: Any, spool: Spool) -> list[tuple[str, Any]]:
    """(domain, agent) of each C{[[routes]]} entry: its own smarthost (signed as the rest, with dkim.enabled)."""
    connect = make_connector(reactor, config.smtp.hostname, config.delivery)
    routes = []
    for route in config.routes:
        smarthost = Smarthost(route.host, route.port, route.username, route.password, route.ssl, 0)
        routes.append((route.domain, _signed(config, spool, _relay_for(config, reactor, spool)([smarthost], connect))))
    return routes


def outbound_agent(config: Config, reactor: Any, spool: Spool) -> Any:
    """
    The agent for mail leaving the local domains: the smarthosts (forwardSMTP),
    each domain's MX (directDelivery.enabled), or None (everything stays
    local); with dkim.enabled, wrapped to sign each message once.
    """
    agent = _sender(config, reactor, spool)
    return None if agent is None else _signed(config, spool, agent)


def _signed(config: Config, spool: Spool, agent: Any) -> Any:
    """C{agent}, signing each message first when dkim.enabled."""
    if not config.dkim.enabled:
        return agent
    keys = [read_key(domain, selector, path) for _, domain, selector, path
            in dkim_keys(config.dkim, config.defaultUsername)]
    return SigningAgent(agent, keys, config.dkim.headersToSign or DEFAULT_HEADERS, config.dkim.signatureExpiry,
                        run=spool.run, update=spool.update)


def _relay_for(config: Config, reactor: Any, spool: Spool) -> Any:
    """C{relay_for(smarthosts, connect)}: a RelayAgent with the configured batching and timeouts."""
    settings = config.delivery

    def relay_for(smarthosts: list[Smarthost], connect: Any) -> RelayAgent:
        return RelayAgent(smarthosts, connect, reactor, config.batchSize, config.batchDelay, config.continueOnError,
                          idle_timeout=settings.connectionIdleTimeout, run=spool.run,
                          open_content=content_opener(spool.recent, spool.run),
                          processing_timeout=config.processingTimeout, data_timeout=settings.dataTimeout)

    return relay_for


def _sender(config: Config, reactor: Any, spool: Spool) -> Any:
    """The smarthost relay, the direct delivery agent, or None."""
    settings = config.delivery
    relay_for = _relay_for(config, reactor, spool)
    if config.forwardSMTP:
        return relay_for(smarthosts_from(config), make_connector(reactor, config.smtp.hostname, settings))
    direct = config.directDelivery
    if not direct.enabled:
        return None
    connect = make_connector(reactor, direct.ehloDomain or config.smtp.hostname, settings,
                             verify=not direct.insecureSkipVerify)
    resolver = dns_resolver(reactor, direct.dnsServers)
    mtasts = MTASTS(resolver, https_fetcher(), reactor, timeout=direct.dnsTimeout) if direct.mtaSts else None
    return DirectAgent(MXResolver(resolver, timeout=direct.dnsTimeout),
                       lambda smarthosts: relay_for(smarthosts, connect), port=direct.port,
                       retry_count=direct.retryCount, per_domain=direct.maxPerDomain,
                       tls_levels={canonical_domain(p.domain): p.level for p in direct.tlsPolicies},
                       mtasts=mtasts, clock=reactor, slot_timeout=config.processingTimeout)
