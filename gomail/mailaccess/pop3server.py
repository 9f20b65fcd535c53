# -*- test-case-name: tests.test_pop3 -*-
"""
What every POP3 session shares (L{POP3Server}: admission, the portal, the
Maildir realm, TLS, the audit log, counters) and the listeners
(L{POP3Service}), built from a plugin's L{gomail.plugin.ServiceContext} by
L{build_pop3}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from gomail.configmailaccess import POP3Settings
from gomail.configschema import AuthSettings
from gomail.mailaccess.access import MailAccessServer, MailAccessService
from gomail.mailaccess.maildir import MailboxLocks
from gomail.mailaccess.pop3 import GomailPOP3
from gomail.mailaccess.pop3mailbox import MaildirRealm


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
    session_class = GomailPOP3

    def __init__(self, settings: POP3Settings, clock: Any, realm: MaildirRealm, portal: Any = None,
                 tls_context: Any = None, auth_settings: AuthSettings | None = None, audit: Any = None) -> None:
        # stats also count in_use, retrieved, top, deleted.
        super().__init__(settings, clock, portal, tls_context, auth_settings, audit)
        self.realm = realm

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


class POP3Service(MailAccessService):
    """The POP3 listeners (plain with STLS, and implicit TLS); stopping them ends the sessions."""

    name = "pop3"  # type: ignore[assignment]


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
