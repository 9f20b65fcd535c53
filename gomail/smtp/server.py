# -*- test-case-name: tests.test_smtp_protocol -*-
"""
State shared by all SMTP sessions: admission (connection caps, local-only),
intake checks (storage, queue size, relay rules), and the graceful drain.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gomail.auth.authlog import AuthLogEntry, printable
from gomail.configschema import AuthSettings, SMTPSettings
from gomail.deferreds import deferred_coroutine
from gomail.extension.smtphooks import SMTPHooks
from gomail.limits.rate import RateLimitUnavailable
from gomail.servicekit import ListeningService
from gomail.smtp.address import Path
from gomail.smtp.logthrottle import LogThrottle
from gomail.smtp.policy import RelayPolicy, own_domain
from gomail.smtp.protocol import GomailESMTP
from gomail.smtp.recipients import LocalRecipients
from gomail.smtp.session import SessionAPI
from gomail.smtp.xclient import XClientAccess

if TYPE_CHECKING:
    from gomail.limits.rate import RateLimiter
    from gomail.spool.envelope import Envelope
    from gomail.spool.store import Spool

Refusal = tuple[int, str, str]
#: Lines logged a second about refused blacklisted clients (the rest are counted).
BLACKLIST_LOG_PER_SECOND = 5
#: Lines logged a second about rate-limit hits (the rest are counted).
RATE_LIMIT_LOG_PER_SECOND = 10


#: Metric label of a MAIL FROM refusal, by its enhanced status code.
_REASONS = {"5.7.0": "auth_required", "5.7.1": "sender_not_owned", "4.3.1": "insufficient_storage",
            "4.7.1": "rate_limited", "4.3.0": "rate_limit_unavailable"}


class SMTPServer:
    """
    The sessions of every SMTP listener and the rules they share.

    @param queue_size: intake answers 452 4.3.1 once this many messages are queued.
    @param log_envelopes: log sender and recipients of every accepted message
        (the Go relay's C{security.logAllEmails}); content is never logged.
    @param portal: the twisted.cred portal SMTP AUTH logs in through (None: no AUTH).
    @param rate_limiter: the L{RateLimiter} checked at MAIL FROM (None: no limits).
    @param blacklist: the IP L{Blacklist} checked before the banner (None: none).
    @param recipients: the L{LocalRecipients} deciding on RCPT addresses of
        local domains (None: every such address is accepted).
    @param users: the user store an XCLIENT LOGIN is looked up in (None: none
        is accepted; see L{gomail.smtp.xclient}).
    @param hooks: the plugins' L{SMTPHooks} (None: no plugin hooks).
    @param audit: the audit log of logins (L{gomail.auth.authlog.AuthLog},
        shared with auth_http) SMTP AUTH attempts are written to (None: not kept).
    """

    log = Logger()

    def __init__(self, settings: SMTPSettings, policy: RelayPolicy, spool: Spool,
                 clock: IReactorTime, tls_context: Any, queue_size: int, log_envelopes: bool,
                 portal: Any = None, rate_limiter: RateLimiter | None = None,
                 auth_settings: AuthSettings | None = None, blacklist: Any = None,
                 recipients: LocalRecipients | None = None, default_user: str = "", users: Any = None,
                 audit: Any = None, hooks: SMTPHooks | None = None) -> None:
        self.settings = settings
        self.policy = policy
        # Who exists in the local domains (users, aliases, postmaster); by
        # default no user store: any address of a local domain is accepted.
        self.recipients = recipients or LocalRecipients(
            policy, own_domain(settings.hostname), settings.postmaster, users=None)
        self.spool = spool
        self.clock = clock
        self.tls_context = tls_context
        self.queue_size = queue_size
        self.log_envelopes = log_envelopes
        self.portal = portal  # None: AUTH is not offered
        self.rate_limiter = rate_limiter
        self.auth_settings = auth_settings or AuthSettings()
        self.blacklist = blacklist  # None: no IP blacklist
        # The Go relay's defaultUsername (canonical): it sends as anyone until given senders.
        self.default_user = default_user
        # Proxies that may name their client (smtp.xclientHosts), and the user
        # store their LOGIN is looked up in (None: no XCLIENT LOGIN).
        self.xclient = XClientAccess(settings.xclientHosts, users)
        self._blacklist_log = LogThrottle(clock, BLACKLIST_LOG_PER_SECOND)
        self._rate_limit_log = LogThrottle(clock, RATE_LIMIT_LOG_PER_SECOND)
        #: The audit log of logins (L{gomail.auth.authlog.AuthLog}, shared with auth_http); None: not kept.
        self.audit = audit
        #: The plugins' SMTP hooks and header filters (L{gomail.extension.smtphooks}); none by default.
        self.hooks = hooks or SMTPHooks()
        self.rejections: Counter[str] = Counter()  # refusals by reason, for the metrics endpoint
        self.sessions_total = 0
        self.probes_total = 0  # connections closed without a byte from the client
        self.received_messages = 0
        self.received_recipients = 0
        self.sessions: set[SessionAPI] = set()
        self._per_ip: Counter[str] = Counter()
        self.shutting_down = False
        self._drained: Deferred | None = None

    def factory(self, implicit_tls: bool = False) -> ServerFactory:
        """A protocol factory for one listener (implicit TLS listeners wrap theirs in TLS)."""
        return _SMTPFactory(self, implicit_tls)

    # -- sessions -----------------------------------------------------------

    def admit(self, session: SessionAPI) -> Refusal | None:
        """
        Register a new session, or say why it is refused (then it is not
        registered). A session counts in C{sessions_total} once refused or once
        its client sends something; one that closes without a byte is a TCP
        health check (nginx's backend probe, a load balancer's) and counts in
        C{probes_total} instead (see L{release}).
        """
        refusal = self._admission(session)
        if refusal is not None:
            self.sessions_total += 1
        return refusal

    def spoke(self, session: SessionAPI) -> None:
        """The client of an admitted session sent its first bytes: a session, not a probe."""
        self.sessions_total += 1

    def _admission(self, session: SessionAPI) -> Refusal | None:
        if self.shutting_down:
            return (421, "4.3.2", f"{self.settings.hostname} Service shutting down, try again later")
        if not self.policy.may_connect(session.client_ip):
            self.rejections["not_local"] += 1
            self.log.info("refused non-local client {client} (security.allowLocalOnly)", client=session.client_host)
            return (554, "5.7.1", f"{self.settings.hostname} Access denied: this server accepts only local clients")
        if len(self.sessions) >= self.settings.maxConnections:
            self.rejections["too_many_connections"] += 1
            return (421, "4.7.0", f"{self.settings.hostname} Too many connections, try again later")
        refusal = self._count(session, self._per_ip_key(session.peer_host, session.peer_ip))
        if refusal is None:
            self.sessions.add(session)
        return refusal

    def _per_ip_key(self, host: str, ip: Any) -> str | None:
        """
        The address a session counts against for smtp.maxConnectionsPerIP; None
        (not counted) for a proxy in smtp.xclientHosts, whose sessions count
        against the clients it names (L{count_client}).
        """
        return None if self.xclient.allows(ip) else host

    def _count(self, session: SessionAPI, key: str | None) -> Refusal | None:
        if key is not None and self._per_ip[key] >= self.settings.maxConnectionsPerIP:
            self.rejections["too_many_connections_per_ip"] += 1
            self.log.info("refused {client}: too many connections from one address", client=key)
            return (421, "4.7.0", f"{self.settings.hostname} Too many connections from your address, try again later")
        self._uncount(session)
        session.counted_as = key
        if key is not None:
            self._per_ip[key] += 1
        return None

    def _uncount(self, session: SessionAPI) -> None:
        key, session.counted_as = session.counted_as, None
        if key is not None:
            self._per_ip[key] -= 1
            if self._per_ip[key] <= 0:
                del self._per_ip[key]

    def count_client(self, session: SessionAPI) -> Refusal | None:
        """
        XCLIENT named the session's client: count the session against that
        client's address from now on, or say why not (it has too many already).
        """
        key = self._per_ip_key(session.client_host, session.client_ip)
        if key == session.counted_as:
            return None
        return self._count(session, key)

    async def client_refusal(self, session: SessionAPI) -> Refusal | None:
        """
        Why a client is refused before its banner (the IP blacklist), or None.
        A blacklist that cannot be read lets the client in: it guards logins
        too, where it fails closed, and intake goes on while the database is down.
        """
        if self.blacklist is None or not session.client_host:
            return None
        try:
            listed = await self.blacklist.check(session.client_host)
        except Exception as e:  # noqa: BLE001 -- any store failure: intake goes on unchecked
            self.log.warn("IP blacklist unavailable, not checked for {client}: {error}",
                          client=session.client_host, error=str(e) or type(e).__name__)
            return None
        if not listed:
            return None
        self.rejections["blacklisted"] += 1
        suppressed = self._blacklist_log.allow()
        if suppressed is not None:
            self.log.info("refused blacklisted client {client}{more}", client=session.client_host,
                          more=f" ({suppressed} more refused meanwhile)" if suppressed else "")
        return (554, "5.7.1", f"{self.settings.hostname} Access denied: your address is blacklisted")

    def release(self, session: SessionAPI) -> None:
        """Forget a closed session."""
        if not session.spoke:
            self.probes_total += 1
        if session in self.sessions:
            self.sessions.discard(session)
            self._uncount(session)
        if self._drained is not None and not self.sessions:
            drained, self._drained = self._drained, None
            drained.callback(None)

    def shutdown(self, timeout: float) -> Deferred:
        """
        Close idle sessions now and the others after their current transaction;
        fires when all are gone, or after C{timeout} seconds, when the rest are cut.
        """
        self.shutting_down = True
        for session in list(self.sessions):
            session.close_gracefully()
        if not self.sessions:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        self._drained = drained
        timer = self.clock.callLater(timeout, self._cut, timeout)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        drained.addBoth(stop_timer)
        return drained

    def _cut(self, timeout: float) -> None:
        self.log.warn("{count} SMTP sessions still open after {timeout} s: closing them",
                      count=len(self.sessions), timeout=timeout)
        for session in list(self.sessions):
            session.transport.abortConnection()
        if self._drained is not None:
            drained, self._drained = self._drained, None
            drained.callback(None)

    # -- intake rules -------------------------------------------------------

    async def mail_refusal(self, session: SessionAPI, sender: Path) -> Refusal | None:
        """Why MAIL FROM C{sender} is refused in this session, or None."""
        refusal = await self._mail_refusal(session, sender)
        if refusal is not None:
            self.rejections[_REASONS.get(refusal[1], refusal[1])] += 1
        return refusal

    async def _mail_refusal(self, session: SessionAPI, sender: Path) -> Refusal | None:
        if self.policy.require_auth and session.account is None:
            return (530, "5.7.0", "Authentication required")
        if session.account is not None and not self.may_send_as(session.account.user, sender):
            self.log.info("refused sender <{sender}> of authenticated user {user} from {client}: not an allowed "
                          "address", sender=sender.address, user=session.account.name, client=session.client_host)
            return (553, "5.7.1", f"<{sender.address}>: Sender address rejected: not owned by user")
        if self.spool.queued >= self.queue_size or not self.spool.has_free_space():
            self.log.warn("refusing mail: queue full or spool disk low ({queued} queued)", queued=self.spool.queued)
            return (452, "4.3.1", "Insufficient system storage")
        if self.rate_limiter is not None:
            try:
                allowed = await self.rate_limiter.allows(self.rate_key(session, sender))
            except RateLimitUnavailable:
                return (451, "4.3.0", "Rate limits cannot be checked now, try again later")
            if not allowed:
                suppressed = self._rate_limit_log.allow()
                if suppressed is not None:
                    who = (f"user {session.account.name}" if session.account is not None
                           else f"sender <{sender.address}>")
                    self.log.info("rate limit hit by {who} from {client}: 451 4.7.1{more}", who=who,
                                  client=session.client_host,
                                  more=f" ({suppressed} more hits meanwhile)" if suppressed else "")
                return (451, "4.7.1", "Rate limit exceeded, try again later")
        return None

    def audit_login(self, session: SessionAPI, user: str, result: str, reason: str, started: float) -> bool:
        """
        Record an SMTP AUTH attempt in the audit log (protocol C{smtp}, the user
        name as given, never a password); whether it was recorded (True when no
        audit log is kept). A success that cannot be recorded is refused, as auth_http does.
        """
        if self.audit is None:
            return True
        now = self.clock.seconds()
        try:
            self.audit.record(AuthLogEntry(now, printable(user), "smtp", session.client_host, result, reason,
                                           round((now - started) * 1000, 3)))
        except Exception:  # noqa: BLE001 - whatever the audit log raises: said here, answered by the caller
            self.log.failure("could not record an SMTP AUTH attempt of {user}", user=printable(user, 100))
            return False
        return True

    def may_send_as(self, user: Any, sender: Path) -> bool:
        """
        Whether an authenticated user may use C{sender} as MAIL FROM: one of
        their allowed addresses or domains (C{@example.com}), or their user name
        when it is an address and none are set. The null sender is allowed. The
        user made from the Go relay's C{defaultUsername} may use any sender
        until senders are set for it, as the Go relay let it (applications that
        relay through it depend on that).
        """
        if not self.auth_settings.enforceSenderAddress or not sender.address:
            return True
        if user.name == self.default_user and not user.allowed_senders:
            return True
        address = sender.address.lower()
        allowed = user.allowed_senders or ((user.name,) if "@" in user.name else ())
        domain = "@" + address.rpartition("@")[2]
        return any(entry.lower() in (address, domain) for entry in allowed)

    @staticmethod
    def rate_key(session: SessionAPI, sender: Path) -> str:
        """Whom a message counts against: the authenticated user, else the envelope sender."""
        if session.account is not None:
            return "user:" + session.account.name
        return "sender:" + sender.address.lower()

    def rcpt_refusal(self, session: SessionAPI, path: Path) -> Refusal | None:
        """Why a recipient is refused in this session, or None."""
        if path.domain and not self.policy.may_relay(session.client_ip, session.authenticated, path.domain):
            self.rejections["relay_denied"] += 1
            return (554, "5.7.1", f"<{path.address}>: Relay access denied")
        return None

    def accepted(self, session: SessionAPI, envelope: Envelope) -> None:
        """Log (and count against the rate limits) a message that has just been queued."""
        self.received_messages += 1
        self.received_recipients += len(envelope.recipients)
        if self.rate_limiter is not None:
            self.rate_limiter.count(self.rate_key(session, Path(envelope.sender, {})))
        if self.log_envelopes:
            self.log.info(
                "queued {queue_id} from <{sender}> to {recipients} ({size} bytes) client {client}",
                queue_id=envelope.id, sender=envelope.sender, size=envelope.size, client=session.client_host,
                recipients=", ".join(f"<{r.address}>" for r in envelope.recipients))
        else:
            self.log.info("queued {queue_id} for {count} recipients ({size} bytes)",
                          queue_id=envelope.id, count=len(envelope.recipients), size=envelope.size)


class _SMTPFactory(ServerFactory):
    noisy = False

    def __init__(self, server: SMTPServer, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> GomailESMTP:
        protocol = GomailESMTP(self.server, implicit_tls=self.implicit_tls)
        protocol.factory = self
        return protocol


class SMTPService(MultiService):
    """The SMTP listeners; stopping it stops listening, then drains the sessions."""

    def __init__(self, server: SMTPServer, reactor: Any, listen: tuple[str, ...],
                 implicit_tls_listen: tuple[str, ...]) -> None:
        super().__init__()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        self.server = server
        for description in listen:
            ListeningService(reactor, description, server.factory(), "smtp").setServiceParent(self)
        for description in implicit_tls_listen:
            factory = TLSMemoryBIOFactory(server.tls_context, False, server.factory(implicit_tls=True))
            ListeningService(reactor, description, factory, "smtps").setServiceParent(self)

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        self.running = 1
        for listener in self:
            await listener.startService()

    def stopService(self) -> Deferred:
        d = super().stopService()
        d.addCallback(lambda _: self.server.shutdown(self.server.settings.shutdownTimeout))
        return d
