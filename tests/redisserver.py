"""
A real C{redis-server} for tests: a child process on a free port of 127.0.0.1,
with no persistence, its files in a test's temporary directory.

Tests that need one call L{start_redis} from a test (it adds the cleanup). When
C{redis-server} is not installed they are skipped, except under CI (the C{CI}
environment variable is set), where a missing server is a failure.
"""

from __future__ import annotations

import os
import shutil
from typing import Any
from unittest import SkipTest

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import TestCase

from tests.processes import ServerProcess, free_port, spawn


def redis_server_path() -> str:
    """The C{redis-server} program; skips the test without it, fails it under CI."""
    path = shutil.which("redis-server")
    if path is not None:
        return path
    if os.environ.get("CI"):
        raise AssertionError("redis-server is not on PATH, and CI requires the Redis tests to run")
    raise SkipTest("redis-server is not on PATH")


class _Ping(protocol.Protocol):
    """Sends PING and fires C{answered} with the first reply line."""

    def __init__(self) -> None:
        self.answered: defer.Deferred = defer.Deferred()
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and not self.answered.called:
            self.answered.callback(self._buffer.split(b"\r\n", 1)[0])
            self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if not self.answered.called:
            self.answered.errback(reason)


async def answers_ping(reactor: Any, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers on 127.0.0.1:C{port} (NOAUTH counts: it is up)."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    try:
        client = await endpoint.connect(protocol.Factory.forProtocol(_Ping))
        reply = await client.answered.addTimeout(timeout, reactor)
    except Exception:  # noqa: BLE001 - any failure to get an answer means "not up yet"
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """One C{redis-server} child process that can be stopped and started again on its port."""

    def __init__(self, reactor: Any, directory: str, password: str | None = None) -> None:
        self.reactor = reactor
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: ServerProcess | None = None

    @property
    def url(self) -> str:
        """C{redis://} URL of the server, password included."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self, tries: int = 100, interval: float = 0.05) -> None:
        """Start the server and wait (at most C{tries} polls) until it answers PING."""
        argv = [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.directory]
        if self.password:
            argv += ["--requirepass", self.password]
        os.makedirs(self.directory, exist_ok=True)
        process = self.process = spawn(self.reactor, argv, self.directory)
        for _ in range(tries):
            if process.exit_code is not None:
                break
            if await answers_ping(self.reactor, self.port):
                return
            await task.deferLater(self.reactor, interval, lambda: None)
        output = process.output.decode(errors="replace")
        await self.stop()
        raise AssertionError(f"redis-server on port {self.port} did not answer PING:\n{output}")

    async def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 10 s) and wait for it to exit."""
        process, self.process = self.process, None
        if process is not None:
            await process.stop(self.reactor, timeout=10)

    async def restart(self) -> None:
        """Stop the server if it runs, then start it again on the same port."""
        await self.stop()
        await self.start()


async def start_redis(testcase: TestCase, reactor: Any, password: str | None = None) -> RedisServer:
    """A started L{RedisServer} in a temporary directory of C{testcase}, stopped at cleanup."""
    server = RedisServer(reactor, os.path.abspath(testcase.mktemp()), password)
    testcase.addCleanup(lambda: defer.Deferred.fromCoroutine(server.stop()))
    await server.start()
    return server


__all__ = ["RedisServer", "answers_ping", "redis_server_path", "start_redis"]
