# -*- test-case-name: tests.test_service -*-
"""Builds the HTTP listeners from the configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from gomail.auth.authlog import AuthLog
from gomail.auth.backends import BackendRouter
from gomail.configschema import Backend, Config
from gomail.metrics import Metrics
from gomail.servicekit import ListeningService
from gomail.web.authapp import auth_http_site
from gomail.web.authhttp import AuthHTTPAnswerer
from gomail.web.guard import HostNames
from gomail.web.http import Guarded, LimitedSite, PeerAccess
from gomail.web.monitor import MonitorApp

log = Logger()


def default_backends(config: Config) -> tuple[Backend, ...]:
    """
    The configured backends, plus gomail's own listeners for the protocols
    that have none configured: the SMTP listener (C{smtpHost:smtpPort}), and,
    while C{[imap]} (C{[pop3]}) is enabled, the first tcp listener of its
    C{listen} (nginx then logs in there with a login ticket, accepted from
    the section's C{trustedProxies}: L{gomail.auth.tickets}).
    """
    backends = config.nginxAuth.backends
    if not any(b.protocol == "smtp" for b in backends):
        host = config.smtpHost if config.smtpHost not in ("0.0.0.0", "::", "") else "127.0.0.1"
        backends = (*backends, Backend(protocol="smtp", address=host, port=config.smtpPort))
    for protocol, section in (("imap", config.imap), ("pop3", config.pop3)):
        if not section.enabled or any(b.protocol == protocol for b in backends):
            continue
        own = next(filter(None, map(tcp_address, section.listen)), None)
        if own is not None:
            backends = (*backends, Backend(protocol=protocol, address=own[0], port=own[1], loginTicket=True))
    return backends


def tcp_address(description: str) -> tuple[str, int] | None:
    """
    The address nginx can reach a tcp (tcp6) server endpoint description at:
    its interface (loopback for a wildcard one) and port; None for other
    kinds, or port 0 (chosen at start: nothing to name beforehand).
    """
    kind, *parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    if kind not in ("tcp", "tcp6"):
        return None
    options = dict(part.split("=", 1) for part in parts if "=" in part)
    port = options.get("port") or next((part for part in parts if "=" not in part), "")
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    interface = options.get("interface", "::" if kind == "tcp6" else "")
    wildcard = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
    return wildcard.get(interface, interface), int(port)


@dataclass(frozen=True)
class HTTPInputs:
    """What the HTTP listeners report on and use: the parts built before them."""

    spool: Any
    delivery: Any
    relay: Any  # the RelayAgent when relaying, else None
    smtp: Any
    auth: Any  # gomail.auth.service.AuthParts
    writer_process: Any  # the spool writer's child process, or None
    audit: AuthLog | None  # the login audit log (nginxAuth.auditLog), or None
    #: (name, IBackendStrategy) of the plugin that picks nginx backends, or None (gomail.extension).
    backend_strategy: tuple[str, Any] | None = None
    runner: Any = None  # the plugins' HookRunner (gomail.extension.runner), or None


@dataclass(frozen=True)
class HTTPParts:
    """The HTTP side, built: the metrics, the monitor app (None when off), and its services in start order."""

    metrics: Metrics
    monitor: MonitorApp | None
    services: list[Service]
    #: nginx's backends (None when auth_http is off): a configuration reload replaces them.
    router: BackendRouter | None = None
    #: nginx auth_http's answerer (None when off): the admin's live settings change its wait policy.
    answerer: AuthHTTPAnswerer | None = None


def build_http(config: Config, reactor: Any, inputs: HTTPInputs) -> HTTPParts:
    """The monitor and auth_http listeners (as configured), with the metrics they share."""
    auth = inputs.auth
    metrics = Metrics(smtp=inputs.smtp, delivery=inputs.delivery, auth=auth.authenticator,
                      rate_limiter=auth.rate_limiter, writer_process=inputs.writer_process)
    services: list[Service] = []
    router = answerer = None
    if config.nginxAuth.enabled:
        settings = config.nginxAuth
        router = BackendRouter(default_backends(config), settings.strategy, reactor,
                               interval=settings.healthCheckInterval, timeout=settings.healthCheckTimeout,
                               plugin=inputs.backend_strategy, runner=inputs.runner)
        services += [router, *router.health_checks()]
        answerer = AuthHTTPAnswerer(settings, auth.portal, router, reactor, inputs.audit,
                                    tickets=getattr(auth, "tickets", None))
        site = auth_http_site(answerer, settings.path, PeerAccess(settings.allowFrom), reactor,
                              settings.maxRequestBytes, settings.requestTimeout)
        if not settings.sharedSecret:
            log.warn("nginxAuth.sharedSecret is empty: any allowed peer may ask auth_http (set it, and "
                     "auth_http_header in nginx)")
        services += [ListeningService(reactor, description, site, "nginx auth_http")
                     for description in settings.listen]
    app = None
    if config.enableHealthCheck:
        monitor = config.monitor
        app = MonitorApp(metrics, inputs.spool, inputs.delivery.failed, inputs.delivery, reactor, state=auth.state,
                         relay=inputs.relay, backends=router, queue_size=config.queueSize,
                         low_disk_mb=monitor.lowDiskSpaceMB, writer_process=inputs.writer_process)
        access = PeerAccess(monitor.allowFrom, monitor.bearerToken, monitor.trustedProxies)
        site = LimitedSite(Guarded(app.resource(), access, HostNames(monitor.hostnames)),
                           reactor, monitor.maxRequestBytes, monitor.requestTimeout)
        services += [ListeningService(reactor, description, site, "monitor") for description in monitor.listen]
    return HTTPParts(metrics, app, services, router, answerer)
