"""
Fixtures for the SMTP server tests: a real L{SMTPServer} over a real L{Spool}
in a temporary directory, driven through in-memory transports on a
L{task.Clock}. Nothing here touches the network, the global reactor or
real time.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.configschema import SMTPSettings
from gomail.interfaces import ISpoolWriter
from gomail.smtp.policy import RelayPolicy
from gomail.smtp.protocol import GomailESMTP
from gomail.smtp.server import SMTPServer
from gomail.spool.envelope import Envelope
from gomail.spool.fs import FileSystem
from gomail.spool.jobs import SpoolFiles
from gomail.spool.store import Spool
from gomail.spool.writer import run_batch

HOSTNAME = "mx.test"
LOCAL_DOMAIN = "example.com"
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9a-f]+)\r\n", re.MULTILINE)


def run(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
    """The spool's C{run}, synchronously: the blocking call happens right here."""
    return maybeDeferred(f, *args, **kwargs)


@implementer(ISpoolWriter)
class ManualRun:
    """
    A spool C{run} whose calls wait until L{release}: lets a test look at a
    session while its disk work is still "in the I/O pool".
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple, dict, Deferred]] = []
        self.synchronous = False

    def __call__(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        if self.synchronous:
            return maybeDeferred(f, *args, **kwargs)
        d: Deferred = Deferred()
        self.pending.append((f, args, kwargs, d))
        return d

    #: As the in-process writers: jobs may be handed descriptors.
    in_process = True

    #: The files its jobs use (as an ISpoolWriter): set to the spool's by the harness.
    files: SpoolFiles

    def run(self, job: Callable[..., Any], **arguments: Any) -> Deferred:
        """The spool writer's interface (ISpoolWriter): the durable job waits like any other call."""
        return self(_run_job, functools.partial(job, self.files, **arguments))

    def release_one(self) -> None:
        """Run the oldest waiting call, only it."""
        f, args, kwargs, d = self.pending.pop(0)
        maybeDeferred(f, *args, **kwargs).chainDeferred(d)

    def release(self) -> None:
        """Run every waiting call (and any they start), in order."""
        while self.pending:
            f, args, kwargs, d = self.pending.pop(0)
            maybeDeferred(f, *args, **kwargs).chainDeferred(d)


def _run_job(job: Callable[[], Any]) -> Any:
    [(ok, value)] = run_batch([job], job.args[0].fs)
    if not ok:
        value.raiseException()
    return value


class FailingFsync(FileSystem):
    """A file system whose fsync fails (with EIO, or L{error}) once L{armed}."""

    def __init__(self) -> None:
        self.armed = False
        self.error = OSError(errno.EIO, "Input/output error")

    def fsync(self, fd: int) -> None:
        if self.armed:
            raise OSError(self.error.errno, self.error.strerror)
        super().fsync(fd)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A L{StringTransport} that can "start TLS": it only records the call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls_started_with: list[Any] = []

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_started_with.append(contextFactory)


_tls_context: Any = None


def tls_context(directory: str) -> Any:
    """A self-signed server context (generated once per test process, in C{directory})."""
    global _tls_context
    if _tls_context is None:
        from gomail.tls import server_context

        _tls_context = server_context("", "", directory, HOSTNAME)
    return _tls_context


def settings(**overrides: Any) -> SMTPSettings:
    """Default SMTP settings for C{mx.test} (no XCLIENT peers: tests.test_smtp_xclient sets them), with C{overrides}."""
    return dataclasses.replace(SMTPSettings(hostname=HOSTNAME, xclientHosts=()), **overrides)


def replies(data: bytes) -> list[bytes]:
    """The reply lines in C{data}, without their CRLF."""
    return data.split(b"\r\n")[:-1] if data else []


def queued_id(data: bytes) -> str:
    """The queue id in a C{250 2.0.0 Ok: queued as <id>} reply (fails if there is none)."""
    match = QUEUED.search(data)
    if match is None:
        raise AssertionError(f"no 'queued as' reply in {data!r}")
    return match.group(1).decode("ascii")


class Client:
    """One connection to the server under test, as the client sees it."""

    def __init__(self, proto: GomailESMTP, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport

    def send(self, data: bytes) -> bytes:
        """Deliver C{data} in one read; return everything the server wrote since the last call."""
        self.proto.dataReceived(data)
        return self.take()

    def send_chunks(self, chunks: list[bytes]) -> bytes:
        """Deliver C{chunks} as separate reads; return everything written meanwhile."""
        for chunk in chunks:
            self.proto.dataReceived(chunk)
        return self.take()

    def take(self) -> bytes:
        """What the server wrote since the last call."""
        value = self.transport.value()
        self.transport.clear()
        return value

    @property
    def closed(self) -> bool:
        """Whether the server closed (or aborted) the connection."""
        return bool(self.transport.disconnecting)

    def lose(self) -> None:
        """Deliver the end of the connection to the protocol."""
        self.proto.connectionLost(Failure(ConnectionDone()))

    def start_transaction(self, sender: bytes = b"alice@example.org",
                          recipients: tuple[bytes, ...] = (b"bob@example.com",)) -> None:
        """EHLO, MAIL, RCPT..., DATA, asserting that each is accepted."""
        lines = [b"EHLO client.test", b"MAIL FROM:<" + sender + b">"]
        lines += [b"RCPT TO:<" + r + b">" for r in recipients]
        lines.append(b"DATA")
        got = replies(self.send(b"".join(line + b"\r\n" for line in lines)))
        expected_last = b"354 End data with <CR><LF>.<CR><LF>"
        if not got or got[-1] != expected_last or any(r[:1] in (b"4", b"5") for r in got):
            raise AssertionError(f"transaction not opened: {got!r}")


class SMTPHarness:
    """
    A server with its spool, clock and relay policy, for one test.

    The spool lives in C{directory}; its I/O runs synchronously unless a C{run}
    is given (a L{ManualRun} also holds the spool writer's durable jobs). Clients connect from 127.0.0.1 (trusted) unless told otherwise.
    """

    def __init__(self, directory: str, *, tls: bool = False, queue_size: int = 1000,
                 run: Callable[..., Deferred] = run, fs: FileSystem | None = None,
                 min_free_bytes: int = 0, local_domains: tuple[str, ...] = (LOCAL_DOMAIN,),
                 require_auth: bool = False, allow_local_only: bool = False,
                 portal: Any = None, rate_limiter: Any = None, auth_settings: Any = None,
                 **setting_overrides: Any) -> None:
        self.directory = directory
        self.clock = Clock()
        self.settings = settings(**setting_overrides)
        self.policy = RelayPolicy(self.settings.trustedNetworks, local_domains,
                                  require_auth=require_auth, allow_local_only=allow_local_only)
        self.spool = Spool(os.path.join(directory, "spool"), self.clock, run, fs=fs,
                           min_free_bytes=min_free_bytes, writer=run if isinstance(run, ManualRun) else None)
        if isinstance(run, ManualRun):
            run.files = self.spool.files
        self.spool.prepare()
        self.tls_context = tls_context(os.path.join(directory, "tls-data")) if tls else None
        self.server = SMTPServer(self.settings, self.policy, self.spool, self.clock, self.tls_context,
                                 queue_size=queue_size, log_envelopes=True, portal=portal,
                                 rate_limiter=rate_limiter, auth_settings=auth_settings)

    def connect(self, host: str = "127.0.0.1", *, tls_transport: bool = False,
                implicit_tls: bool = False, greet: bool = True) -> Client:
        """
        Open a connection from C{host}. With C{greet}, the server's first line
        is consumed and checked to be the 220 banner.
        """
        address_type = IPv6Address if ":" in host else IPv4Address
        peer = address_type("TCP", host, 12345)
        transport_type = TLSStringTransport if tls_transport else StringTransport
        transport = transport_type(peerAddress=peer)
        proto = self.server.factory(implicit_tls=implicit_tls).buildProtocol(peer)
        proto.makeConnection(transport)
        client = Client(proto, transport)
        if greet and not proto.greeted and proto.admitted:
            self.clock.advance(self.settings.greetingDelay)  # an untrusted client waits for its banner
        if greet:
            banner = client.take()
            if banner != b"220 mx.test ESMTP gomail\r\n":
                raise AssertionError(f"unexpected banner {banner!r}")
        return client

    def files(self, subdirectory: str) -> list[str]:
        """The names in one spool subdirectory (tmp, queue, ...), sorted."""
        return sorted(os.listdir(self.spool.path(subdirectory)))

    def content(self, queue_id: str) -> bytes:
        """A queued message's stored content."""
        with open(self.spool.path("queue", queue_id + ".eml"), "rb") as f:
            return f.read()

    def envelope(self, queue_id: str) -> Envelope:
        """A queued message's stored envelope."""
        with open(self.spool.path("queue", queue_id + ".json"), "rb") as f:
            return Envelope.from_json(f.read())

    def spool_is_empty(self) -> bool:
        """Whether neither tmp/ nor queue/ holds anything."""
        return not self.files("tmp") and not self.files("queue")


class HarnessMixin:
    """For trial test cases: C{self.harness(...)} builds an L{SMTPHarness} in a fresh temp dir."""

    def harness(self, **kwargs: Any) -> SMTPHarness:
        return SMTPHarness(self.mktemp(), **kwargs)  # type: ignore[attr-defined]
