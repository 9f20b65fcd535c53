# -*- test-case-name: tests.test_admin_api -*-
"""Builds the admin side from the configuration: its context, app, listeners and periodic work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from gomail.admin.app import AdminApp, SecureHeaders
from gomail.admin.context import AdminContext, LoginRateLimit, Sessions
from gomail.admin.login import AdminLogin
from gomail.admin.sysconfig import SystemConfig
from gomail.admin.timeseries import sampler_of
from gomail.configschema import Config
from gomail.servicekit import ListeningService, PeriodicService
from gomail.web.guard import HostNames
from gomail.web.http import ConnectionCap, Guarded, LimitedSite, PeerAccess

#: How often expired sessions are deleted.
SESSION_PURGE_SECONDS = 3600.0


@dataclass(frozen=True)
class ServerParts:
    """The running server's parts the admin routes read and act on."""

    users: Any  # gomail.auth.users.SQLiteUserStore
    auth: Any  # gomail.auth.service.AuthParts
    spool: Any
    delivery: Any
    queue: Any  # gomail.control.server.QueueControl
    metrics: Any  # gomail.metrics.Metrics
    audit: Any  # gomail.auth.authlog.AuthLog, or None
    log_levels: Any  # twisted.logger.LogLevelFilterPredicate
    answerer: Any = None  # gomail.web.authhttp.AuthHTTPAnswerer, or None (auth_http off)


class SystemConfigLoader(Service):
    """Applies the stored system configuration at start (after the user database is open)."""

    def __init__(self, sysconfig: SystemConfig) -> None:
        self.sysconfig = sysconfig

    def startService(self) -> Deferred:  # type: ignore[override]
        super().startService()
        return Deferred.fromCoroutine(self.sysconfig.load())


def build_admin(config: Config, reactor: Any, server: ServerParts) -> tuple[AdminApp, list[Service]]:
    """The admin app and its services: the stored settings, the session purge, the listeners (when enabled)."""
    settings = config.admin
    db = server.users.pool.runInteraction
    sysconfig = SystemConfig(config, db, reactor, server)
    login = AdminLogin(db, server.auth.cpu.run, server.auth.state, reactor, sysconfig.lock_policy,
                       config.auth.bcryptRounds)
    ctx = AdminContext(config, reactor, db, Sessions(db, reactor, settings), login, sysconfig, server,
                       LoginRateLimit(reactor, settings.loginRateLimit))
    access = PeerAccess(settings.allowFrom, "", settings.trustedProxies)
    app = AdminApp(ctx, access)
    services: list[Service] = [SystemConfigLoader(sysconfig),
                               PeriodicService("admin session purge", SESSION_PURGE_SECONDS, ctx.sessions.purge,
                                               reactor),
                               sampler_of(ctx).service()]  # the dashboard's mail figures, every minute
    if settings.enabled:
        # The headers outermost: the guard's own refusals (421, 403) carry them too.
        tree = SecureHeaders(Guarded(app.resource(), access, HostNames(settings.hostnames),
                                     require_request_header=False, origins=settings.corsOrigins), settings.corsOrigins)
        site = ConnectionCap(LimitedSite(tree, reactor, settings.maxRequestBytes, settings.requestTimeout),
                             settings.maxConnections, settings.maxConnectionsPerIP)
        services += [ListeningService(reactor, description, site, "admin") for description in settings.listen]
    return app, services
