# -*- test-case-name: tests.test_config -*-
"""
The configuration schema: every key gomail accepts, its type, default and check.

Key names are the Go relay's camelCase names (its ``config.json`` is our
compatibility contract); gomail's own keys live in sections named the same way.
Each field's metadata may carry:

- ``check``: a function returning an error text for a bad value, or None;
- ``env``: the Go relay's environment variable for the key (besides the
  generic ``GOMAIL_<SECTION>_<KEY>`` form every key has);
- ``secret``: never print the value.

The loader in :mod:`gomail.configload` walks these dataclasses; nothing here reads
files or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gomail.configchecks import (
    PORT,
    between,
    domains,
    endpoints,
    host_names,
    mailbox_or_empty,
    networks,
    non_empty,
    one_of,
    setting,
    web_origins,
)
from gomail.configdelivery import DirectDeliverySettings, DKIMSettings, Route
from gomail.configmailaccess import IMAPSettings, POP3Settings


@dataclass(frozen=True)
class Provider:
    """One smarthost of ``forwardProviders`` (failover by ascending priority)."""

    host: str = setting("", check=non_empty)
    port: int = setting(587, check=between(1, 65535))
    username: str = setting("")
    password: str = setting("", secret=True)
    ssl: bool = setting(False)
    priority: int = setting(0, check=between(0))


@dataclass(frozen=True)
class RateLimits:
    """The Go relay's ``rateLimits`` section (enforced from the AUTH issue on)."""

    enabled: bool = setting(False)
    maxPerHour: int = setting(500, check=between(1))
    maxPerDay: int = setting(2000, check=between(1))
    globalMaxPerHour: int = setting(1000, check=between(1))
    globalMaxPerDay: int = setting(5000, check=between(1))
    # When the state store cannot answer: "allow" keeps mail flowing (limits are
    # skipped and a warning logged), "refuse" answers 451 4.7.1 until it is back.
    failurePolicy: str = setting("allow", check=one_of("allow", "refuse"))


@dataclass(frozen=True)
class Security:
    """The Go relay's ``security`` section."""

    allowLocalOnly: bool = setting(True)
    logAllEmails: bool = setting(True)
    requireAuth: bool = setting(True)


@dataclass(frozen=True)
class SMTPSettings:
    """gomail's own SMTP server keys (section ``smtp``)."""

    hostname: str = setting("")
    listen: tuple[str, ...] = setting((), check=endpoints)
    implicitTlsListen: tuple[str, ...] = setting((), check=endpoints)
    tlsCertificate: str = setting("")
    tlsPrivateKey: str = setting("")
    maxMessageSize: int = setting(26214400, check=between(1024))
    maxRecipients: int = setting(100, check=between(1))
    maxLineLength: int = setting(998, check=between(78, 1048576))
    maxErrors: int = setting(10, check=between(1))
    idleTimeout: int = setting(300, check=between(1))
    maxConnections: int = setting(1000, check=between(1))
    maxConnectionsPerIP: int = setting(20, check=between(1))
    trustedNetworks: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), check=networks)
    localDomains: tuple[str, ...] = setting((), check=domains)
    # Recipients in local domains must be users or aliases (550 5.1.1 otherwise); see gomail.smtp.recipients.
    verifyRecipients: bool = setting(True)
    # Where postmaster@ and abuse@ of every local domain (and <postmaster>) go; "": postmaster@<hostname>.
    postmaster: str = setting("", check=mailbox_or_empty)
    bareLineEndings: str = setting("reject", check=one_of("reject", "normalize"))
    allowPlaintextAuthLoopback: bool = setting(False)
    shutdownTimeout: int = setting(30, check=between(0))
    # Abuse bounds (Postfix's defaults where Postfix has one): see conf/gomail.toml.
    greetingDelay: float = setting(1.0, check=between(0, 30))
    maxSessionTime: int = setting(3600, check=between(0))
    maxTransactions: int = setting(1000, check=between(1))
    minDataRate: int = setting(500, check=between(0))
    junkCommandLimit: int = setting(100, check=between(1))
    # Proxies (nginx's mail module) that may name their client with XCLIENT.
    # Empty by default (Postfix's smtpd_authorized_xclient_hosts): whoever may
    # send XCLIENT may name any user without a password.
    xclientHosts: tuple[str, ...] = setting((), check=networks)


@dataclass(frozen=True)
class SpoolSettings:
    """gomail's durable queue (section ``spool``)."""

    directory: str = setting("")
    minFreeSpaceMB: int = setting(100, check=between(0))
    ioThreads: int = setting(8, check=between(1, 64))
    writerProcess: bool = setting(True)


@dataclass(frozen=True)
class DeliverySettings:
    """Retry schedule and the failed store (section ``delivery``)."""

    retryInitialDelay: int = setting(300, check=between(1))
    retryBackoffFactor: float = setting(2.0, check=between(1.0, 10.0))
    retryMaxDelay: int = setting(3600, check=between(1))
    retryJitter: float = setting(0.2, check=between(0.0, 1.0))
    maxQueueAge: int = setting(432000, check=between(60))
    # Seconds after which the sender of a message still being retried gets one
    # "delayed" DSN (Postfix's delay_warning_time); 0: never.
    delayWarning: int = setting(14400, check=between(0))
    failedRetryInterval: int = setting(3600, check=between(0))
    tlsVerify: bool = setting(True)
    tlsCAFile: str = setting("")
    connectTimeout: int = setting(30, check=between(1))
    commandTimeout: int = setting(300, check=between(1))
    # The wait for the reply to the final dot (RFC 5321 4.5.3.2.6: 10 minutes): the
    # smarthost may be delivering meanwhile, so giving up early risks a duplicate.
    dataTimeout: int = setting(600, check=between(1))
    connectionIdleTimeout: int = setting(10, check=between(0))


def redis_url(value: str) -> str | None:
    """Accept an empty string or redis://[:password@]host[:port][/db]."""
    if not value:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"is not a valid redis:// URL ({e})"
    if parts.scheme != "redis" or not parts.hostname:
        return "must look like redis://[:password@]host[:port][/db]"
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        return "the path must be a database number such as /0"
    return None


@dataclass(frozen=True)
class AuthSettings:
    """Credentials, lockout and the authentication cache (section ``auth``)."""

    database: str = setting("")
    secretFile: str = setting("")
    bcryptRounds: int = setting(10, check=between(4, 16))
    cpuThreads: int = setting(0, check=between(0, 64))  # 0: one fewer than the CPU cores, at least 1
    maxFailAttempts: int = setting(5, check=between(1))
    maxFailAttemptsPerIP: int = setting(20, check=between(1))
    failTTL: int = setting(60, check=between(1))
    lockTTL: int = setting(300, check=between(1))
    # One user's failures from any client IPs: past this many within the window,
    # failures are answered userSlowdownDelay seconds late (never refused; 0: off).
    userSlowdownAttempts: int = setting(10, check=between(1))
    userSlowdownWindow: int = setting(300, check=between(1))
    userSlowdownDelay: int = setting(5, check=between(0, 60))
    cacheTTL: int = setting(300, check=between(0))
    blacklistRefresh: int = setting(10, check=between(1))
    userRefresh: float = setting(1.0, check=between(0, 60))
    enforceSenderAddress: bool = setting(True)
    maxFailuresPerSession: int = setting(3, check=between(1))


@dataclass(frozen=True)
class RedisSettings:
    """The shared state store (section ``redis``); empty url and host: in memory."""

    url: str = setting("", check=redis_url, secret=True)
    host: str = setting("")
    port: int = setting(6379, check=between(1, 65535))
    password: str = setting("", secret=True)
    db: int = setting(0, check=between(0))
    keyPrefix: str = setting("gomail:")
    timeout: float = setting(2.0, check=between(0.05, 60))

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.host)


def http_path(value: str) -> str | None:
    """Accept an absolute URL path."""
    if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
        return f"must be an absolute path such as /api/auth, got {value!r}"
    return None


def header_name(value: str) -> str | None:
    """Accept an HTTP header name."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value):
        return f"{value!r} is not an HTTP header name"
    return None


@dataclass(frozen=True)
class Backend:
    """One mail server nginx may hand a login to (``[[nginxAuth.backends]]``)."""

    protocol: str = setting("imap", check=one_of("imap", "pop3", "smtp"))
    address: str = setting("", check=non_empty)
    port: int = setting(143, check=between(1, 65535))
    weight: int = setting(1, check=between(1, 1000))
    # A gomail IMAP/POP3 listener sharing auth.secretFile (and, between nodes, the Redis store): nginx
    # logs in there with a one-time login ticket instead of the password (gomail.auth.tickets).
    loginTicket: bool = setting(False)


@dataclass(frozen=True)
class NginxAuthSettings:
    """The nginx mail proxy ``auth_http`` service (section ``nginxAuth``)."""

    enabled: bool = setting(True)
    listen: tuple[str, ...] = setting(("tcp:8090:interface=127.0.0.1",), check=endpoints)
    path: str = setting("/api/auth", check=http_path)
    allowFrom: tuple[str, ...] = setting((), check=networks)
    sharedSecret: str = setting("", secret=True)
    secretHeader: str = setting("X-Auth-Key", check=header_name)
    failureText: str = setting("Invalid login or password", check=non_empty)
    temporaryText: str = setting("Temporary authentication failure, try again later", check=non_empty)
    waitSeconds: int = setting(2, check=between(0, 3600))
    maxWaitSeconds: int = setting(30, check=between(0, 3600))
    maxLoginAttempts: int = setting(10, check=between(1, 1000))
    strategy: str = setting("hash", check=one_of("hash", "round-robin"))
    backends: tuple[Backend, ...] = setting(())
    healthCheckInterval: int = setting(10, check=between(0))
    healthCheckTimeout: float = setting(2.0, check=between(0.1, 60))
    auditLog: bool = setting(True)
    auditRetentionDays: int = setting(30, check=between(1))
    maxRequestBytes: int = setting(16384, check=between(1024, 1048576))
    requestTimeout: int = setting(10, check=between(1, 3600))


@dataclass(frozen=True)
class MonitorSettings:
    """The monitoring and admin HTTP listener (section ``monitor``)."""

    listen: tuple[str, ...] = setting((), check=endpoints)
    allowFrom: tuple[str, ...] = setting((), check=networks)
    bearerToken: str = setting("", secret=True)
    hostnames: tuple[str, ...] = setting((), check=host_names)
    trustedProxies: tuple[str, ...] = setting((), check=networks)
    lowDiskSpaceMB: int = setting(1024, check=between(0))
    maxRequestBytes: int = setting(65536, check=between(1024, 1048576))
    requestTimeout: int = setting(30, check=between(1, 3600))


@dataclass(frozen=True)
class AdminSettings:
    """
    The admin API and web dashboard (section ``admin``): on by default, on
    loopback only; the login lockout policy is in the system configuration.
    """

    enabled: bool = setting(True)
    listen: tuple[str, ...] = setting(("tcp:8089:interface=127.0.0.1",), check=endpoints)
    allowFrom: tuple[str, ...] = setting((), check=networks)
    hostnames: tuple[str, ...] = setting((), check=host_names)
    trustedProxies: tuple[str, ...] = setting((), check=networks)
    corsOrigins: tuple[str, ...] = setting((), check=web_origins)
    sessionTTL: int = setting(86400, check=between(60, 30 * 86400))
    refreshTTL: int = setting(7 * 86400, check=between(60, 365 * 86400))
    loginRateLimit: int = setting(10, check=between(1, 100000))  # login requests per minute per client IP
    secureCookie: bool = setting(True)
    maxConnections: int = setting(256, check=between(1))
    maxConnectionsPerIP: int = setting(32, check=between(1))
    maxRequestBytes: int = setting(65536, check=between(1024, 1048576))
    requestTimeout: int = setting(30, check=between(1, 3600))


@dataclass(frozen=True)
class LoggingSettings:
    """Log output (section ``logging``)."""

    format: str = setting("text", check=one_of("text", "json"))
    file: str = setting("")
    level: str = setting("info", check=one_of("debug", "info", "warn", "error", "critical"))


@dataclass(frozen=True)
class PluginSettings:
    """
    Plugins (section ``plugins``, see docs/plugins.md): where more are found,
    how long one hook may take, and the plugins enabled: each ``[plugins.<name>]``
    table enables that plugin with its settings, in the file's order.
    """

    path: tuple[str, ...] = setting(())
    timeout: float = setting(10.0, check=between(0.01, 3600))
    #: (name, settings) of each enabled plugin, in the file's order: filled by the loader from the
    #: section's tables, checked by each plugin itself (gomail.extension.loader).
    enabled: tuple[tuple[str, Any], ...] = field(default=(), metadata={"tables": True})


@dataclass(frozen=True)
class Config:
    """The whole configuration. Top-level keys are the Go relay's."""

    smtpHost: str = setting("127.0.0.1", env="SMTP_HOST", check=non_empty)
    smtpPort: int = setting(25, env="SMTP_PORT", check=PORT)
    defaultUsername: str = setting("", env="DEFAULT_USERNAME")
    defaultPassword: str = setting("", env="DEFAULT_PASSWORD", secret=True)
    forwardSMTP: bool = setting(False, env="FORWARD_SMTP")
    forwardHost: str = setting("", env="FORWARD_HOST")
    forwardPort: int = setting(587, env="FORWARD_PORT", check=between(1, 65535))
    forwardUsername: str = setting("", env="FORWARD_USERNAME")
    forwardPassword: str = setting("", env="FORWARD_PASSWORD", secret=True)
    forwardSSL: bool = setting(False, env="FORWARD_SSL")
    forwardProviders: tuple[Provider, ...] = setting(())
    batchSize: int = setting(20, check=between(1))
    batchDelay: int = setting(1000, check=between(0))
    continueOnError: bool = setting(True)
    workerCount: int = setting(5, check=between(1, 1000))
    queueSize: int = setting(1000, check=between(1))
    processingTimeout: int = setting(300, check=between(1))
    enableHealthCheck: bool = setting(True)
    healthCheckPort: int = setting(8025, check=PORT)
    dataDir: str = setting("data", check=non_empty)
    rateLimits: RateLimits = field(default_factory=RateLimits)
    security: Security = field(default_factory=Security)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    spool: SpoolSettings = field(default_factory=SpoolSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    nginxAuth: NginxAuthSettings = field(default_factory=NginxAuthSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    pop3: POP3Settings = field(default_factory=POP3Settings)
    imap: IMAPSettings = field(default_factory=IMAPSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    plugins: PluginSettings = field(default_factory=PluginSettings)
    directDelivery: DirectDeliverySettings = field(default_factory=DirectDeliverySettings)
    dkim: DKIMSettings = field(default_factory=DKIMSettings)
    routes: tuple[Route, ...] = setting(())
