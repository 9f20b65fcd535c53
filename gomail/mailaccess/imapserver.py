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

from twisted.logger import Logger

from gomail.configmailaccess import IMAPSettings
from gomail.configschema import AuthSettings
from gomail.mailaccess.access import MailAccessServer, MailAccessService
from gomail.mailaccess.imap import GomailIMAP4
from gomail.mailaccess.imapmailbox import IMAPAccount
from gomail.mailaccess.maildir import mailbox_path
from gomail.mailaccess.notify import MailboxNotices
from gomail.mailaccess.quota import QuotaCounter
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
    session_class = GomailIMAP4

    def __init__(self, settings: IMAPSettings, clock: Any, root: str, run: Any, hostname: str, portal: Any = None,
                 tls_context: Any = None, auth_settings: AuthSettings | None = None, audit: Any = None,
                 counter: QuotaCounter | None = None, notices: MailboxNotices | None = None) -> None:
        super().__init__(settings, clock, portal, tls_context, auth_settings, audit)
        self.root = root
        self.run = run
        self.hostname = safe_hostname(hostname)
        self.quota = counter or QuotaCounter(run, clock)
        self.notices = notices if notices is not None else MailboxNotices()

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


class IMAPService(MailAccessService):
    """The IMAP listeners (plain with STARTTLS, and implicit TLS); stopping them ends the sessions."""

    name = "imap"  # type: ignore[assignment]


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
