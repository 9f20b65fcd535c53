# -*- test-case-name: tests.test_service -*-
"""
The composition root: builds every part from the configuration, once, with
constructor arguments, and the root service that starts them in order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
)

import gomail
from gomail.admin.service import ServerParts, build_admin
from gomail.admin.sysconfig import LIVE_KEYS
from gomail.auth.aliases import AliasStore
from gomail.auth.authlog import AuthLog
from gomail.auth.service import AuthParts, build_auth
from gomail.configload import warnings as config_warnings
from gomail.configschema import Config
from gomail.control.lock import SpoolLock
from gomail.control.server import ControlService, QueueControl
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.maildir import MaildirDelivery
from gomail.delivery.outbound import outbound_agent, route_agents
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.extension.reloading import PluginReloader
from gomail.extension.runner import plugin_metrics
from gomail.extension.smtphooks import SMTPHooks
from gomail.extension.wiring import PluginParts, build_plugins, plugin_services
from gomail.interfaces import ISpoolWriter
from gomail.logjson import json_lines_observer
from gomail.logtext import classic_observer
from gomail.mailaccess.notify import MailboxNotices
from gomail.mailaccess.quota import MailboxQuota, QuotaCounter
from gomail.plugin import ServiceContext
from gomail.reload import ConfigReloader
from gomail.servicekit import PeriodicService, SequentialMultiService, ThreadPoolService
from gomail.signals import SignalService
from gomail.smtp.policy import RelayPolicy, local_domains, own_domain
from gomail.smtp.recipients import LocalRecipients
from gomail.smtp.server import SMTPServer, SMTPService
from gomail.spool.jobs import SpoolFiles
from gomail.spool.process import WriterProcess, WriterSpec
from gomail.spool.service import SpoolService
from gomail.spool.store import Spool
from gomail.spool.writer import BatchWriter
from gomail.tls import server_context
from gomail.web.service import HTTPInputs, HTTPParts, build_http

#: Local Maildir deliveries in flight at once.
LOCAL_CONCURRENCY = 64
#: Removed messages' files kept for reuse by new commits (gomail.spool.spares).
SPARE_FILES = 256
#: Memory for the content of just-committed messages, read by their relay (see gomail.spool.recent).
RECENT_CONTENT_BYTES = 16 * 1024 * 1024

log = Logger()


@dataclass(frozen=True)
class Parts:
    """Every part of a running server, built once by L{build_service}; what tests and the services share."""

    spool: Spool
    writer_process: WriterProcess | None  # the spool writer's child (None with spool.writerProcess = false)
    delivery: DeliveryQueue
    relay: Any  # the RelayAgent (forwardSMTP) or DirectAgent (directDelivery); None: everything stays local
    auth: AuthParts
    smtp: SMTPServer
    auth_log: AuthLog | None  # the login audit log (nginxAuth.auditLog), shared by SMTP AUTH and auth_http
    http: HTTPParts
    log_levels: LogLevelFilterPredicate  # logging.level (SIGHUP changes it)
    admin: Any = None  # the admin app (gomail.admin.app.AdminApp)


class GomailService(SequentialMultiService):
    """
    The root service. Children start in the order given (I/O pool, spool
    recovery, delivery, listeners) and stop in reverse (listeners and SMTP
    drain first, the I/O pool last). A start-up failure is handed to
    C{on_fatal}.

    @param text_log_file: where twistd would write text logs (None: not run
        by twistd, or JSON logs); they are then written there by gomail's
        faster formatter of the same format.
    """

    log = Logger()

    def __init__(self, config: Config, parts: Parts, children: Iterable[Service],
                 on_fatal: Callable[[Any], None] | None = None, text_log_file: Any = None) -> None:
        super().__init__()
        self.config = config
        self.parts = parts
        self.on_fatal = on_fatal or (lambda failure: None)
        self.text_log_file = text_log_file
        for child in children:
            child.setServiceParent(self)

    @property
    def spool(self) -> Spool:
        return self.parts.spool

    @property
    def writer_process(self) -> WriterProcess | None:
        return self.parts.writer_process

    @property
    def delivery(self) -> DeliveryQueue:
        return self.parts.delivery

    @property
    def auth(self) -> AuthParts:
        return self.parts.auth

    @property
    def smtp(self) -> SMTPServer:
        return self.parts.smtp

    @property
    def auth_log(self) -> AuthLog | None:
        return self.parts.auth_log

    @property
    def metrics(self) -> Any:
        return self.parts.http.metrics

    @property
    def monitor(self) -> Any:
        return self.parts.http.monitor

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for an ILogObserver before starting to log.
        if not hasattr(parent, "setComponent"):
            return
        if self.config.logging.format == "json":
            observer = json_lines_observer(_log_file(self.config.logging.file))
        elif self.text_log_file is not None:
            observer = classic_observer(self.text_log_file)
        else:
            return
        # logging.level: the predicate is shared with the SIGHUP reloader, which may change it.
        parent.setComponent(ILogObserver, FilteringLogObserver(observer, [self.parts.log_levels]))

    def startService(self) -> Deferred:  # type: ignore[override]
        self.log.info("gomail {version} starting", version=gomail.__version__)
        for warning in config_warnings(self.config):
            self.log.warn("configuration: {warning}", warning=warning)
        d = super().startService()
        d.addCallbacks(self._started, self._start_failed)
        return d

    def _started(self, _: Any) -> None:
        self.log.info("gomail ready")

    def _start_failed(self, failure: Any) -> None:
        self.log.critical("gomail could not start: {error}", error=failure.getErrorMessage())
        self.on_fatal(failure)


def _default_user(config: Config) -> str:
    """The canonical name of the Go relay's C{defaultUsername} ("" when none is set)."""
    from gomail.auth.names import canonical_username

    try:
        return canonical_username(config.defaultUsername) if config.defaultUsername else ""
    except ValueError:
        return ""  # not a usable name: AuthService's start says so


def _log_file(path: str) -> Any:
    return sys.stdout if not path else open(path, "a", encoding="utf-8")


@dataclass(frozen=True)
class Writers:
    """
    The spool's two writers (L{ISpoolWriter}): one for commits (what SMTP
    clients wait on), one for Maildir copies and removals, so those never
    delay a commit; the files their jobs share in this process; the writer
    process (or None); and the services to start, in order.
    """

    commit: ISpoolWriter
    mailbox: ISpoolWriter
    files: SpoolFiles
    process: WriterProcess | None
    services: list[Service]


def _writers(config: Config, reactor: Any) -> Writers:
    """Two lanes of one writer process (gomail.spool.process), or with spool.writerProcess = false two threads."""
    directory = config.spool.directory
    if config.spool.writerProcess:
        spec = WriterSpec(spool_directory=directory, spare_files=SPARE_FILES, fsync_threads=config.spool.ioThreads)
        process = WriterProcess(reactor, spec)
        # The spares are the child's: this process has none to offer.
        return Writers(process.lane("commit"), process.lane("mailbox"), SpoolFiles(directory), process, [process])
    files = SpoolFiles(directory, spare_files=SPARE_FILES)
    writer = BatchWriter(reactor, files, fsync_threads=config.spool.ioThreads)
    mailbox_writer = BatchWriter(reactor, files, fsync_threads=config.spool.ioThreads, name="gomail-mailbox-writer")
    # No writer process holds the spool's lock: this process does, before its writers start.
    return Writers(writer, mailbox_writer, files, None, [SpoolLock(reactor, directory), writer, mailbox_writer])


def _delivery(config: Config, reactor: Any, spool: Spool, mailbox_writer: ISpoolWriter,
              plugins: PluginParts, quota: MailboxQuota, notices: MailboxNotices) -> tuple[DeliveryQueue, Any]:
    """The delivery queue: local domains (or everything) to the Maildirs, the rest to the smarthosts or MX."""
    spool.removal_writer = mailbox_writer
    mailbox = MaildirDelivery(spool.path("mailbox"), config.smtp.hostname, mailbox_writer, quota=quota,
                              notices=notices)
    settings = config.delivery
    relay = outbound_agent(config, reactor, spool)
    if relay is not None:
        router = Router(mailbox, relay, local_domains(config.smtp.localDomains, config.smtp.hostname),
                        routes=[*route_agents(config, reactor, spool), *plugins.routes])
        workers = config.workerCount
    else:
        router = Router(mailbox, routes=[*route_agents(config, reactor, spool), *plugins.routes])
        # Local copies are cheap and batch well in the writer: more at once
        # than workerCount (which is sized for remote deliveries).
        workers = max(config.workerCount, LOCAL_CONCURRENCY)
    policy = RetryPolicy(initial=settings.retryInitialDelay, factor=settings.retryBackoffFactor,
                         maximum=settings.retryMaxDelay, jitter=settings.retryJitter, max_age=settings.maxQueueAge)
    queue = DeliveryQueue(spool, router, reactor, workers, processing_timeout=config.processingTimeout,
                          policy=policy, failed=FailedStore(spool, reactor), hostname=config.smtp.hostname,
                          delay_warning=settings.delayWarning)
    if plugins.events is not None:
        queue.events = plugins.events
        spool.add_listener(plugins.events.queued)
    return queue, relay


def _failed_retry(config: Config, reactor: Any, delivery: DeliveryQueue) -> list[Service]:
    """The periodic retry of the failed store (delivery.failedRetryInterval; none at 0)."""
    interval = config.delivery.failedRetryInterval
    if interval <= 0:
        return []
    return [PeriodicService("failed-store retry", interval, delivery.failed.retry, reactor, now=False)]


def _recipients(config: Config, reactor: Any, policy: RelayPolicy, auth: AuthParts,
                quota: MailboxQuota) -> LocalRecipients:
    """Who exists in the local domains: the user store's users, its aliases, postmaster@ and abuse@."""
    domains = ", ".join(sorted(policy.local_domains))
    if config.smtp.verifyRecipients:
        log.info("recipients in the local domains ({domains}) must be users or aliases "
                 "(smtp.verifyRecipients)", domains=domains)
    else:
        log.warn("smtp.verifyRecipients = false: any address in the local domains ({domains}) "
                 "is accepted", domains=domains)
    return LocalRecipients(policy, own_domain(config.smtp.hostname), config.smtp.postmaster, users=auth.users,
                           aliases=AliasStore(auth.users.pool, reactor, config.auth.userRefresh),
                           verify=config.smtp.verifyRecipients, quota=quota)


def _smtp(config: Config, reactor: Any, spool: Spool, auth: AuthParts, audit: AuthLog | None,
          hooks: SMTPHooks, quota: MailboxQuota) -> SMTPServer:
    """The SMTP sessions' server: relay policy, TLS, AUTH through the portal, recipients, audit."""
    tls = server_context(config.smtp.tlsCertificate, config.smtp.tlsPrivateKey, config.dataDir,
                         config.smtp.hostname)
    domains = local_domains(config.smtp.localDomains, config.smtp.hostname)
    policy = RelayPolicy(config.smtp.trustedNetworks, domains, require_auth=config.security.requireAuth,
                         allow_local_only=config.security.allowLocalOnly)
    return SMTPServer(config.smtp, policy, spool, reactor, tls, queue_size=config.queueSize,
                      log_envelopes=config.security.logAllEmails, portal=auth.portal,
                      rate_limiter=auth.rate_limiter, auth_settings=config.auth,
                      blacklist=auth.authenticator.blacklist, default_user=_default_user(config),
                      recipients=_recipients(config, reactor, policy, auth, quota), users=auth.users, audit=audit,
                      hooks=hooks)


def build_service(config: Config, reactor: Any, on_fatal: Callable[[Any], None] | None = None,
                  text_log_file: Any = None, reload_config: Callable[[], Config] | None = None) -> GomailService:
    """
    Build the whole server from a loaded configuration. Nothing listens or
    touches the spool until the returned service is started.

    @param on_fatal: called with the failure when the start fails.
    @param text_log_file: see L{GomailService}.
    @param reload_config: loads the configuration again (on SIGHUP, see
        L{gomail.reload}); None: SIGHUP is logged and ignored.
    @raise gomail.tls.TLSConfigError: for an unusable certificate or key.
    @raise gomail.extension.loader.PluginError: for a plugin that cannot be loaded or built.
    """
    plugins = build_plugins(config, reactor)
    log_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(config.logging.level))
    io = ThreadPoolService(reactor, "gomail-io", config.spool.ioThreads)
    writers = _writers(config, reactor)
    writer_process = writers.process
    spool = Spool(config.spool.directory, reactor, io.run, writer=writers.commit, files=writers.files,
                  min_free_bytes=config.spool.minFreeSpaceMB * 1024 * 1024,
                  recent_content_bytes=RECENT_CONTENT_BYTES)
    # imap.quotaMB, counted once for IMAP, local delivery and RCPT (gomail.mailaccess.quota).
    quota = MailboxQuota(spool.path("mailbox"), config.imap.quotaMB * 1024 * 1024, QuotaCounter(spool.run, reactor))
    notices = MailboxNotices()  # local delivery tells IMAP's IDLE sessions (gomail.mailaccess.notify)
    delivery, relay = _delivery(config, reactor, spool, writers.mailbox, plugins, quota, notices)
    auth, auth_services = build_auth(config, reactor, plugins.auth_sources, plugins.runner)
    # SMTP AUTH and auth_http write their logins to one audit table (nginxAuth.auditLog).
    audit = None
    if config.nginxAuth.auditLog:
        audit = AuthLog(auth.users.pool, reactor, config.nginxAuth.auditRetentionDays)
    smtp = _smtp(config, reactor, spool, auth, audit, plugins.smtp_hooks, quota)
    smtp.xclient.sources = auth.authenticator.sources  # nginx's SMTP proxy names plugin-source users too
    http = build_http(config, reactor, HTTPInputs(spool=spool, delivery=delivery, relay=relay, smtp=smtp,
                                                  auth=auth, writer_process=writer_process, audit=audit,
                                                  backend_strategy=plugins.backend_strategy,
                                                  runner=plugins.runner))
    if len(plugins.plugins):
        http.metrics.registry.register(plugin_metrics(plugins.runner, plugins.plugins))
    queue_control = QueueControl(spool, delivery, delivery.failed)
    admin, admin_services = build_admin(config, reactor, ServerParts(
        users=auth.users, auth=auth, spool=spool, delivery=delivery, queue=queue_control, metrics=http.metrics,
        audit=audit, log_levels=log_levels, answerer=http.answerer))
    children: list[Service] = [
        io, *writers.services, SpoolService(spool, delivery), delivery, *_failed_retry(config, reactor, delivery),
        # After recovery and delivery (stopped before them): `gomail queue` changes go through this server.
        ControlService(reactor, queue_control),
        *auth_services, *([audit] if audit is not None else []),
        SMTPService(smtp, reactor, config.smtp.listen, config.smtp.implicitTlsListen),
        *plugin_services(plugins, ServiceContext(reactor, config, auth.portal, spool, auth.users, audit, quota,  # type: ignore[list-item]
                                                 notices)),
        SignalService(reactor, None if reload_config is None else ConfigReloader(
            config, reload_config, rate_limiter=auth.rate_limiter, lockout=auth.authenticator.lockout,
            router=http.router, log_levels=log_levels,
            # The values stored through the admin API win over the file's (gomail.admin.sysconfig).
            after_reload=admin.ctx.sysconfig.reloaded, live_keys=[key for key in LIVE_KEYS if "." in key],
            plugins=PluginReloader(plugins, config.plugins, reactor, config.smtp.hostname, config.dataDir))),
        # HTTP last: it reports on everything above, and stops first.
        *http.services, *admin_services,
    ]
    parts = Parts(spool=spool, writer_process=writer_process, delivery=delivery, relay=relay, auth=auth,
                  smtp=smtp, auth_log=audit, http=http, log_levels=log_levels, admin=admin)
    return GomailService(config, parts, children, on_fatal, text_log_file)
