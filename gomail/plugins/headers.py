# -*- test-case-name: tests.test_plugins_builtin -*-
"""
The built-in C{headers} plugin: removes header fields from every message as
it streams in, and adds header fields at end of data, by rule.

    [plugins.headers]
    remove = ["X-Mailer", "X-Originating-IP"]

    [[plugins.headers.add]]
    name = "X-Relayed-By"
    value = "gomail {queue_id}"       # {queue_id} {client_address} {helo} {user} {sender}
    authenticated = true              # optional: only for (un)authenticated senders
    senderDomains = ["example.com"]   # optional: only for these sender domains
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface import implementer

from gomail.interfaces import IHeaderFilter
from gomail.plugin import (
    MessageView,
    PluginConfigError,
    SessionView,
    Settings,
    SMTPHook,
    accept,
    header_problem,
    plugin,
)

_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")
_TOKENS = ("queue_id", "client_address", "helo", "user", "sender")


@dataclass(frozen=True)
class AddRule:
    """One header field to add, and when."""

    name: str
    value: str
    authenticated: bool | None
    sender_domains: frozenset[str]

    def applies(self, session: SessionView, sender: str) -> bool:
        if self.authenticated is not None and self.authenticated != (session.user is not None):
            return False
        return not self.sender_domains or sender.rpartition("@")[2].lower() in self.sender_domains

    def render(self, session: SessionView, message: MessageView) -> str:
        values = {"queue_id": message.queue_id, "client_address": session.client_address,
                  "helo": session.helo or "", "user": session.user or "", "sender": message.sender}
        text = self.value
        for token in _TOKENS:
            text = text.replace("{" + token + "}", values[token])
        return " ".join(text.split())  # no line breaks from what a client chose (its HELO, its sender)


def _rule(index: int, table: Mapping[str, Any]) -> AddRule:
    rule = Settings(f"add[{index}]", table)
    key = f"add[{index}]"
    try:
        name = rule.text("name")
        value = rule.text("value")
        authenticated = rule.flag("authenticated") if "authenticated" in table else None
        domains = frozenset(d.lower() for d in rule.texts("senderDomains"))
    except PluginConfigError as e:
        raise PluginConfigError(f"{key}.{e.key}", e.problem) from None
    if not _NAME.match(name):
        raise PluginConfigError(f"{key}.name", f"{name!r} is not a header field name")
    if any(c in value for c in "\r\n\0"):
        raise PluginConfigError(f"{key}.value", "must be one line")
    # What accept() will check at every message, checked once here (placeholders filled with a long name).
    problem = header_problem(name, value.replace("{", "").replace("}", "") + "x" * 255)
    if problem:
        raise PluginConfigError(f"{key}.value", problem)
    unread = rule.unread()
    if unread:
        raise PluginConfigError(f"{key}.{unread[0]}", "unknown key")
    return AddRule(name, value, authenticated, domains)


@implementer(IHeaderFilter)
class Headers(SMTPHook):
    """Removes header fields from every message, and adds them by rule."""

    def __init__(self, settings: Settings, context: Any = None) -> None:
        names = settings.texts("remove")
        for index, name in enumerate(names):
            if not _NAME.match(name):
                raise PluginConfigError(f"remove[{index}]", f"{name!r} is not a header field name")
        self.removed = frozenset(name.lower() for name in names)
        self.rules = tuple(_rule(i, table) for i, table in enumerate(settings.tables("add")))
        if not self.removed and not self.rules:
            raise PluginConfigError("", "nothing to do: give remove or add")

    def drops(self, name: str) -> bool:
        """Whether C{name} (lower case) is one of C{remove}."""
        return name in self.removed

    def end_of_data(self, session: SessionView, message: MessageView) -> Any:
        """The fields of the rules that apply to this message."""
        added = [(rule.name, rule.render(session, message)) for rule in self.rules
                 if rule.applies(session, message.sender)]
        return accept(added) if added else None


headers = plugin("headers", Headers, "Removes header fields from every message and adds them by rule")
