"""
What the tester did (issue 15 item 3): C{gomail queue flush} run while a
real C{twistd gomail} is relaying to a slow smarthost. The flush used to
rewrite the envelope of a message that was delivered and removed a moment
later, leaving a C{.json} without its C{.eml}; now the command asks the
server, which changes only its own index and writes nothing of its own.

The smarthost runs in this process on the real reactor, so the test decides
when it answers the final dot of the message in flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

import gomail
from tests.gomailprocess import GomailNode
from tests.processes import free_port
from tests.smarthost import SmarthostFactory, SmarthostProtocol
from tests.test_relay_integration import send

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))

CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
forwardSMTP = true
forwardHost = "127.0.0.1"
forwardPort = {forward_port}
[security]
requireAuth = false
[smtp]
hostname = "mx.test"
localDomains = []
[monitor]
listen = ["tcp:0:interface=127.0.0.1"]
[nginxAuth]
listen = ["tcp:0:interface=127.0.0.1"]
[spool]
minFreeSpaceMB = 0
[delivery]
retryInitialDelay = 3600
retryJitter = 0.0
retryMaxDelay = 7200
tlsVerify = false
failedRetryInterval = 0
"""


class SlowProtocol(SmarthostProtocol):
    """The test smarthost, but the reply to the first message's final dot waits for the test."""

    factory: SlowSmarthost

    def connectionLost(self, reason: Any = None) -> None:
        pass  # the process smarthost prints its session here; not in the test's own output

    def data_line(self, line: bytes) -> None:
        if line == b"." and self.factory.release is None:
            self.factory.release = Deferred()
            self.factory.release.addCallback(lambda _: SmarthostProtocol.data_line(self, line))
            self.factory.holding.callback(None)
            return
        SmarthostProtocol.data_line(self, line)


class SlowSmarthost(SmarthostFactory):
    """Messages kept in memory; C{holding} fires once the first final dot waits on C{release}."""

    protocol = SlowProtocol

    def __init__(self) -> None:
        super().__init__("", reject=None, tempfail="busy")
        self.messages: list[tuple[str, list[str]]] = []
        self.release: Deferred | None = None
        self.holding: Deferred = Deferred()

    def store(self, sender: str, recipients: list[str], data: bytes) -> int:
        self.messages.append((sender, recipients))
        return len(self.messages)


class FlushRaceTests(TestCase):
    """gomail queue flush against a server in the middle of relaying."""

    timeout = 120

    def setUp(self) -> None:
        self.port = free_port()
        self.smarthost = SlowSmarthost()
        listener = reactor.listenTCP(0, self.smarthost, interface="127.0.0.1")
        self.addCleanup(listener.stopListening)
        self.node = GomailNode(self, CONFIG, port=self.port, forward_port=listener.getHost().port)
        self.workdir, self.config, self.data = self.node.workdir, self.node.config, self.node.data
        self.spool = os.path.join(self.data, "spool")

    def files(self, where: str) -> dict[str, bytes]:
        directory = os.path.join(self.spool, where)
        contents = {}
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                contents[name] = f.read()
        return contents

    def gomail(self, *argv: str) -> Deferred:
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8"}
        return deferToThread(subprocess.run, [sys.executable, "-m", "gomail.cli", *argv, "--config", self.config],
                             cwd=self.workdir, env=env, capture_output=True, text=True, timeout=60)

    async def _race(self) -> None:
        process = await self.node.start()
        # A: relayed, its final dot unanswered (an attempt in flight).
        self.assertEqual((await deferToThread(send, self.port, "bob@example.net"))[0], 250)
        await self.smarthost.holding
        # B: the smarthost answers 451 for busy@: deferred for an hour.
        self.assertEqual((await deferToThread(send, self.port, "busy@example.net"))[0], 250)
        await process.wait_for(b"deferred: 1 recipients pending", reactor)
        self.smarthost.tempfail = None
        queued = self.files("queue")
        self.assertEqual(len(queued), 4, sorted(queued))

        outputs = []
        for _ in range(3):  # the tester ran it again and again
            result = await self.gomail("queue", "flush", "-v")
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("gomail: asking the running server on ", result.stderr)
            outputs.append(result.stdout)
        # The server made B due at once and left A to its attempt; no file was rewritten by the flush.
        self.assertEqual(outputs[0], "flushed 1 message (by the running server; 1 being delivered "
                                     "finish their attempt first)\n")
        await process.wait_for(b"<busy@example.net>: relay 250", reactor)
        [a_json] = [name for name in queued if name.endswith(".json") and name in self.files("queue")]
        self.assertEqual(self.files("queue"), {name: queued[name] for name in (a_json, a_json[:-5] + ".eml")})

        self.smarthost.release.callback(None)
        await process.wait_for(b"<bob@example.net>: relay 250", reactor)
        code = await process.stop(reactor)
        self.assertIn(code, (0, -15), process.output.decode(errors="replace"))
        # Nothing left behind: no envelope without its content, nothing set aside, each message relayed once.
        self.assertEqual((self.files("queue"), self.files("corrupt")), ({}, {}))
        self.assertEqual(sorted(r for _, recipients in self.smarthost.messages for r in recipients),
                         ["bob@example.net", "busy@example.net"])
        self.assertNotIn(b"Traceback", process.output)
        self.assertNotIn(b"SIGUSR1", process.output)

    def test_flush_while_relaying(self) -> None:
        """
        A message in flight (final dot unanswered) and a deferred one; flush
        three times: the deferred one is relayed at once, the one in flight
        keeps its files byte for byte until its 250, then both are gone from
        queue/ and nothing is in corrupt/.
        """
        return Deferred.fromCoroutine(self._race())

