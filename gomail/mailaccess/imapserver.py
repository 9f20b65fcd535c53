# -*- test-case-name: tests.test_imap -*-
"""
What every IMAP session shares (L{IMAPServer}: admission, the portal, the
users' Maildirs, their quota counts and change notices, TLS, the audit log,
counters) and
the listeners (L{IMAPService}), built from a plugin's
L{gomail.plugin.ServiceContext} by L{build_imap}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gomail.configmailaccess import IMAPSettings
from gomail.configschema import AuthSettings
from gomail.deferreds import deferred_coroutine
from gomail.mailaccess.access import MailAccessServer
from gomail.mailaccess.imap import GomailIMAP4
from gomail.mailaccess.imapmailbox import IMAPAccount
from gomail.mailaccess.maildir import mailbox_path
from gomail.mailaccess.notify import MailboxNotices
from gomail.mailaccess.quota import QuotaCounter
from gomail.servicekit import ListeningService
from gomail.spool.jobs.maildirjobs import safe_hostname


class IMAPServer(MailAccessServer):
    """
    The sessions of every IMAP listener and what they share.

    @param root: the directory of the users' Maildirs (the spool's C{mailbox/}).
    @param run: runs blocking work in the I/O pool (the spool's C{run}).
    @param hostname: ends the unique names of the messages APPEND and COPY store.
    @param portal: the portal every login goes through (None: logins are refused).
    @param tls_context: the server TLS context for STLS and implicit TLS (None: no TLS).
    @param auth_settings: C{[auth]} (C{maxFailuresPerSession}).
    @param audit: the login audit log (L{gomail.auth.authlog.AuthLog}); None: not kept.
    @param counter: the quota counts shared with local delivery
        (L{gomail.mailaccess.quota.QuotaCounter}); None: a counter of its own.
    @param notices: the Maildir change notices shared with local delivery
        (L{gomail.mailaccess.notify.MailboxNotices}), which wake IDLE; None: its own.
    """

    log = Logger()
    protocol, label = "imap", "IMAP"

    def __init__(self, settings: IMAPSettings, clock: Any, root: str, run: Any, hostname: str, portal: Any = None,
                 tls_context: Any = None, auth_settings: AuthSettings | None = None, audit: Any = None,
                 counter: QuotaCounter | None = None, notices: MailboxNotices | None = None) -> None:
        super().__init__(settings, clock, portal, tls_context, auth_settings, audit)
        self.root = root
        self.run = run
        self.hostname = safe_hostname(hostname)
        self.quota = counter or QuotaCounter(run, clock)
        self.notices = notices if notices is not None else MailboxNotices()

    def factory(self, implicit_tls: bool = False) -> ServerFactory:
        """A protocol factory for one listener (implicit TLS listeners wrap theirs in TLS)."""
        return _IMAPFactory(self, implicit_tls)

    async def open_account(self, user: str) -> IMAPAccount:
        """
        The Maildir of C{user} (the canonical name the portal gave) as an
        IMAP account, its subscriptions read.

        @raise gomail.mailaccess.maildir.UnsafeMailbox: no directory can be made from that name.
        """
        account = IMAPAccount(user, mailbox_path(self.root, user), self.run, self.clock, self.hostname,
                              quota=self.settings.quotaMB * 1024 * 1024, counter=self.quota)
        return await account.open()

    def stop(self) -> None:
        """No new sessions; end the open ones."""
        self.shutting_down = True
        for session in list(self.sessions):
            session.server_stopping()

    def counters(self) -> dict[str, int]:
        """For /metrics (the plugin's C{counters()}): the counts of L{stats} and the open sessions."""
        return {**{name: self.stats[name] for name in ("sessions", "refused", "logins", "login_failures")},
                "open_sessions": len(self.sessions)}


class _IMAPFactory(ServerFactory):
    noisy = False

    def __init__(self, server: IMAPServer, implicit_tls: bool) -> None:
        self.server = server
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: Any) -> Any:
        protocol = GomailIMAP4(self.server, implicit_tls=self.implicit_tls)
        protocol.factory = self
        return protocol


class IMAPService(MultiService):
    """The IMAP listeners (plain with STARTTLS, and implicit TLS); stopping them ends the sessions."""

    name = "imap"  # type: ignore[assignment]

    def __init__(self, server: IMAPServer, reactor: Any, listen: tuple[str, ...],
                 implicit_tls_listen: tuple[str, ...]) -> None:
        super().__init__()
        from twisted.protocols.tls import TLSMemoryBIOFactory

        self.server = server
        for description in listen:
            ListeningService(reactor, description, server.factory(), "imap").setServiceParent(self)
        for description in implicit_tls_listen:
            factory = TLSMemoryBIOFactory(server.tls_context, False, server.factory(implicit_tls=True))
            ListeningService(reactor, description, factory, "imaps").setServiceParent(self)

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        self.running = 1
        for listener in self:
            await listener.startService()  # a port in use stops the start with one line naming it

    def stopService(self) -> Deferred:
        d = super().stopService()
        d.addCallback(lambda _: self.server.stop())
        return d


def build_imap(context: Any) -> tuple[IMAPServer, list[Any]]:
    """
    The IMAP server and its listeners from a L{gomail.plugin.ServiceContext}:
    C{[imap]}, the Maildirs under the spool's C{mailbox/} (blocking work in
    the spool's I/O pool), the portal, the audit log, the quota counts and
    change notices local delivery shares, and SMTP's certificate.

    @raise gomail.tls.TLSConfigError: for an unusable certificate or key.
    """
    from gomail.tls import server_context

    config = context.config
    smtp = config.smtp
    tls = server_context(smtp.tlsCertificate, smtp.tlsPrivateKey, config.dataDir, smtp.hostname)
    quota = getattr(context, "quota", None)  # shared with local delivery and RCPT (gomail.mailaccess.quota)
    server = IMAPServer(config.imap, context.reactor, context.spool.path("mailbox"), context.spool.run,
                        smtp.hostname or "localhost", portal=context.portal, tls_context=tls,
                        auth_settings=config.auth, audit=getattr(context, "audit", None),
                        counter=None if quota is None else quota.counter,
                        # shared with local delivery: a delivery wakes the user's IDLE sessions
                        notices=getattr(context, "notices", None))
    return server, [IMAPService(server, context.reactor, config.imap.listen, config.imap.implicitTlsListen)]


__all__ = ["IMAPServer", "IMAPService", "build_imap"]
