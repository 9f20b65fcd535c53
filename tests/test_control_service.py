"""
The control channel on a real Unix socket (L{gomail.control.server.ControlService}
on the real reactor): the socket's mode and life, stale sockets, and the
C{gomail queue} command (a real process) asking the running service.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

import gomail
from gomail.control import SocketPath
from gomail.control.client import ControlClient, ControlError
from gomail.control.commands import Status
from gomail.control.server import ControlService, ControlSocketError, QueueControl
from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from tests.spooltesting import listing, make_spool, new_envelope
from tests.test_delivery_queue import CONTENT, START, ScriptedAgent

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))


class ControlServiceTestCase(TestCase):
    """A spool with its delivery queue (on a Clock, around a scripted agent) and a control service for it."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        # A path longer than a Unix socket address can hold (108 bytes), wherever the tests run.
        self.directory = os.path.join(os.path.abspath(self.mktemp()), "a-spool-directory-deep-down-" * 4)
        self.spool = make_spool(os.path.join(self.directory, "spool"), self.clock)
        self.failed = FailedStore(self.spool, self.clock)
        self.agent = ScriptedAgent()
        policy = RetryPolicy(initial=300, factor=2, maximum=3600, jitter=0.2, max_age=5 * 86400)
        self.queue = DeliveryQueue(self.spool, Router(self.agent), self.clock, 5, processing_timeout=300,
                                   policy=policy, failed=self.failed, hostname="mx.test", random=lambda: 0.5)
        self.spool.add_listener(self.queue.enqueue)
        self.queue.startService()
        self.addCleanup(self.queue.stopService)
        self.service = ControlService(reactor, QueueControl(self.spool, self.queue, self.failed))
        self.socket = os.path.join(self.spool.directory, "control.sock")
        self.config = os.path.join(self.directory, "gomail.toml")
        with open(self.config, "w") as f:
            f.write(f"[spool]\ndirectory = {json.dumps(self.spool.directory)}\n")

    async def start(self) -> None:
        await self.service.startService()
        self.addCleanup(self.stop)

    def stop(self) -> Deferred | None:
        return self.service.stopService() if self.service.running else None

    def listen_elsewhere(self) -> Any:
        """Another listener on the control socket's path, which accepts and never answers."""
        path = SocketPath(self.spool.directory)
        self.addCleanup(path.close)  # after stopListening, which removes the socket through it
        port = reactor.listenUNIX(path.address, Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        return port

    def commit(self, *recipients: str) -> str:
        message = self.spool.new_message()
        message.write(CONTENT)
        envelope = new_envelope(message.id, *recipients, received=self.clock.seconds())
        envelope.next_attempt = self.clock.seconds()
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        self.clock.advance(1)
        return message.id

    def gomail(self, *argv: str) -> Deferred:
        """Run C{python -m gomail.cli queue ARGV --config FILE} as a process; fires with its CompletedProcess."""
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8"}
        return deferToThread(subprocess.run, [sys.executable, "-m", "gomail.cli", "queue", *argv,
                                              "--config", self.config],
                             cwd=self.directory, env=env, capture_output=True, text=True, timeout=60)


class SocketTests(ControlServiceTestCase):
    """The socket file: where, which mode, and what happens to one found at start."""

    async def test_mode_and_life(self) -> None:
        """
        The socket is <spool>/control.sock, mode 0600 (the server's user only),
        even for a spool path too long for a Unix socket address; it is gone
        after stop.
        """
        self.assertGreater(len(self.socket), 107)
        await self.start()
        mode = os.stat(self.socket).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        await self.service.stopService()
        self.assertFalse(os.path.exists(self.socket))

    async def test_stale_socket_replaced(self) -> None:
        """A socket file nothing answers on (left by a server that died) is removed, with a line saying so."""
        with SocketPath(self.spool.directory) as path:
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path.address)
            stale.close()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        await self.start()
        self.assertTrue(any("removed a stale control socket" in e.get("log_format", "") for e in events))
        client = await deferToThread(ControlClient.connect, self.spool.directory, 10)
        self.assertIsNotNone(client)
        client.close()

    async def test_live_socket_kept(self) -> None:
        """A socket something answers on is left alone: the start fails, naming it."""
        self.listen_elsewhere()
        with self.assertRaises(ControlSocketError) as caught:
            await self.service.startService()
        self.assertIn(f"another process answers on {self.socket}", str(caught.exception))
        self.assertTrue(stat.S_ISSOCK(os.stat(self.socket).st_mode))

    async def test_not_a_socket(self) -> None:
        """A file that is not a socket is never removed: the start fails, naming it."""
        with open(self.socket, "w") as f:
            f.write("keep me")
        with self.assertRaises(ControlSocketError) as caught:
            await self.service.startService()
        self.assertIn("exists and is not a socket", str(caught.exception))
        with open(self.socket) as f:
            self.assertEqual(f.read(), "keep me")


class CommandTests(ControlServiceTestCase):
    """C{gomail queue} as a process, against the running service."""

    async def test_flush(self) -> None:
        """flush goes through the server (-v says so): the deferred message is tried again at once."""
        self.agent.script.append(451)
        queue_id = self.commit("bob@example.com")
        await self.start()
        result = await self.gomail("flush", "-v")
        self.assertEqual((result.returncode, result.stdout), (0, "flushed 1 message (by the running server)\n"))
        self.assertIn(f"gomail: asking the running server on {self.socket}", result.stderr)
        self.assertEqual([call[0] for call in self.agent.calls], [queue_id, queue_id])
        self.assertEqual(listing(self.spool, "queue"), [])

    async def test_retry_and_unknown(self) -> None:
        """retry requeues into the running queue, which delivers; an unknown id is one line, status 1."""
        self.agent.script.append(550)
        queue_id = self.commit("erin@example.com")
        await self.start()
        result = await self.gomail("retry", "0123456789abcdef01234")
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr, "gomail: not in failed/: 0123456789abcdef01234\n")
        result = await self.gomail("retry", queue_id)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "requeued 1 message (by the running server)\n", ""))
        self.assertEqual(self.agent.calls[-1], (queue_id, ["erin@example.com"]))
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "failed")), ([], []))

    async def test_delete_busy(self) -> None:
        """A message being delivered is not deleted: status 1 and a line naming it; its files stay."""
        self.agent.script.append("hold")
        queue_id = self.commit("bob@example.com")
        await self.start()
        result = await self.gomail("delete", queue_id)
        self.assertEqual((result.returncode, result.stdout), (1, "deleted 0 messages (by the running server)\n"))
        self.assertIn(f"being delivered or moved right now, not deleted (try again): {queue_id}", result.stderr)
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        self.agent.hold[0].callback({"bob@example.com": (250, "2.0.0 Ok")})

    async def test_status(self) -> None:
        """status names this process as the server, and its queue."""
        self.agent.script.append(451)
        self.commit("bob@example.com")
        await self.start()
        result = await self.gomail("status")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines(), [
            f"gomail {gomail.__version__} running (pid {os.getpid()}) on {self.spool.directory}",
            "1 message in the queue (0 being delivered, 1 deferred), 0 in failed/"])


class ClientTests(ControlServiceTestCase):
    """The blocking client's limits."""

    async def test_no_answer_in_time(self) -> None:
        """A listener that never answers: the call fails after the client's timeout with one clear line."""
        self.listen_elsewhere()

        def call() -> Any:
            with ControlClient.connect(self.spool.directory, timeout=0.2) as client:
                return client.call(Status)

        with self.assertRaises(ControlError) as caught:
            await deferToThread(call)
        self.assertEqual(str(caught.exception), f"the server did not answer on {self.socket} in time")

    async def test_no_server(self) -> None:
        """No socket file at all: no server (None), not an error."""
        self.assertIsNone(await deferToThread(ControlClient.connect, self.spool.directory, 1))
