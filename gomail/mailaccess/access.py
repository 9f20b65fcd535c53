# -*- test-case-name: tests.test_pop3,tests.test_imap -*-
"""
What the POP3 and IMAP servers share (L{MailAccessServer}): admission under
the connection caps, the portal and TLS context their logins use, the
trusted nginx proxies, the audit of login attempts, and their counters;
their listeners' protocol factory and service (L{MailAccessService}).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gomail.auth.authlog import AuthLogEntry, printable
from gomail.configschema import AuthSettings
from gomail.deferreds import deferred_coroutine
from gomail.mailaccess.proxies import TrustedProxies
from gomail.servicekit import ListeningService


class MailAccessServer:
    """
    The sessions of every listener of one protocol and what they share.
    Sessions have C{client_host}, C{client_ip} and a C{counted_as} slot.

    @param settings: the protocol's section (C{maxConnections},
        C{maxConnectionsPerIP}, C{trustedProxies}).
    @param portal: the portal every login goes through (None: logins are refused).
    @param tls_context: the server TLS context for STARTTLS/STLS and implicit TLS (None: no TLS).
    @param auth_settings: C{[auth]} (C{maxFailuresPerSession}).
    @param audit: the login audit log (L{gomail.auth.authlog.AuthLog}); None: not kept.
    """

    log = Logger()
    #: The audit log's protocol name, and the name log lines give it.
    protocol = ""
    label = ""
    #: The session protocol, built as C{session_class(server, implicit_tls=...)}.
    session_class: Any = None

    def __init__(self, settings: Any, clock: Any, portal: Any = None, tls_context: Any = None,
                 auth_settings: AuthSettings | None = None, audit: Any = None) -> None:
        self.settings = settings
        self.clock = clock
        self.portal = portal
        self.tls_context = tls_context
        self.auth_settings = auth_settings or AuthSettings()
        self.audit = audit
        #: nginx mail proxies (trustedProxies): TLS-less ticket logins (gomail.mailaccess.proxies).
        self.proxies = TrustedProxies(settings.trustedProxies)
        self.sessions: set[Any] = set()
        self._per_ip: Counter[str] = Counter()
        self.shutting_down = False
        #: sessions, refused (connection caps), logins, login_failures, and each protocol's own.
        self.stats: Counter[str] = Counter()

    def factory(self, implicit_tls: bool = False) -> ServerFactory:
        """A protocol factory for one listener (implicit TLS listeners wrap theirs in TLS)."""
        return _SessionFactory(self, implicit_tls)

    def admit(self, session: Any) -> str | None:
        """Register a new session, or the text of its refusal (maxConnections, maxConnectionsPerIP)."""
        self.stats["sessions"] += 1
        key = session.client_host
        refusal = None
        if self.shutting_down:
            refusal = "[SYS/TEMP] Server shutting down, try again later"
        elif len(self.sessions) >= self.settings.maxConnections:
            refusal = "[SYS/TEMP] Too many connections, try again later"
        # nginx's sessions all come from its address, each for another client: only maxConnections bounds them.
        elif self._per_ip[key] >= self.settings.maxConnectionsPerIP and not self.proxies.trusts(session.client_ip):
            self.log.info("{label}: refused {client}: too many connections from one address", label=self.label,
                          client=key)
            refusal = "[SYS/TEMP] Too many connections from your address, try again later"
        if refusal is not None:
            self.stats["refused"] += 1
            return refusal
        self.sessions.add(session)
        session.counted_as = key
        self._per_ip[key] += 1
        return None

    def release(self, session: Any) -> None:
        """A session has ended."""
        self.sessions.discard(session)
        key, session.counted_as = session.counted_as, None
        if key is not None:
            self._per_ip[key] -= 1
            if self._per_ip[key] <= 0:
                del self._per_ip[key]

    def audit_login(self, session: Any, user: str, result: str, reason: str, started: float) -> bool:
        """
        Record a login attempt in the audit log (the user name as given,
        never a password); whether it was recorded (True when no log is
        kept): a success that cannot be recorded is refused.
        """
        if self.audit is None:
            return True
        now = self.clock.seconds()
        try:
            self.audit.record(AuthLogEntry(now, printable(user), self.protocol, session.client_host, result, reason,
                                           round((now - started) * 1000, 3)))
        except Exception:  # noqa: BLE001 - whatever the audit log raises: said here, answered by the caller
            self.log.failure("could not record a {label} login attempt of {user}", label=self.label,
                             user=printable(user, 100))
            return False
        return True


class _SessionFactory(ServerFactory):
    noisy = False

    def __init__(self, server: MailAccessServer, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.server.session_class(self.server, implicit_tls=self.implicit_tls)
        protocol.factory = self
        return protocol


class MailAccessService(MultiService):
    """
    A protocol's listeners: C{listen} (plain, with STARTTLS/STLS) and
    C{implicit_tls_listen} (TLS from the first byte), logged as C{name} and
    C{name + "s"}; stopping them ends the sessions (C{server.stop()}).
    """

    def __init__(self, server: Any, reactor: Any, listen: tuple[str, ...],
                 implicit_tls_listen: tuple[str, ...]) -> None:
        super().__init__()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        self.server = server
        label = str(self.name)
        for description in listen:
            ListeningService(reactor, description, server.factory(), label).setServiceParent(self)
        for description in implicit_tls_listen:
            factory = TLSMemoryBIOFactory(server.tls_context, False, server.factory(implicit_tls=True))
            ListeningService(reactor, description, factory, label + "s").setServiceParent(self)

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        self.running = 1
        for listener in self:
            await listener.startService()  # a port in use stops the start with one line naming it

    def stopService(self) -> Deferred:
        d = super().stopService()
        d.addCallback(lambda _: self.server.stop())
        return d


__all__ = ["MailAccessServer", "MailAccessService"]
