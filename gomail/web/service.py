# -*- test-case-name: tests.test_service -*-
"""Builds the HTTP listeners from the configuration."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
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
    The configured backends, plus gomail's own SMTP listener for nginx's SMTP
    logins when no smtp backend is configured.
    """
    backends = config.nginxAuth.backends
    if not any(b.protocol == "smtp" for b in backends):
        host = config.smtpHost if config.smtpHost not in ("0.0.0.0", "::", "") else "127.0.0.1"
        backends = (*backends, Backend(protocol="smtp", address=host, port=config.smtpPort))
    return backends


def build_http(config: Config, reactor: Any, root: Any, parent: MultiService) -> Metrics:
    """Attach the monitor and auth_http listeners (as configured) to C{parent}; return the metrics."""
    auth = root.auth
    relay = getattr(root.delivery.router, "relay", None)
    metrics = Metrics(smtp=root.smtp, delivery=root.delivery, auth=auth.authenticator,
                      rate_limiter=auth.rate_limiter, writer_process=root.writer_process)
    router = None
    if config.nginxAuth.enabled:
        settings = config.nginxAuth
        router = BackendRouter(default_backends(config), settings.strategy, reactor,
                               interval=settings.healthCheckInterval, timeout=settings.healthCheckTimeout)
        router.setServiceParent(parent)
        audit = None
        if settings.auditLog:
            audit = AuthLog(auth.users.pool, reactor, settings.auditRetentionDays)
            audit.setServiceParent(parent)
        root.auth_log = audit
        answerer = AuthHTTPAnswerer(settings, auth.portal, router, reactor, audit)
        factory = auth_http_site(answerer, settings.path, PeerAccess(settings.allowFrom), reactor,
                                 settings.maxRequestBytes, settings.requestTimeout)
        if not settings.sharedSecret:
            log.warn("nginxAuth.sharedSecret is empty: any allowed peer may ask auth_http (set it, and "
                     "auth_http_header in nginx)")
        for description in settings.listen:
            ListeningService(reactor, description, factory, "nginx auth_http").setServiceParent(parent)
    if config.enableHealthCheck:
        monitor = config.monitor
        app = MonitorApp(metrics, root.spool, root.delivery.failed, root.delivery, reactor, state=auth.state,
                         relay=relay, backends=router, queue_size=config.queueSize,
                         low_disk_mb=monitor.lowDiskSpaceMB, writer_process=root.writer_process)
        root.monitor = app
        access = PeerAccess(monitor.allowFrom, monitor.bearerToken, monitor.trustedProxies)
        site = LimitedSite(Guarded(app.resource(), access, HostNames(monitor.hostnames)),
                           reactor, monitor.maxRequestBytes, monitor.requestTimeout)
        for description in monitor.listen:
            ListeningService(reactor, description, site, "monitor").setServiceParent(parent)
    return metrics
