# -*- test-case-name: tests.test_pop3 -*-
"""
The built-in C{pop3} plugin: POP3 (RFC 1939, STLS, CAPA, UIDL, TOP) over the
local Maildirs, logging in through gomail's one portal
(L{gomail.mailaccess.pop3}).

It is on while C{[pop3]} is (C{enabled = true}, the default: the loader adds
it as if C{[plugins.pop3]} were in the file, see
L{gomail.configmailaccess}); its settings are the C{[pop3]} section's, so its
own table takes none::

    [pop3]
    enabled = false        # or: [plugins.pop3] enabled = false
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from gomail.interfaces import IServiceProvider
from gomail.plugin import PluginContext, ServiceContext, Settings, plugin


@implementer(IServiceProvider)
class POP3Plugin:
    """Contributes the POP3 listeners (L{gomail.mailaccess.pop3server.POP3Service})."""

    def __init__(self, settings: Settings, context: PluginContext) -> None:
        self.server: Any = None

    def services(self, context: ServiceContext) -> list[Any]:
        """The POP3 service, built from C{[pop3]} and what gomail shares with its plugins."""
        from gomail.mailaccess.pop3server import build_pop3

        self.server, services = build_pop3(context)
        return services

    def counters(self) -> dict[str, int]:
        """Sessions, logins, refusals and messages (C{gomail_plugin_value{plugin="pop3"}})."""
        return self.server.counters() if self.server is not None else {}


pop3 = plugin("pop3", POP3Plugin, "POP3 (STLS, UIDL, TOP) over the local Maildirs")
