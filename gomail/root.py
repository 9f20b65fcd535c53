# -*- test-case-name: tests.test_service -*-
"""The composition root: builds every part from the configuration and wires them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger

import gomail
from gomail.auth.aliases import AliasStore
from gomail.auth.authlog import AuthLog
from gomail.auth.service import AuthParts, build_auth
from gomail.configload import warnings as config_warnings
from gomail.configschema import Config
from gomail.control.lock import SpoolLock
from gomail.control.server import ControlService, QueueControl
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.connect import make_connector, smarthosts_from
from gomail.delivery.content import content_opener
from gomail.delivery.failed import FailedStore
from gomail.delivery.maildir import MaildirDelivery
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.relay import RelayAgent
from gomail.delivery.router import Router
from gomail.logjson import json_lines_observer
from gomail.logtext import classic_observer
from gomail.servicekit import SequentialMultiService, ThreadPoolService
from gomail.signals import SignalService
from gomail.smtp.policy import RelayPolicy, local_domains, own_domain
from gomail.smtp.recipients import LocalRecipients
from gomail.smtp.server import SMTPServer, SMTPService
from gomail.spool.process import WriterProcess, WriterSpec
from gomail.spool.service import SpoolService
from gomail.spool.store import Spool
from gomail.spool.writer import BatchWriter
from gomail.tls import server_context
from gomail.web.service import build_http

#: Local Maildir deliveries in flight at once.
LOCAL_CONCURRENCY = 64
#: Removed messages' files kept for reuse by new commits (gomail.spool.spares).
SPARE_FILES = 256
#: Memory for the content of just-committed messages, read by their relay (see gomail.spool.recent).
RECENT_CONTENT_BYTES = 16 * 1024 * 1024


class GomailService(SequentialMultiService):
    """
    The root service. Children start in order (I/O pool, spool recovery,
    delivery, listeners) and stop in reverse (listeners and SMTP drain first,
    the I/O pool last). A start-up failure is handed to C{on_fatal}.
    """

    log = Logger()

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.on_fatal: Callable[[Any], None] = lambda failure: None
        self.spool: Spool | None = None
        #: The spool writer's child process (None with spool.writerProcess = false).
        self.writer_process: WriterProcess | None = None
        self.smtp: SMTPServer | None = None
        self.delivery: DeliveryQueue | None = None
        self.auth: AuthParts | None = None
        self.metrics: Any = None
        self.monitor: Any = None
        self.auth_log: Any = None
        #: Where twistd would write text logs (set by the twistd plugin): they are then
        #: written there by gomail's faster formatter of the same format.
        self.text_log_file: Any = None

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for an ILogObserver before starting to log.
        if not hasattr(parent, "setComponent"):
            return
        if self.config.logging.format == "json":
            parent.setComponent(ILogObserver, json_lines_observer(_log_file(self.config.logging.file)))
        elif self.text_log_file is not None:
            parent.setComponent(ILogObserver, classic_observer(self.text_log_file))

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


def _writers(config: Config, reactor: Any, root: GomailService) -> tuple[Any, Any]:
    """
    The spool's two writers: one for commits (what SMTP clients wait on), one
    for Maildir copies and removals, so those never delay a commit. Both are
    lanes of one writer process (gomail.spool.process), or with
    spool.writerProcess = false two threads of this process.
    """
    if config.spool.writerProcess:
        spec = WriterSpec(spool_directory=config.spool.directory, spare_files=SPARE_FILES,
                          mailbox_directory=os.path.join(config.spool.directory, "mailbox"),
                          hostname=config.smtp.hostname, fsync_threads=config.spool.ioThreads)
        process = root.writer_process = WriterProcess(reactor, spec)
        process.setServiceParent(root)
        return process.lane("commit"), process.lane("mailbox")
    # No writer process holds the spool's lock: this process does, before its writers start.
    SpoolLock(reactor, config.spool.directory).setServiceParent(root)
    writer = BatchWriter(reactor, fsync_threads=config.spool.ioThreads)
    writer.setServiceParent(root)
    mailbox_writer = BatchWriter(reactor, fsync_threads=config.spool.ioThreads, name="gomail-mailbox-writer")
    mailbox_writer.setServiceParent(root)
    return writer, mailbox_writer


def _delivery(config: Config, reactor: Any, spool: Spool, mailbox_writer: Any) -> DeliveryQueue:
    """The delivery queue: local domains (or everything) to the Maildirs, the rest to the smarthosts."""
    spool.removal_writer = mailbox_writer
    mailbox = MaildirDelivery(spool.path("mailbox"), config.smtp.hostname, mailbox_writer)
    settings = config.delivery
    if config.forwardSMTP:
        relay = RelayAgent(smarthosts_from(config), make_connector(reactor, config.smtp.hostname, settings),
                           reactor, config.batchSize, config.batchDelay, config.continueOnError,
                           idle_timeout=settings.connectionIdleTimeout, run=spool.run,
                           open_content=content_opener(spool.recent, spool.run),
                           processing_timeout=config.processingTimeout, data_timeout=settings.dataTimeout)
        router = Router(mailbox, relay, local_domains(config.smtp.localDomains, config.smtp.hostname))
        workers = config.workerCount
    else:
        router = Router(mailbox)
        # Local copies are cheap and batch well in the writer: more at once
        # than workerCount (which is sized for remote deliveries).
        workers = max(config.workerCount, LOCAL_CONCURRENCY)
    policy = RetryPolicy(initial=settings.retryInitialDelay, factor=settings.retryBackoffFactor,
                         maximum=settings.retryMaxDelay, jitter=settings.retryJitter, max_age=settings.maxQueueAge)
    return DeliveryQueue(spool, router, reactor, workers, processing_timeout=config.processingTimeout,
                         policy=policy, failed=FailedStore(spool, reactor), hostname=config.smtp.hostname,
                         failed_retry_interval=settings.failedRetryInterval, delay_warning=settings.delayWarning)


def _recipients(config: Config, reactor: Any, policy: RelayPolicy, auth: AuthParts) -> LocalRecipients:
    """Who exists in the local domains: the user store's users, its aliases, postmaster@ and abuse@."""
    domains = ", ".join(sorted(policy.local_domains))
    if config.smtp.verifyRecipients:
        GomailService.log.info("recipients in the local domains ({domains}) must be users or aliases "
                               "(smtp.verifyRecipients)", domains=domains)
    else:
        GomailService.log.warn("smtp.verifyRecipients = false: any address in the local domains ({domains}) "
                               "is accepted", domains=domains)
    return LocalRecipients(policy, own_domain(config.smtp.hostname), config.smtp.postmaster, users=auth.users,
                           aliases=AliasStore(auth.users.pool, reactor, config.auth.userRefresh),
                           verify=config.smtp.verifyRecipients)


def build_service(config: Config, reactor: Any) -> GomailService:
    """
    Build the whole server from a loaded configuration. Nothing listens or
    touches the spool until the returned service is started.

    @raise gomail.tls.TLSConfigError: for an unusable certificate or key.
    """
    root = GomailService(config)
    io = ThreadPoolService(reactor, "gomail-io", config.spool.ioThreads)
    io.setServiceParent(root)
    writer, mailbox_writer = _writers(config, reactor, root)
    spool = Spool(config.spool.directory, reactor, io.run, writer=writer,
                  min_free_bytes=config.spool.minFreeSpaceMB * 1024 * 1024, spare_files=SPARE_FILES,
                  recent_content_bytes=RECENT_CONTENT_BYTES)
    root.spool = spool

    root.delivery = _delivery(config, reactor, spool, mailbox_writer)
    SpoolService(spool, root.delivery).setServiceParent(root)
    root.delivery.setServiceParent(root)
    # After recovery and delivery (stopped before them): `gomail queue` changes go through this server.
    ControlService(reactor, QueueControl(spool, root.delivery, root.delivery.failed)).setServiceParent(root)
    root.auth = build_auth(config, reactor, root)

    tls = server_context(config.smtp.tlsCertificate, config.smtp.tlsPrivateKey, config.dataDir,
                         config.smtp.hostname)
    domains = local_domains(config.smtp.localDomains, config.smtp.hostname)
    policy = RelayPolicy(config.smtp.trustedNetworks, domains,
                         require_auth=config.security.requireAuth,
                         allow_local_only=config.security.allowLocalOnly)
    root.smtp = SMTPServer(config.smtp, policy, spool, reactor, tls, queue_size=config.queueSize,
                           log_envelopes=config.security.logAllEmails, portal=root.auth.portal,
                           rate_limiter=root.auth.rate_limiter, auth_settings=config.auth,
                           blacklist=root.auth.authenticator.blacklist,
                           default_user=_default_user(config),
                           recipients=_recipients(config, reactor, policy, root.auth), users=root.auth.users)
    SMTPService(root.smtp, reactor, config.smtp.listen, config.smtp.implicitTlsListen).setServiceParent(root)
    SignalService(reactor).setServiceParent(root)
    # HTTP last: it reports on everything above, and stops first.
    root.metrics = build_http(config, reactor, root, root)
    # SMTP AUTH attempts go to auth_http's audit table (nginxAuth.auditLog); without auth_http, to its own writer.
    if root.auth_log is None and config.nginxAuth.auditLog:
        root.auth_log = AuthLog(root.auth.users.pool, reactor, config.nginxAuth.auditRetentionDays)
        root.auth_log.setServiceParent(root)
    root.smtp.audit = root.auth_log
    return root
