"""
Fixtures for the POP3 tests: a real L{POP3Server} over Maildirs in a
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
from twisted.internet.testing import StringTransport

from gomail.auth.tickets import LoginTickets
from gomail.configmailaccess import POP3Settings
from gomail.mailaccess.maildir import MailboxLocks
from gomail.mailaccess.pop3mailbox import MaildirRealm
from gomail.mailaccess.pop3server import POP3Server
from gomail.spool.jobs.maildirjobs import mailbox_name
from gomail.state.memory import MemoryStateStore
from tests.authtesting import SECRET, MemoryUsers, auth_settings, authenticator, portal_for
from tests.smtphelpers import TLSStringTransport, run

BOB, BOB_PASSWORD = "bob@example.com", "bob-Correct-horse-1"
CAROL, CAROL_PASSWORD = "carol@example.com", "carol-Battery-staple-2"
#: What the tests' server hands to startTLS (TLSStringTransport only records it).
TLS_CONTEXT = object()


class RecordingAudit:
    """An audit log that keeps what it is given (L{gomail.auth.authlog.AuthLog}'s C{record}); C{broken} raises."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.broken = False

    def record(self, entry: Any) -> None:
        if self.broken:
            raise OSError("database is locked")
        self.entries.append(entry)


class Client:
    """One client connection: C{send} feeds bytes and returns what the server wrote since the last call."""

    def __init__(self, proto: Any, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def take(self) -> bytes:
        """What the server wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    @property
    def closed(self) -> bool:
        """Whether the server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting or getattr(self.transport, "disconnected", False))

    def lose(self) -> None:
        """The client goes away without QUIT."""
        self.proto.connectionLost(None)

    def login(self, user: str = BOB, password: str = BOB_PASSWORD, stls: bool = True) -> bytes:
        """STLS (with C{stls}, if not yet inside TLS), USER and PASS: the answer to PASS."""
        if stls and not self.proto.secure:
            assert self.send(b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
        assert self.send(b"USER " + user.encode() + b"\r\n") == b"+OK Send PASS\r\n"
        return self.send(b"PASS " + password.encode() + b"\r\n")


class POP3Harness:
    """
    A POP3 server for one test: Maildirs under C{<directory>/mailbox}, users
    C{BOB} and C{CAROL}, a recording audit log. C{settings} override
    L{POP3Settings}; C{auth} overrides the C{[auth]} settings.
    """

    def __init__(self, directory: str, auth: dict[str, Any] | None = None, verifier: Any = None,
                 **settings: Any) -> None:
        self.directory = os.path.abspath(directory)
        self.root = os.path.join(self.directory, "mailbox")
        os.makedirs(self.root, exist_ok=True)
        self.clock = Clock()
        self.users = MemoryUsers()
        self.users.add(BOB, BOB_PASSWORD)
        self.users.add(CAROL, CAROL_PASSWORD)
        self.state = MemoryStateStore(self.clock)
        self.authenticator = authenticator(self.clock, self.state, self.users, verifier, **(auth or {}))
        self.tickets = LoginTickets(SECRET, self.state, self.clock)
        self.audit = RecordingAudit()
        self.settings = dataclasses.replace(POP3Settings(), **settings)
        self.locks = MailboxLocks()
        self.server = self.build_server()

    def build_server(self) -> POP3Server:
        """A server over the same Maildirs and users (as after a restart)."""
        realm = MaildirRealm(self.root, run, self.locks)
        return POP3Server(self.settings, self.clock, realm, portal=portal_for(self.authenticator, self.tickets),
                          tls_context=TLS_CONTEXT, auth_settings=auth_settings(), audit=self.audit)

    def connect(self, host: str = "192.0.2.7", *, implicit_tls: bool = False, greet: bool = True) -> Client:
        """A client from C{host}; with C{greet}, the greeting is read and checked."""
        peer = (IPv6Address if ":" in host else IPv4Address)("TCP", host, 40000)
        transport = TLSStringTransport(peerAddress=peer)
        proto = self.server.factory(implicit_tls=implicit_tls).buildProtocol(peer)
        proto.makeConnection(transport)
        client = Client(proto, transport)
        if greet:
            greeting = client.take()
            if greeting != b"+OK gomail POP3 server ready\r\n":
                raise AssertionError(f"unexpected greeting {greeting!r}")
        return client

    def maildir(self, user: str = BOB) -> str:
        return os.path.join(self.root, mailbox_name(user))

    def deliver(self, name: str, content: bytes, user: str = BOB, mtime: float | None = None) -> str:
        """Put a message into C{new/} of the user's Maildir as delivery does; its path."""
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.maildir(user), sub), exist_ok=True)
        path = os.path.join(self.maildir(user), "new", name)
        with open(path, "wb") as f:
            f.write(content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def files(self, sub: str, user: str = BOB) -> list[str]:
        """The names in one subdirectory of the user's Maildir, sorted."""
        path = os.path.join(self.maildir(user), sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
