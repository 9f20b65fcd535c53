"""
kill -9 of the spool writer child under relay load, with a real C{twistd
gomail}, its real writer process and a real smarthost (issue 16).

An outside fault test killed the writer child while messages were being
relayed: every delivery finished meanwhile stayed pending in C{queue/}, the
running server forgot those messages, and the next flush or restart sent them
all again (207 duplicates from one kill). Here the child is stopped while
relayed messages wait for their final dot's reply, the replies arrive (the
removals queue up for the stopped child), and the child is killed: the
server must keep those messages until their removal is written by the
restarted child, and a restart of the server must send nothing again.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.gomailprocess import GomailNode, Smarthost
from tests.processes import child_processes, free_port, poll, read_cmdline
from tests.test_relay_integration import CONFIG, send

MESSAGES = 6


class WriterKillTests(TestCase):
    """The writer child killed while deliveries finish."""

    timeout = 120

    def setUp(self) -> None:
        self.port, forward_port = free_port(), free_port()
        self.node = GomailNode(self, "workerCount = 20\n" + CONFIG,
                               port=self.port, forward_port=forward_port)
        self.received = os.path.join(self.node.workdir, "smarthost")
        self.smarthost = Smarthost(self, forward_port, self.received)

    def writer_pid(self) -> int:
        assert self.node.process is not None
        [writer] = [pid for pid in child_processes(self.node.process.transport.pid)
                    if b"gomail.spool.writerchild" in read_cmdline(pid)]
        return writer

    def queued(self) -> list[str]:
        return os.listdir(os.path.join(self.node.data, "spool", "queue"))

    def relayed(self) -> int:
        return len([n for n in os.listdir(self.received) if n.endswith(".eml")]) if os.path.isdir(self.received) else 0

    async def test_delivered_messages_never_sent_again(self) -> None:
        """
        Six messages relayed while the writer child is stopped, then killed:
        the server says it keeps them, removes them once the child is back
        (queue/ empties without a flush), and after a restart the smarthost
        still has each message exactly once.
        """
        smarthost = await self.smarthost.start("--dot-delay", "1")
        await self.node.start()
        for n in range(MESSAGES):
            self.assertEqual((await deferToThread(send, self.port, f"rcpt{n}@example.net"))[0], 250)
        await poll(reactor, lambda: smarthost.output.count(b"dot delayed") >= MESSAGES, timeout=30)
        writer = self.writer_pid()
        os.kill(writer, signal.SIGSTOP)  # removals now wait in its pipe, unanswered
        try:
            await poll(reactor, lambda: self.node.output.count(b": relay 250") >= MESSAGES, timeout=30)
        finally:
            os.kill(writer, signal.SIGKILL)
        await self.node.wait_for(b"spool writer process exited unexpectedly")
        await self.node.wait_for(b"is finished but its outcome could not be written")
        await poll(reactor, lambda: self.queued() == [], timeout=30)
        self.assertEqual(self.relayed(), MESSAGES)

        await self.node.stop_cleanly()
        first_run = self.node.output
        await self.node.start()
        self.assertEqual(self.queued(), [])
        # One more message through the restarted server: the smarthost gets it, and nothing else.
        self.assertEqual((await deferToThread(send, self.port, "after@example.net"))[0], 250)
        await poll(reactor, lambda: self.relayed() == MESSAGES + 1, timeout=30)
        await poll(reactor, lambda: self.queued() == [], timeout=30)
        self.assertEqual(self.relayed(), MESSAGES + 1)
        self.assertEqual(first_run.count(b" to <rcpt0@example.net>: relay 250"), 1)
        self.assertNotIn(b"rcpt0@example.net", self.node.output)  # the restarted server never saw it
