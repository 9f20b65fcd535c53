"""
Fixtures for the IMAP tests: a real L{IMAPServer} over Maildirs in a
temporary directory and gomail's real login chain (in-memory users and
state, bcrypt at test cost), driven through in-memory transports on a
L{task.Clock}. Nothing here touches the network, the global reactor or real
time; the I/O pool's work runs at once on the calling thread.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock

from gomail.auth.tickets import LoginTickets
from gomail.configmailaccess import IMAPSettings
from gomail.mailaccess.imapserver import IMAPServer
from gomail.spool.jobs.maildirjobs import mailbox_name
from gomail.state.memory import MemoryStateStore
from tests.authtesting import SECRET, MemoryUsers, auth_settings, authenticator, portal_for
from tests.pop3testing import BOB, BOB_PASSWORD, CAROL, CAROL_PASSWORD, TLS_CONTEXT, RecordingAudit
from tests.smtphelpers import TLSStringTransport, run

__all__ = ["BOB", "BOB_PASSWORD", "CAROL", "CAROL_PASSWORD", "TLS_CONTEXT", "IMAPClient", "IMAPHarness"]


class IMAPClient:
    """One client connection: C{send} feeds a line and returns what the server wrote since the last call."""

    def __init__(self, proto: Any, transport: TLSStringTransport, clock: Clock) -> None:
        self.proto = proto
        self.transport = transport
        self.clock = clock

    def take(self) -> bytes:
        """What the server wrote since the last call (calls due now, such as held commands, run first)."""
        for _ in range(100):
            if not any(call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()):
                break
            self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        """Feed C{data} to the server: what it wrote since the last call."""
        self.proto.dataReceived(data)
        return self.take()

    def lines(self, data: bytes) -> list[bytes]:
        """C{send}, split into lines."""
        return self.send(data).split(b"\r\n")[:-1]

    @property
    def closed(self) -> bool:
        """Whether the server closed (or is closing) the connection."""
        return bool(self.transport.disconnecting or getattr(self.transport, "disconnected", False))

    def starttls(self) -> None:
        """STARTTLS, which must be accepted."""
        answer = self.send(b"s1 STARTTLS\r\n")
        assert answer == b"s1 OK Begin TLS negotiation now\r\n", answer

    def login(self, user: str = BOB, password: str = BOB_PASSWORD, tls: bool = True) -> bytes:
        """STARTTLS (with C{tls}, if not yet inside TLS), then LOGIN: the answer."""
        if tls and not self.proto.secure:
            self.starttls()
        return self.send(b'l1 LOGIN "' + user.encode() + b'" "' + password.encode() + b'"\r\n')


class IMAPHarness:
    """
    An IMAP server for one test: Maildirs under C{<directory>/mailbox}, users
    C{BOB} and C{CAROL}, a recording audit log. C{settings} override
    L{IMAPSettings}; C{auth} overrides the C{[auth]} settings.
    """

    def __init__(self, directory: str, auth: dict[str, Any] | None = None, verifier: Any = None,
                 **settings: Any) -> None:
        self.directory = os.path.abspath(directory)
        self.root = os.path.join(self.directory, "mailbox")
        os.makedirs(self.root, exist_ok=True)
        self.clock = Clock()
        self.clock.advance(1_750_000_000)
        self.users = MemoryUsers()
        self.users.add(BOB, BOB_PASSWORD)
        self.users.add(CAROL, CAROL_PASSWORD)
        self.state = MemoryStateStore(self.clock)
        self.authenticator = authenticator(self.clock, self.state, self.users, verifier, **(auth or {}))
        self.tickets = LoginTickets(SECRET, self.state, self.clock)
        self.audit = RecordingAudit()
        self.settings = dataclasses.replace(IMAPSettings(), **settings)
        self.server = self.build_server()

    def build_server(self) -> IMAPServer:
        """A server over the same Maildirs and users (as after a restart)."""
        return IMAPServer(self.settings, self.clock, self.root, run, "mx.test",
                          portal=portal_for(self.authenticator, self.tickets), tls_context=TLS_CONTEXT,
                          auth_settings=auth_settings(), audit=self.audit)

    def connect(self, host: str = "192.0.2.7", *, implicit_tls: bool = False, greet: bool = True) -> IMAPClient:
        """A new connection from C{host} (the greeting taken and checked, with C{greet})."""
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        transport = TLSStringTransport(peerAddress=peer)
        proto = self.server.factory(implicit_tls=implicit_tls).buildProtocol(peer)
        proto.makeConnection(transport)
        client = IMAPClient(proto, transport, self.clock)
        if greet:
            greeting = client.take()
            if not greeting.startswith(b"* OK [CAPABILITY IMAP4rev1"):
                raise AssertionError(f"unexpected greeting {greeting!r}")
        return client

    def logged_in(self, user: str = BOB, password: str = BOB_PASSWORD, **kwargs: Any) -> IMAPClient:
        """A new connection, logged in as C{user} (after STARTTLS)."""
        client = self.connect(**kwargs)
        answer = client.login(user, password)
        assert b"l1 OK" in answer, answer
        return client

    def maildir(self, user: str = BOB) -> str:
        """The user's Maildir (INBOX)."""
        return os.path.join(self.root, mailbox_name(user))

    def deliver(self, name: str, content: bytes, user: str = BOB, mtime: float | None = None,
                folder: str = "") -> str:
        """Put a message into C{new/} of the user's Maildir (or of a folder directory) as delivery does."""
        base = os.path.join(self.maildir(user), folder)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        path = os.path.join(base, "new", name)
        with open(path, "wb") as f:
            f.write(content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def files(self, sub: str, user: str = BOB, folder: str = "") -> list[str]:
        """The file names in C{sub} (cur, new, tmp) of the user's Maildir or one of its folders, sorted."""
        path = os.path.join(self.maildir(user), folder, sub)
        return sorted(n for n in os.listdir(path) if not n.startswith(".")) if os.path.isdir(path) else []
