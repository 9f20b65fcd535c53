"""
End-to-end relaying: a real ``twistd -n gomail`` with forwardSMTP = true in
front of a real smarthost process (L{tests.smarthost}), real smtplib clients,
and the smarthost's spool as the proof of what was relayed.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.gomailprocess import GomailNode, Smarthost
from tests.processes import ServerProcess, free_port, poll

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
retryInitialDelay = 1
retryJitter = 0.0
retryMaxDelay = 2
tlsVerify = false
failedRetryInterval = 0
"""

# A line that is only a dot and lines that start with one: stuffed by smtplib,
# unstuffed by gomail, stuffed again by the relay, unstuffed by the smarthost.
MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: relayed\r\n\r\n"
    b"Hello Bob.\r\n.leading dot line\r\n.\r\n..two dots\r\nBye.\r\n"
)


def send(port: int, recipient: str, message: bytes = MESSAGE) -> tuple[int, str]:
    """Send C{message} from alice@example.org to C{recipient}; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        code, text = client.rcpt(recipient)
        if code != 250:
            return code, text.decode()
        code, text = client.data(message)
        return code, text.decode()


def send_raw(port: int, content: bytes) -> bytes:
    """One transaction with C{content} (ending in CRLF) sent as it is, bare line ends kept, then QUIT; all replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n")
        replies = b""
        while b"354 " not in replies:
            replies += s.recv(4096)
        s.sendall(content + b".\r\nQUIT\r\n")
        while not replies.rstrip().endswith(b"Bye") and b"221 " not in replies:
            more = s.recv(4096)
            if not more:
                break
            replies += more
        return replies


#: Would-be ends of data that lenient servers honour (SMTP smuggling), each followed by a second transaction.
FAKE_ENDINGS = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n"]
SMUGGLED = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nsmuggled\r\n"


def fetch(url: str) -> str:
    """GET C{url} (blocking: run it in a thread)."""
    with urllib.request.urlopen(url, timeout=20) as response:
        return response.read().decode()


class RelayToSmarthostTests(TestCase):
    """gomail relaying to a smarthost, both run as an operator would run them."""

    timeout = 120

    def setUp(self) -> None:
        self.port, self.forward_port = free_port(), free_port()
        self.node = GomailNode(self, CONFIG, port=self.port, forward_port=self.forward_port)
        self.workdir, self.config, self.data = self.node.workdir, self.node.config, self.node.data
        self.received_dir = os.path.join(self.workdir, "smarthost")
        self.sink = Smarthost(self, self.forward_port, self.received_dir)
        self.smarthost: ServerProcess | None = None

    def write_config(self, template: str) -> None:
        """Replace the configuration with C{template} (CONFIG's placeholders filled in)."""
        self.node.write_config(template)

    # -- processes ------------------------------------------------------------

    async def start_gomail(self) -> None:
        self.gomail = await self.node.start()

    async def start_smarthost(self, *options: str) -> None:
        self.smarthost = await self.sink.start(*options)

    async def stop_both(self) -> None:
        """SIGTERM gomail, then the smarthost; both must shut down cleanly."""
        await self.node.stop_cleanly()
        if self.smarthost is not None:
            await self.sink.stop_cleanly()

    # -- what is where -----------------------------------------------------------

    def relayed(self) -> list[tuple[bytes, bytes]]:
        """The smarthost's messages in arrival order, as (X-Envelope line, DATA bytes)."""
        if not os.path.isdir(self.received_dir):
            return []
        messages = []
        for name in sorted(n for n in os.listdir(self.received_dir) if n.endswith(".eml")):
            with open(os.path.join(self.received_dir, name), "rb") as f:
                first, _, rest = f.read().partition(b"\r\n")
            messages.append((first, rest))
        return messages

    def spool_dir(self, name: str) -> list[str]:
        path = os.path.join(self.data, "spool", name)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def assert_relayed_once(self, messages: list[tuple[bytes, bytes]]) -> None:
        self.assertEqual(len(messages), 1, messages)
        envelope, content = messages[0]
        self.assertEqual(envelope, b"X-Envelope: <alice@example.org> <bob@example.net>")
        self.assertTrue(content.startswith(b"Received: from client.test"), content)
        self.assertIn(b"mx.test (gomail)", content.split(b"\r\n\r\n", 1)[0])
        self.assertTrue(content.endswith(MESSAGE), content)

    # -- the tests ------------------------------------------------------------------

    async def _relays_once(self, *smarthost_options: str) -> None:
        await self.start_smarthost(*smarthost_options)
        await self.start_gomail()
        code, text = await deferToThread(send, self.port, "bob@example.net")
        self.assertEqual(code, 250, text)
        await self.smarthost.wait_for(b"received 1", reactor)
        await poll(reactor, lambda: self.spool_dir("queue") == [])
        self.assert_relayed_once(self.relayed())
        await self.stop_both()
        self.assert_relayed_once(self.relayed())
        self.assertNotIn(b" deferred: ", self.gomail.output)

    def test_message_is_relayed_once_byte_for_byte(self) -> Deferred:
        """
        Mail for a non-local domain reaches the smarthost exactly once, with the
        sender and recipient as sent, gomail's Received: header first and then
        the client's bytes unchanged (dot lines included); gomail's queue is
        empty afterwards and both processes stop cleanly on SIGTERM.
        """
        return Deferred.fromCoroutine(self._relays_once())

    def test_large_messages_relayed_byte_for_byte(self) -> Deferred:
        """
        Messages too large to be kept in memory are sent from their queue
        files: one without dot lines unchanged (its envelope says it is
        transparent), one with dot lines dot-stuffed (its envelope says it is
        not); both reach the smarthost byte for byte.
        """
        head = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: large\r\n\r\n"
        plain = head + b"".join(b"line %06d of a plain message, no dots at line starts.\r\n" % n
                                for n in range(12000))
        dotted = head + b"".join(b"%s line %06d\r\n" % (b"." if n % 97 == 0 else b"", n) for n in range(30000))
        self.assertGreater(min(len(plain), len(dotted)), 300 * 1024)

        async def check() -> None:
            # The smarthost starts later: the envelopes can be read while the messages wait.
            await self.start_gomail()
            ids = []
            for message in (plain, dotted):
                code, text = await deferToThread(send, self.port, "bob@example.net", message)
                self.assertEqual(code, 250, text)
                ids.append(text.rsplit(" ", 1)[1])
            transparent = []
            for queue_id in ids:
                with open(os.path.join(self.data, "spool", "queue", queue_id + ".json"), "rb") as f:
                    transparent.append(json.loads(f.read())["transparent"])
            self.assertEqual(transparent, [True, False])
            await self.start_smarthost()
            await self.smarthost.wait_for(b"received 2", reactor)
            await poll(reactor, lambda: self.spool_dir("queue") == [])
            relayed = sorted(content.split(b"\r\n\r\n", 1)[1] for _, content in self.relayed())
            self.assertEqual(relayed, sorted(m.split(b"\r\n\r\n", 1)[1] for m in (plain, dotted)))
            await self.stop_both()
        return Deferred.fromCoroutine(check())

    def test_normalized_smuggling_attempts_relay_as_one_message(self) -> None:
        """
        With bareLineEndings = "normalize", every fake end of data (bare CR/LF
        around a dot) followed by smuggled commands is one message at the
        smarthost: CRLF line ends only, the dot lines stuffed on the way
        out, the would-be commands plain text, no second message.
        """
        async def check() -> None:
            self.write_config(CONFIG.replace("[smtp]\n", '[smtp]\nbareLineEndings = "normalize"\n', 1))
            await self.start_smarthost()
            await self.start_gomail()
            for ending in FAKE_ENDINGS:
                replies = await deferToThread(send_raw, self.port, b"Subject: s\r\n\r\nhello" + ending + SMUGGLED)
                self.assertIn(b"250 2.0.0 Ok: queued as", replies, ending)
            await self.smarthost.wait_for(b"received %d" % len(FAKE_ENDINGS), reactor)
            await poll(reactor, lambda: self.spool_dir("queue") == [])
            messages = self.relayed()
            self.assertEqual(len(messages), len(FAKE_ENDINGS))
            for envelope, content in messages:
                self.assertEqual(envelope, b"X-Envelope: <alice@example.org> <bob@example.net>")
                self.assertEqual(content.count(b"\r"), content.count(b"\r\n"))
                self.assertEqual(content.count(b"\n"), content.count(b"\r\n"))
                self.assertTrue(content.endswith(b"\r\n" + SMUGGLED), content)
                self.assertEqual(content.count(b"evil@attacker.test"), 1)
            await self.stop_both()
        return Deferred.fromCoroutine(check())

    def test_pipelined_transaction_needs_no_rset(self) -> None:
        """To a smarthost offering PIPELINING the relay sends MAIL, RCPT and DATA and no RSET after the message."""
        async def check() -> None:
            await self._relays_once()
            self.assertIn(b"session: EHLO MAIL RCPT DATA", self.smarthost.output)
            self.assertNotIn(b"RSET", self.smarthost.output)
        return Deferred.fromCoroutine(check())

    def test_relayed_once_without_pipelining(self) -> None:
        """A smarthost without PIPELINING gets one command at a time (Twisted's machine) and the same message."""
        async def check() -> None:
            await self._relays_once("--no-pipelining")
            self.assertIn(b"session: EHLO MAIL RCPT DATA RSET", self.smarthost.output)
        return Deferred.fromCoroutine(check())

    async def _smarthost_comes_back(self) -> None:
        await self.start_gomail()
        code, text = await deferToThread(send, self.port, "bob@example.net")
        self.assertEqual(code, 250, text)
        await self.gomail.wait_for(b" deferred: 1 recipients pending", reactor)
        self.assertIn(b"Cannot reach 127.0.0.1:%d" % self.forward_port, self.gomail.output)
        self.assertEqual(len(self.spool_dir("queue")), 2)
        await self.start_smarthost()
        await self.smarthost.wait_for(b"received 1", reactor)
        await poll(reactor, lambda: self.spool_dir("queue") == [])
        await self.stop_both()
        self.assert_relayed_once(self.relayed())
        self.assertEqual(self.spool_dir("failed"), [])

    def test_deferred_while_smarthost_down_then_relayed_once(self) -> Deferred:
        """
        With nothing listening on forwardPort the message is still accepted (250),
        kept in the queue and logged as deferred; once the smarthost starts on
        that port the retry delivers it, exactly once, and the queue empties.
        """
        return Deferred.fromCoroutine(self._smarthost_comes_back())

    async def _rejected(self) -> None:
        await self.start_smarthost("--reject-local-part", "reject")
        await self.start_gomail()
        code, text = await deferToThread(send, self.port, "reject@example.net")
        self.assertEqual(code, 250, text)
        queue_id = text.rsplit(" ", 1)[1]
        await self.smarthost.wait_for(b"received 1", reactor)
        await poll(reactor, lambda: self.spool_dir("failed") == [queue_id + ".json"]
                   and self.spool_dir("queue") == [])
        with open(os.path.join(self.data, "spool", "failed", queue_id + ".json"), "rb") as f:
            record = json.loads(f.read())
        self.assertIn("<reject@example.net>: 550 5.1.1", record["reason"])
        self.assertEqual([(r["address"], r["status"]) for r in record["recipients"]],
                         [("reject@example.net", "failed")])
        messages = self.relayed()
        self.assertEqual(len(messages), 1, messages)
        envelope, bounce = messages[0]
        self.assertEqual(envelope, b"X-Envelope: <> <alice@example.org>")
        self.assertIn(b"multipart/report", bounce)
        self.assertIn(b"Final-Recipient: rfc822; reject@example.net", bounce)
        self.assertIn(b"Subject: relayed", bounce)  # the original headers are attached
        await self.stop_both()
        self.assertEqual(len(self.relayed()), 1)

    def test_permanent_rejection_fails_and_bounces_to_sender(self) -> Deferred:
        """
        A 550 5.1.1 from the smarthost for the only recipient moves the message to
        failed/<id>.json with the smarthost's reply as the reason, and sends the
        sender one RFC 3464 bounce (null sender, multipart/report, naming the
        rejected address) through the same smarthost; nothing stays queued.
        """
        return Deferred.fromCoroutine(self._rejected())

    async def _dot_answered_late(self) -> None:
        monitor_port = free_port()
        # A short command and dot wait (seconds, as the real ones are) and a known monitor port.
        config = CONFIG.replace('listen = ["tcp:0:interface=127.0.0.1"]\n[nginxAuth]',
                                f'listen = ["tcp:{monitor_port}:interface=127.0.0.1"]\n[nginxAuth]')
        self.write_config(config + "commandTimeout = 1\ndataTimeout = 2\n")
        await self.start_smarthost("--dot-delay", "4")
        await self.start_gomail()
        code, text = await deferToThread(send, self.port, "bob@example.net")
        self.assertEqual(code, 250, text)
        queue_id = text.rsplit(" ", 1)[1]
        await self.smarthost.wait_for(b"dot delayed 1", reactor)
        await self.gomail.wait_for(b"possible duplicate", reactor)
        lines = [line for line in self.gomail.output.decode(errors="replace").splitlines()
                 if "possible duplicate" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(queue_id, lines[0])
        self.assertIn(f"127.0.0.1:{self.forward_port}", lines[0])
        self.assertIn("timeout after 2 s waiting for the final dot", lines[0])
        self.assertIn("may already be delivered", lines[0])
        metrics = await deferToThread(fetch, f"http://127.0.0.1:{monitor_port}/metrics?format=prometheus")
        self.assertIn("gomail_relay_possible_duplicates_total 1.0", metrics)
        # Still queued for the retry (at least once) while the smarthost has its copy (a second
        # one once the retry, a second later, got through).
        self.assertIn(len(self.relayed()), (1, 2))
        self.assertEqual(len(self.spool_dir("queue")), 2)
        await self.stop_both()

    def test_dot_answered_after_timeout_is_logged_and_counted(self) -> Deferred:
        """
        A smarthost that stores the message at the final dot and answers it
        after delivery.dataTimeout: gomail logs one possible-duplicate line with
        the queue id, the smarthost and what happened, counts it in
        gomail_relay_possible_duplicates_total and keeps the message queued.
        """
        return Deferred.fromCoroutine(self._dot_answered_late())
