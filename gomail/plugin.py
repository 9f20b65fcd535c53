# -*- test-case-name: tests.test_plugins -*-
"""
What a plugin author imports: the plugin declaration, settings, verdicts and
the read-only views hooks receive. docs/plugins.md walks through writing one.

A plugin module (in the C{gomail.plugins} package, in a C{plugins.path}
directory, or a C{gomail/plugins/} drop-in of an installed package) holds a
module-level object made by L{plugin}::

    from gomail.plugin import SMTPHook, plugin, reject

    class DenyFreemail(SMTPHook):
        def __init__(self, settings, context):
            self.domains = set(settings.texts("domains"))

        def mail_from(self, session, sender):
            if sender.rpartition("@")[2] in self.domains:
                return reject("Freemail senders are not accepted here")

    deny_freemail = plugin("deny_freemail", DenyFreemail, "Refuses senders of some domains")
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from gomail.interfaces import IGomailPlugin, ISMTPHook

__all__ = [
    "DeliveryEvent",
    "MessageView",
    "PluginConfigError",
    "PluginContext",
    "SMTPHook",
    "ServiceContext",
    "SessionView",
    "Settings",
    "SourceUser",
    "Verdict",
    "accept",
    "defer",
    "header_problem",
    "plugin",
    "reject",
]

_HEADER_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0a-\x1f\x7f]{0,900}$")


class PluginConfigError(Exception):
    """A plugin's setting is wrong: C{key} (within the plugin's table) and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key, self.problem = key, problem

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}" if self.key else self.problem


class Settings:
    """
    A plugin's own table (C{[plugins.<name>]}), read through typed getters
    that name the key in their errors. Keys a plugin never asked for are
    refused once it is built (a typo does not silently do nothing).
    """

    def __init__(self, name: str, table: Mapping[str, Any]) -> None:
        self.name = name
        self._table = dict(table)
        self._read: set[str] = {"enabled"}

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        self._read.add(key)
        if key not in self._table:
            return default
        value = self._table[key]
        if isinstance(value, bool) and bool not in kinds:
            raise PluginConfigError(key, f"must be {kind_name}, got a boolean")
        if not isinstance(value, kinds):
            raise PluginConfigError(key, f"must be {kind_name}, got {type(value).__name__}")
        return value

    def text(self, key: str, default: str = "") -> str:
        """A string."""
        return str(self._get(key, default, (str,), "a string"))

    def flag(self, key: str, default: bool = False) -> bool:
        """true or false."""
        return bool(self._get(key, default, (bool,), "true or false"))

    def integer(self, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
        """A whole number in [low, high]."""
        value = int(self._get(key, default, (int,), "a whole number"))
        self._bound(key, value, low, high)
        return value

    def number(self, key: str, default: float, low: float | None = None, high: float | None = None) -> float:
        """A number in [low, high]."""
        value = float(self._get(key, default, (int, float), "a number"))
        self._bound(key, value, low, high)
        return value

    def texts(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A list of strings."""
        value = self._get(key, list(default), (list, tuple), "a list of strings")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise PluginConfigError(f"{key}[{index}]", f"must be a string, got {type(item).__name__}")
        return tuple(value)

    def tables(self, key: str) -> tuple[Mapping[str, Any], ...]:
        """A list of tables (C{[[plugins.<name>.<key>]]}), each read by the plugin itself."""
        value = self._get(key, [], (list, tuple), "a list of tables")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise PluginConfigError(f"{key}[{index}]", "must be a table")
        return tuple(value)

    @staticmethod
    def _bound(key: str, value: float, low: float | None, high: float | None) -> None:
        if (low is not None and value < low) or (high is not None and value > high):
            raise PluginConfigError(key, f"must be between {low} and {high}, got {value}")

    def unread(self) -> list[str]:
        """The keys of the table no getter asked for."""
        return [key for key in self._table if key not in self._read]


@dataclass(frozen=True)
class PluginContext:
    """What gomail gives a plugin when it is built."""

    reactor: Any
    hostname: str
    data_dir: str
    name: str = ""


@dataclass(frozen=True)
class ServiceContext:
    """
    What an L{gomail.interfaces.IServiceProvider} gets to build its services
    from: the portal every login goes through (C{twisted.cred}: log in with a
    L{gomail.auth.credentials.LoginAttempt}), the spool (its C{path("mailbox")}
    holds the local Maildirs), the configuration and the reactor; C{audit} is
    the login audit log (L{gomail.auth.authlog.AuthLog}: C{record} an
    L{gomail.auth.authlog.AuthLogEntry} per login attempt), None when
    C{nginxAuth.auditLog} is off; C{quota} the users' quota counts
    (L{gomail.mailaccess.quota.MailboxQuota}) shared with local delivery;
    C{notices} the Maildir change notices local delivery publishes
    (L{gomail.interfaces.IMailboxNotices}).
    """

    reactor: Any
    config: Any
    portal: Any
    spool: Any
    users: Any
    audit: Any = None
    quota: Any = None
    notices: Any = None


_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_TEXT = re.compile(r"^[\x20-\x7e]{1,400}$")


def header_problem(name: str, value: str) -> str | None:
    """Why C{name: value} is no header field gomail adds (a CR or LF would inject more), or None."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        return f"{name!r} is not a header field name"
    if not isinstance(value, str) or not _HEADER_VALUE.match(value):
        return f"the value of {name} must be one line of at most 900 characters without control characters"
    return None


@dataclass(frozen=True)
class Verdict:
    """
    A hook's answer: refuse with C{code status text}, or accept (adding
    C{headers} at end of data). Checked when made, however it is made: a
    reply is one printable line whose code and status agree, and header
    fields cannot carry line breaks.
    """

    code: int = 250
    status: str = "2.0.0"
    text: str = "Ok"
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (not isinstance(self.code, int) or not 200 <= self.code <= 599 or not isinstance(self.status, str)
                or not _STATUS.match(self.status) or self.status[0] != str(self.code)[0]):
            raise ValueError(f"reply {self.code!r} {self.status!r}: a 2xx, 4xx or 5xx code with a status of "
                             "the same class")
        if not isinstance(self.text, str) or not _TEXT.match(self.text):
            raise ValueError("a reply's text is one line of printable ASCII (at most 400 characters)")
        for field_ in self.headers:
            problem = header_problem(*field_) if isinstance(field_, tuple) and len(field_) == 2 else "not a pair"
            if problem:
                raise ValueError(f"header field: {problem}")

    @property
    def refused(self) -> bool:
        """Whether this is a refusal (4xx or 5xx)."""
        return self.code >= 400


def accept(headers: Mapping[str, str] | list[tuple[str, str]] | None = None) -> Verdict:
    """Go on; at end of data, add these header fields at the top of the message."""
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    # Verdict checks them: a CR or LF would let a hook (or what it copies from a client) inject headers.
    return Verdict(headers=tuple((name, value) for name, value in pairs))


def _checked(code: int, status: str, text: str, first: str) -> Verdict:
    if not (str(code).startswith(first) and len(str(code)) == 3 and status.startswith(first + ".")):
        raise ValueError(f"reply {code} {status} must be {first}xx with a {first}.x.x status")
    printable = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return Verdict(code, status, (printable or "Refused")[:400])


def reject(text: str, code: int = 550, status: str = "5.7.1") -> Verdict:
    """A permanent refusal (5xx): the client must not try again."""
    return _checked(code, status, text, "5")


def defer(text: str, code: int = 451, status: str = "4.7.1") -> Verdict:
    """A temporary refusal (4xx): the client tries again later."""
    return _checked(code, status, text, "4")


class SessionView:
    """What a hook may read of an SMTP session (it cannot change it)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    @property
    def client_address(self) -> str:
        """The client's IP address (the proxy's client, when XCLIENT named one)."""
        return str(self._session.client_host)

    @property
    def helo(self) -> str | None:
        """The HELO/EHLO name, once given."""
        return self._session.helo_name

    @property
    def tls(self) -> bool:
        """Whether the session is encrypted."""
        return bool(self._session.secure)

    @property
    def user(self) -> str | None:
        """The authenticated user's name, if any."""
        account = self._session.account
        return None if account is None else account.name

    @property
    def sender(self) -> str | None:
        """The current transaction's MAIL FROM address ("" for the null sender), if any."""
        sender = self._session.sender
        return None if sender is None else sender.address

    @property
    def recipients(self) -> tuple[str, ...]:
        """The recipients accepted so far in the current transaction."""
        return tuple(self._session.recipients)

    @property
    def trusted(self) -> bool:
        """Whether the client is in smtp.trustedNetworks (or authenticated): mail it relays is outgoing."""
        session = self._session
        return session.account is not None or session.server.policy.is_trusted(session.client_ip)

    def is_local(self, address: str) -> bool:
        """Whether C{address} is in one of the server's local domains (mail it receives for itself)."""
        return self._session.server.policy.is_local_domain(address.rpartition("@")[2].lower().rstrip("."))


@dataclass(frozen=True)
class MessageView:
    """The message at end of data: its envelope, size, and a way to read it."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    size: int
    open: Callable[[], Any]  # a binary file object over the content so far (read it off the reactor when large)


@dataclass(frozen=True)
class DeliveryEvent:
    """
    What happened to a queued message: C{kind} is C{queued}, C{delivered},
    C{deferred}, C{bounced} (a failure notice was queued) or C{failed};
    C{recipient} and C{reply} are set for per-recipient outcomes.
    """

    kind: str
    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    time: float
    recipient: str | None = None
    reply: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object (the webhook's body)."""
        return {"event": self.kind, "queue_id": self.queue_id, "sender": self.sender,
                "recipients": list(self.recipients), "time": self.time, "recipient": self.recipient,
                "reply": self.reply}


@dataclass(frozen=True)
class SourceUser:
    """A user an L{gomail.interfaces.IAuthSource} vouches for."""

    name: str
    allowed_senders: tuple[str, ...] = field(default=())


@implementer(ISMTPHook)
class SMTPHook:
    """An L{ISMTPHook} that accepts everything: subclass it and override the stages you need."""

    def __init__(self, settings: Settings | None = None, context: PluginContext | None = None) -> None:
        pass

    def connect(self, session: SessionView) -> Any:
        """At connect: None goes on."""
        return None

    def helo(self, session: SessionView, name: str) -> Any:
        """At HELO/EHLO: None goes on."""
        return None

    def authenticated(self, session: SessionView, user: str) -> Any:
        """After a successful AUTH: None goes on."""
        return None

    def mail_from(self, session: SessionView, sender: str) -> Any:
        """At MAIL FROM: None goes on."""
        return None

    def rcpt_to(self, session: SessionView, recipient: str) -> Any:
        """At RCPT TO: None goes on."""
        return None

    def end_of_data(self, session: SessionView, message: MessageView) -> Any:
        """At end of data: None queues the message as it is."""
        return None


@implementer(IPlugin, IGomailPlugin)
class _Plugin:
    def __init__(self, name: str, factory: Callable[[Settings, PluginContext], Any], description: str) -> None:
        self.name, self.factory, self.description = name, factory, description

    def build(self, settings: Settings, context: PluginContext) -> Any:
        return self.factory(settings, context)

    def __repr__(self) -> str:
        return f"<gomail plugin {self.name}>"


def plugin(name: str, factory: Callable[[Settings, PluginContext], Any], description: str = "") -> Any:
    """
    Declare a plugin: keep the result in a module-level name of a plugin
    module. C{factory(settings, context)} builds the extension object.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
        raise ValueError(f"plugin name {name!r}: lower case letters, digits, - and _")
    return _Plugin(name, factory, description or (factory.__doc__ or "").strip().split("\n")[0])
