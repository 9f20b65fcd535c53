# -*- test-case-name: tests.test_pop3 -*-
"""
What every POP3 session shares (L{POP3Server}: admission, the portal, the
Maildir realm, TLS, the audit log, counters) and the listeners
(L{POP3Service}), built from a plugin's L{gomail.plugin.ServiceContext} by
L{build_pop3}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gomail.configmailaccess import POP3Settings
from gomail.configschema import AuthSettings
from gomail.deferreds import deferred_coroutine
from gomail.mailaccess.access import MailAccessServer
from gomail.mailaccess.maildir import MailboxLocks
from gomail.mailaccess.pop3 import GomailPOP3
from gomail.mailaccess.pop3mailbox import MaildirRealm
from gomail.servicekit import ListeningService


class POP3Server(MailAccessServer):
    """
    The sessions of every POP3 listener and what they share.

    @param realm: hands out a user's mailbox after the login (L{MaildirRealm}).
    @param portal: the portal every login goes through (None: logins are refused).
    @param tls_context: the server TLS context for STLS and implicit TLS (None: no TLS).
    @param auth_settings: C{[auth]} (C{maxFailuresPerSession}).
    @param audit: the login audit log (L{gomail.auth.authlog.AuthLog}); None: not kept.
    """

    log = Logger()
    protocol, label = "pop3", "POP3"

    def __init__(self, settings: POP3Settings, clock: Any, realm: MaildirRealm, portal: Any = None,
                 tls_context: Any = None, auth_settings: AuthSettings | None = None, audit: Any = None) -> None:
        # stats also count in_use, retrieved, top, deleted.
        super().__init__(settings, clock, portal, tls_context, auth_settings, audit)
        self.realm = realm

    def factory(self, implicit_tls: bool = False) -> ServerFactory:
        """A protocol factory for one listener (implicit TLS listeners wrap theirs in TLS)."""
        return _POP3Factory(self, implicit_tls)

    def stop(self) -> None:
        """No new sessions; end the open ones (except those removing what their client deleted)."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.server_stopping()

    def counters(self) -> dict[str, int]:
        """For /metrics (the plugin's C{counters()}): the counts of L{stats} and the open sessions."""
        return {**{name: self.stats[name] for name in ("sessions", "refused", "logins", "login_failures", "in_use",
                                                        "retrieved", "top", "deleted")},
                "open_sessions": len(self.sessions)}


class _POP3Factory(ServerFactory):
    noisy = False

    def __init__(self, server: POP3Server, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> Any:
        protocol = GomailPOP3(self.server, implicit_tls=self.implicit_tls)
        protocol.factory = self
        return protocol


class POP3Service(MultiService):
    """The POP3 listeners (plain with STLS, and implicit TLS); stopping them ends the sessions."""

    name = "pop3"  # type: ignore[assignment]

    def __init__(self, server: POP3Server, reactor: Any, listen: tuple[str, ...],
                 implicit_tls_listen: tuple[str, ...]) -> None:
        super().__init__()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        self.server = server
        for description in listen:
            ListeningService(reactor, description, server.factory(), "pop3").setServiceParent(self)
        for description in implicit_tls_listen:
            factory = TLSMemoryBIOFactory(server.tls_context, False, server.factory(implicit_tls=True))
            ListeningService(reactor, description, factory, "pop3s").setServiceParent(self)

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        self.running = 1
        for listener in self:
            await listener.startService()  # a port in use stops the start with one line naming it

    def stopService(self) -> Deferred:
        d = super().stopService()
        d.addCallback(lambda _: self.server.stop())
        return d


def build_pop3(context: Any) -> tuple[POP3Server, list[Any]]:
    """
    The POP3 server and its listeners from a L{gomail.plugin.ServiceContext}:
    C{[pop3]}, the Maildirs under the spool's C{mailbox/} (blocking work in
    the spool's I/O pool), the portal, the audit log and SMTP's certificate.

    @raise gomail.tls.TLSConfigError: for an unusable certificate or key.
    """
    from gomail.tls import server_context

    config = context.config
    smtp = config.smtp
    tls = server_context(smtp.tlsCertificate, smtp.tlsPrivateKey, config.dataDir, smtp.hostname)
    realm = MaildirRealm(context.spool.path("mailbox"), context.spool.run, MailboxLocks(),
                         quota=getattr(context, "quota", None))
    server = POP3Server(config.pop3, context.reactor, realm, portal=context.portal, tls_context=tls,
                        auth_settings=config.auth, audit=getattr(context, "audit", None))
    return server, [POP3Service(server, context.reactor, config.pop3.listen, config.pop3.implicitTlsListen)]


__all__ = ["POP3Server", "POP3Service", "build_pop3"]
