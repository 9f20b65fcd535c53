# -*- test-case-name: tests.test_plugins_builtin -*-
"""
The built-in C{sender-policy} plugin: refuse or defer mail by sender domain,
by client network, or by the number of recipients.

    [plugins.sender-policy]
    rejectSenderDomains = ["spam.example"]     # MAIL FROM: 550 5.7.1
    deferSenderDomains = ["slow.example"]      # MAIL FROM: 451 4.7.1
    rejectNetworks = ["192.0.2.0/24"]          # at connect: 554 5.7.1
    deferNetworks = []                         # at connect: 421 4.7.0
    maxRecipients = 50                         # RCPT beyond it: 452 4.5.3
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gomail.plugin import (
    PluginConfigError,
    SessionView,
    Settings,
    SMTPHook,
    Verdict,
    defer,
    plugin,
    reject,
)


def _networks(settings: Settings, key: str) -> tuple[Any, ...]:
    networks = []
    for index, text in enumerate(settings.texts(key)):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise PluginConfigError(f"{key}[{index}]", f"{text!r} is not an IP network") from None
    return tuple(networks)


class SenderPolicy(SMTPHook):
    """Refuses or defers by sender domain, client network or recipient count."""

    def __init__(self, settings: Settings, context: Any = None) -> None:
        self.reject_domains = frozenset(d.lower().rstrip(".") for d in settings.texts("rejectSenderDomains"))
        self.defer_domains = frozenset(d.lower().rstrip(".") for d in settings.texts("deferSenderDomains"))
        self.reject_networks = _networks(settings, "rejectNetworks")
        self.defer_networks = _networks(settings, "deferNetworks")
        self.max_recipients = settings.integer("maxRecipients", 0, low=0)
        self.text = settings.text("rejectText", "Sender refused by local policy")

    def _in(self, session: SessionView, networks: tuple[Any, ...]) -> bool:
        try:
            address = ipaddress.ip_address(session.client_address)
        except ValueError:
            return False  # a UNIX socket peer
        return any(address in network for network in networks)

    def connect(self, session: SessionView) -> Verdict | None:
        """Refuse or defer clients of the listed networks."""
        if self._in(session, self.reject_networks):
            return reject(f"Access denied: {self.text}", 554, "5.7.1")
        if self._in(session, self.defer_networks):
            return defer("Service not available for your address now, try again later", 421, "4.7.0")
        return None

    def mail_from(self, session: SessionView, sender: str) -> Verdict | None:
        """Refuse or defer senders of the listed domains."""
        domain = sender.rpartition("@")[2].lower().rstrip(".")
        if domain in self.reject_domains:
            return reject(f"<{sender}>: {self.text}")
        if domain in self.defer_domains:
            return defer(f"<{sender}>: Sender temporarily refused, try again later")
        return None

    def rcpt_to(self, session: SessionView, recipient: str) -> Verdict | None:
        """Defer recipients past maxRecipients."""
        if self.max_recipients and len(session.recipients) >= self.max_recipients:
            return defer("Too many recipients for one message, send the rest separately", 452, "4.5.3")
        return None


sender_policy = plugin("sender-policy", SenderPolicy, "Refuses or defers by sender domain, network or recipient count")
