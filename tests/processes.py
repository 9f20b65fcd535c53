"""
Helpers for integration tests that run real processes on the real reactor.

Waits are bounded and event-driven (a line on stdout, a process exit); where
only polling can tell (a file appearing), polls are short and bounded.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.error import ProcessExitedAlready

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def client_tls() -> ssl.SSLContext:
    """A client TLS context for the test servers, whose certificates are self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def maildir_messages(directory: str) -> list[bytes]:
    """The messages in a Maildir folder (such as C{new/}), by file name; [] while it does not exist."""
    if not os.path.isdir(directory):
        return []
    messages = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            messages.append(f.read())
    return messages


_handed_out: set[int] = set()
#: The lock files that hold this process's claim on the ports it handed out.
_claims: list[int] = []
_CLAIMS_DIRECTORY = os.path.join("/tmp", f"gomail-test-ports-{os.getuid()}")


def _claim(port: int) -> bool:
    """
    Claim C{port} for this process's life against every other test process.

    The bind probe alone cannot stop two parallel trial workers from being
    handed the same free port before either binds it; a CI run once failed
    that way (nginx could not bind its IMAP port, and the client reached
    another worker's server). An flock on a file per port is released by the
    kernel when the process ends, however it ends.
    """
    os.makedirs(_CLAIMS_DIRECTORY, exist_ok=True)
    claim = os.open(os.path.join(_CLAIMS_DIRECTORY, str(port)), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(claim)
        return False
    _claims.append(claim)
    return True


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Chosen below the kernel's ephemeral range: a port the kernel picked with
    C{bind(0)} can be taken, before the test's server binds it, by any
    outgoing connection of a parallel test worker (which is how a CI run once
    failed with "Address already in use"). Ports are random, so parallel
    workers rarely pick the same one; a lock file per port (L{_claim}) makes
    sure no two test processes are handed the same one.
    """
    low, _ = _ephemeral_range()
    floor = 10000 if low > 12000 else 1024
    for _ in range(1000):
        port = random.randrange(floor, low)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if not _claim(port):
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


class ServerProcess(protocol.ProcessProtocol):
    """A child process whose output is collected and can be waited on."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.exit_code: int | None = None
        self._waiters: list[tuple[bytes, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiter in list(self._waiters):
            if waiter[0] in self.output:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.exit_code = code if code is not None else -(getattr(reason.value, "signal", None) or 1)
        for text, waiter in self._waiters:
            waiter.errback(AssertionError(f"process ended before printing {text!r}:\n{self.output.decode(errors='replace')}"))
        self._waiters = []
        self.ended.callback(self.exit_code)

    def wait_for(self, text: bytes, reactor: Any, timeout: float = 30) -> defer.Deferred:
        """Fires once C{text} has appeared in the output; fails after C{timeout} seconds or at exit."""
        d: defer.Deferred = defer.Deferred()
        if text in self.output:
            d.callback(None)
            return d
        self._waiters.append((text, d))
        return d.addTimeout(timeout, reactor)

    def stop(self, reactor: Any, timeout: float = 30) -> defer.Deferred:
        """Send SIGTERM; fires with the exit code (SIGKILL after C{timeout})."""
        if self.exit_code is not None:
            return defer.succeed(self.exit_code)
        self.transport.signalProcess("TERM")
        killer = reactor.callLater(timeout, self._kill)

        def done(code: Any) -> Any:
            if killer.active():
                killer.cancel()
            return code
        return self.ended.addBoth(done)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessExitedAlready):  # it ended meanwhile: nothing to kill
            self.transport.signalProcess("KILL")


def child_processes(pid: int) -> list[int]:
    """The live child processes of C{pid}."""
    children = []
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/children") as f:
            children += [int(child) for child in f.read().split()]
    return children


def read_cmdline(pid: int) -> bytes:
    """The command line of process C{pid}, NUL-separated."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def spawn(reactor: Any, argv: list[str], cwd: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start C{argv} in C{cwd} with the current environment plus C{env}."""
    process = ServerProcess()
    environment = dict(os.environ)
    environment.update(env or {})
    environment["PYTHONUNBUFFERED"] = "1"
    reactor.spawnProcess(process, argv[0], argv, env=environment, path=cwd)
    return process


async def poll(reactor: Any, condition: Callable[[], bool], timeout: float = 20, interval: float = 0.05) -> None:
    """Wait (bounded) until C{condition()} is true."""
    waited = 0.0
    while not condition():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, interval, lambda: None)
        waited += interval


__all__ = ["TWISTD", "ServerProcess", "free_port", "poll", "signal", "spawn"]
