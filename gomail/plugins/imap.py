# -*- test-case-name: tests.test_imap -*-
"""
The built-in C{imap} plugin: IMAP4rev1 (RFC 3501, STARTTLS, IDLE) over the
local Maildirs and their Maildir++ folders, logging in through gomail's one
portal (L{gomail.mailaccess.imap}).

It is on while C{[imap]} is (C{enabled = true}, the default: the loader adds
it as if C{[plugins.imap]} were in the file, see
L{gomail.configmailaccess}); its settings are the C{[imap]} section's, so its
own table takes none::

    [imap]
    enabled = false        # or: [plugins.imap] enabled = false
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from gomail.interfaces import IServiceProvider
from gomail.plugin import PluginContext, ServiceContext, Settings, plugin


@implementer(IServiceProvider)
class IMAPPlugin:
    """Contributes the IMAP listeners (L{gomail.mailaccess.imapserver.IMAPService})."""

    def __init__(self, settings: Settings, context: PluginContext) -> None:
        self.server: Any = None

    def services(self, context: ServiceContext) -> list[Any]:
        """The IMAP service, built from C{[imap]} and what gomail shares with its plugins."""
        from gomail.mailaccess.imapserver import build_imap

        self.server, services = build_imap(context)
        return services

    def counters(self) -> dict[str, int]:
        """Sessions, logins and refusals (C{gomail_plugin_value{plugin="imap"}})."""
        return self.server.counters() if self.server is not None else {}


imap = plugin("imap", IMAPPlugin, "IMAP4rev1 (STARTTLS, IDLE, folders) over the local Maildirs")
