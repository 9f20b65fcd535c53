# -*- test-case-name: tests.test_gomail_testing -*-
"""
Fakes and helpers for testing gomail plugins with C{trial}: a plugin author's
tests use these, never gomail's own test suite.

- L{build_plugin}: a plugin built from its settings by gomail's own loader,
  so your settings checks are tested as operators will meet them;
- L{fake_session} and L{fake_message}: what a hook receives, for calling a
  hook directly;
- L{SMTPTestServer}: a real gomail SMTP server and spool in a directory, with
  your hooks enabled, driven over in-memory transports on a L{Clock}
  (nothing touches the network or real time): you see reply codes and the
  queued files, as a client and an operator would.

Example (docs/plugins.md has more)::

    from twisted.trial.unittest import SynchronousTestCase
    from gomail.testing import SMTPTestServer, build_plugin

    class DenyFreemailTests(SynchronousTestCase):
        def test_refused(self):
            hook = build_plugin("deny_freemail", {"domains": ["free.example"]})
            server = SMTPTestServer(self.mktemp(), hooks=[("deny_freemail", hook)])
            reply = server.connect().send(b"EHLO c.test\\r\\nMAIL FROM:<a@free.example>\\r\\n")
            self.assertIn(b"550 5.7.1", reply)
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gomail.configschema import PluginSettings, SMTPSettings
from gomail.extension.loader import load_plugins
from gomail.extension.runner import HookRunner
from gomail.extension.smtphooks import SMTPHooks
from gomail.interfaces import IHeaderFilter, ISMTPHook
from gomail.plugin import MessageView, SessionView
from gomail.smtp.policy import RelayPolicy
from gomail.smtp.server import SMTPServer
from gomail.spool.envelope import Envelope
from gomail.spool.store import Spool

__all__ = ["Clock", "SMTPTestClient", "SMTPTestServer", "build_plugin", "fake_message", "fake_session"]


def build_plugin(name: str, settings: Mapping[str, Any] | None = None, *, path: Iterable[str] = (),
                 clock: Any = None, hostname: str = "mx.test", data_dir: str = "data") -> Any:
    """
    The extension object of plugin C{name}, found and built by gomail's loader
    with C{settings} as its C{[plugins.<name>]} table (C{path}: more plugin
    directories, as C{plugins.path}).

    @raise gomail.extension.loader.PluginError: what an operator would see.
    """
    plugins = load_plugins(PluginSettings(path=tuple(path), enabled=((name, dict(settings or {})),)),
                           clock if clock is not None else Clock(), hostname, data_dir)
    return plugins.loaded[0].extension


@dataclass
class _Account:
    name: str
    allowed_senders: tuple[str, ...] = ()


@dataclass
class _FakeSession:
    client_host: str = "192.0.2.1"
    helo_name: str | None = "client.example"
    secure: bool = False
    account: Any = None
    sender: Any = None
    recipients: list[str] = field(default_factory=list)


@dataclass
class _Sender:
    address: str


def fake_session(client_address: str = "192.0.2.1", helo: str | None = "client.example", tls: bool = False,
                 user: str | None = None, sender: str | None = None,
                 recipients: Iterable[str] = ()) -> SessionView:
    """A L{SessionView} as a hook receives it, with these values."""
    return SessionView(_FakeSession(client_address, helo, tls, None if user is None else _Account(user),
                                    None if sender is None else _Sender(sender), list(recipients)))


def fake_message(content: bytes, sender: str = "sender@example.org",
                 recipients: Iterable[str] = ("rcpt@example.com",), queue_id: str = "0123456789abcdef") -> MessageView:
    """A L{MessageView} over C{content}, as an end-of-data hook receives it."""
    return MessageView(queue_id, sender, tuple(recipients), len(content), lambda: io.BytesIO(content))


class SMTPTestClient:
    """One connection to an L{SMTPTestServer}, as its client sees it."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol, self.transport = protocol, transport

    def send(self, data: bytes) -> bytes:
        """Send C{data}; returns what the server answered since the last call."""
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        """What the server wrote since the last call (answers of hooks that finished later)."""
        value = self.transport.value()
        self.transport.clear()
        return value

    def send_message(self, sender: str, recipients: Iterable[str], content: bytes,
                     helo: str = "client.example") -> bytes:
        """EHLO, MAIL, RCPT..., DATA and C{content} (CRLF lines, no final dot); returns every reply."""
        # EHLO on its own: an untrusted client may pipeline only once EHLO's reply offered PIPELINING.
        replies = self.send(f"EHLO {helo}\r\n".encode())
        commands = [f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]
        replies += self.send("".join(c + "\r\n" for c in commands).encode())
        if not replies.rstrip().endswith(b"354 End data with <CR><LF>.<CR><LF>"):
            return replies
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        stuffed = content.replace(b"\r\n.", b"\r\n..")
        return replies + self.send((b"." if stuffed.startswith(b".") else b"") + stuffed + b".\r\n")

    @property
    def closed(self) -> bool:
        """Whether the server closed the connection."""
        return bool(self.transport.disconnecting)


class SMTPTestServer:
    """
    A real gomail SMTP server over a real spool in C{directory}, with C{hooks}
    ((name, ISMTPHook or IHeaderFilter provider) pairs, in order) enabled,
    on L{clock}. Clients from 127.0.0.1 may relay anywhere; others may send to
    C{local_domains} only. Disk work happens at once, in the calling thread.
    """

    def __init__(self, directory: str, hooks: Iterable[tuple[str, Any]] = (), *, timeout: float = 10.0,
                 local_domains: Iterable[str] = ("example.com",), hostname: str = "mx.test") -> None:
        self.clock = Clock()
        self.runner = HookRunner(self.clock, timeout)
        hooks = list(hooks)
        settings = SMTPSettings(hostname=hostname, xclientHosts=(), greetingDelay=0)
        policy = RelayPolicy(settings.trustedNetworks, tuple(local_domains), require_auth=False,
                             allow_local_only=False)
        self.spool = Spool(os.path.join(os.path.abspath(directory), "spool"), self.clock, maybeDeferred)
        self.spool.prepare()
        self.server = SMTPServer(settings, policy, self.spool, self.clock, None, queue_size=100000,
                                 log_envelopes=False, hooks=SMTPHooks(
                                     self.runner, [(n, h) for n, h in hooks if ISMTPHook.providedBy(h)],
                                     [(n, h) for n, h in hooks if IHeaderFilter.providedBy(h)]))

    def connect(self, client_address: str = "127.0.0.1") -> SMTPTestClient:
        """A new connection from C{client_address}; its banner (or refusal) is read with C{take()} first."""
        address = (IPv6Address if ":" in client_address else IPv4Address)("TCP", client_address, 40000)
        transport = StringTransport(peerAddress=address)
        protocol: Any = self.server.factory().buildProtocol(address)
        protocol.makeConnection(transport)
        return SMTPTestClient(protocol, transport)

    def queued(self) -> list[tuple[Envelope, bytes]]:
        """The envelope and content of every queued message, oldest first."""
        directory = self.spool.path("queue")
        found = []
        for name in sorted(os.listdir(directory)):
            if name.endswith(".json"):
                with open(os.path.join(directory, name), "rb") as f:
                    envelope = Envelope.from_json(f.read())
                with open(os.path.join(directory, name[:-5] + ".eml"), "rb") as f:
                    found.append((envelope, f.read()))
        return sorted(found, key=lambda pair: pair[0].received)
