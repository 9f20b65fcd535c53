"""
The outside tester's spool damage, end to end (issue 15, items 1 and 2): a
real ``twistd -n gomail`` (its writer in a process of its own), queued
messages whose files are then truncated to half, emptied, overwritten with
random bytes of the same size, or stripped of their envelope; after a restart
only the intact message is delivered (to a Maildir, or to the test smarthost
of L{tests.smarthost}), the others are in corrupt/ with one log line each,
counted in gomail_spool_corrupt_total, and /health is degraded.
"""

from __future__ import annotations

import json
import os
import smtplib
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.gomailprocess import GomailNode, Smarthost
from tests.processes import ServerProcess, free_port, maildir_messages, poll
from tests.spooltesting import make_spool, start_commit
from tests.test_spool_integrity import damage, message

DAMAGES = ("truncate", "empty", "random", "delete-json")

CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
forwardSMTP = {relay}
forwardHost = "127.0.0.1"
forwardPort = {forward_port}
[security]
requireAuth = false
[smtp]
hostname = "mx.test"
localDomains = []
[monitor]
listen = ["tcp:{monitor_port}:interface=127.0.0.1"]
[nginxAuth]
listen = ["tcp:0:interface=127.0.0.1"]
[spool]
minFreeSpaceMB = 0
[delivery]
retryInitialDelay = 1
retryJitter = 0.0
retryMaxDelay = 2
tlsVerify = false
failedRetryInterval = 0
"""


def get(url: str) -> tuple[int, bytes]:
    """(blocking) GET C{url}: status and body."""
    with urllib.request.urlopen(url, timeout=20) as answer:
        return answer.status, answer.read()


def send(port: int, content: bytes) -> str:
    """(blocking) Send C{content} from alice to bob@example.net; the queue id of the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        code, text = client.data(content)
        assert code == 250, (code, text)
        return text.decode().rsplit(" ", 1)[1]


class SpoolDamageTests(TestCase):
    """What the tester did to the spool of a server that was stopped, then started again."""

    timeout = 120

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.data = os.path.join(self.workdir, "data")
        self.spool = os.path.join(self.data, "spool")
        self.port, self.forward_port, self.monitor_port = free_port(), free_port(), free_port()
        self.received_dir = os.path.join(self.workdir, "smarthost")

    def write_config(self, relay: bool) -> None:
        self.node = GomailNode(self, CONFIG, workdir=self.workdir, data=self.data, port=self.port,
                               relay=str(relay).lower(), forward_port=self.forward_port,
                               monitor_port=self.monitor_port)

    async def start_gomail(self) -> ServerProcess:
        return await self.node.start()

    def listing(self, name: str) -> list[str]:
        path = os.path.join(self.spool, name)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    async def check_outcome(self, gomail: ServerProcess, ids: dict[str, str]) -> None:
        """The damaged entries in corrupt/, one line each, the metric and /health."""
        await poll(reactor, lambda: self.listing("queue") == [] and len(self.listing("corrupt")) == 7)
        # The files move before the writer's reply comes back and the line is written.
        await gomail.wait_for(b"instead of delivering it", reactor)
        expected = sorted(ids[how] + ext for how in DAMAGES for ext in (".eml", ".json"))
        expected.remove(ids["delete-json"] + ".json")
        self.assertEqual(self.listing("corrupt"), expected)
        output = gomail.output.decode(errors="replace")
        self.assertNotIn("Traceback", output)
        for how, words in (("truncate", "(truncated)"), ("empty", "content is empty"),
                           ("random", "content digest differs"), ("delete-json", ".json is missing")):
            lines = [line for line in output.splitlines() if ids[how] in line and "corrupt" in line]
            self.assertEqual(len(lines), 1, (how, lines))
            self.assertIn(words, lines[0])
        monitor = f"http://127.0.0.1:{self.monitor_port}"
        status, body = await deferToThread(get, monitor + "/health")
        health = json.loads(body)
        self.assertEqual((status, health["status"], health["failed_checks"]), (200, "degraded", ["corrupt"]))
        self.assertEqual(health["checks"]["corrupt"]["entries"], 4)
        _, metrics = await deferToThread(get, monitor + "/metrics?format=prometheus")
        self.assertIn(b"gomail_spool_corrupt_total 4.0", metrics)

    async def _maildir(self) -> None:
        self.write_config(relay=False)
        spool = make_spool(self.spool, Clock())
        ids, contents = {}, {}
        for number, how in enumerate(DAMAGES + ("intact",)):
            envelope, d = start_commit(spool, message(number), "bob@example.com")
            await d
            ids[how], contents[how] = envelope.id, message(number)
            if how != "intact":
                damage(spool.message_path(envelope.id), how)
        gomail = await self.start_gomail()
        new = os.path.join(self.spool, "mailbox", "bob@example.com", "new")
        await poll(reactor, lambda: len(maildir_messages(new)) == 1 and self.listing("queue") == [])
        await self.check_outcome(gomail, ids)
        self.assertEqual(maildir_messages(new), [contents["intact"]])

    def test_damaged_files_never_reach_the_maildir(self) -> None:
        """
        Local delivery (hard links, checked in the writer process first): only
        the intact message reaches bob's Maildir; the four damaged entries are
        in corrupt/ with one line each, counted, and /health is degraded.
        """
        return Deferred.fromCoroutine(self._maildir())

    async def _relay(self) -> None:
        self.write_config(relay=True)
        gomail = await self.start_gomail()  # the smarthost is down: everything is deferred
        ids, contents = {}, {}
        for number, how in enumerate(DAMAGES + ("intact",)):
            contents[how] = message(number)
            ids[how] = await deferToThread(send, self.port, contents[how])
        await poll(reactor, lambda: gomail.output.count(b" deferred: ") >= 5)
        self.assertIn(await gomail.stop(reactor), (0, -15))
        for how in DAMAGES:
            damage(os.path.join(self.spool, "queue", ids[how] + ".eml"), how)
        smarthost = await Smarthost(self, self.forward_port, self.received_dir).start()
        gomail = await self.start_gomail()
        await smarthost.wait_for(b"received 1", reactor)
        await self.check_outcome(gomail, ids)
        relayed = sorted(os.listdir(self.received_dir))
        self.assertEqual(len(relayed), 1, relayed)
        with open(os.path.join(self.received_dir, relayed[0]), "rb") as f:
            self.assertTrue(f.read().endswith(contents["intact"]))

    def test_damaged_files_are_never_relayed(self) -> None:
        """
        Mail answered 250 and deferred (smarthost down), the server stopped and
        its queue damaged, then the smarthost up and the server restarted: the
        smarthost receives the intact message only; the damaged ones are in
        corrupt/, one line each, counted, and /health is degraded.
        """
        return Deferred.fromCoroutine(self._relay())
