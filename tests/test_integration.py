"""
End-to-end: a real ``twistd -n gomail`` process on free ports, real smtplib
clients (plain and STARTTLS), mail found in the local mailbox, clean SIGTERM.
"""

from __future__ import annotations

import email
import json
import os
import select
import smtplib
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gomail.spool.envelope import FAILED, Envelope, Recipient
from tests.gomailprocess import GomailNode
from tests.processes import (
    TWISTD,
    child_processes,
    client_tls,
    free_port,
    maildir_messages,
    poll,
    read_cmdline,
)

CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
[security]
requireAuth = false
[smtp]
hostname = "mx.test"
implicitTlsListen = ["tcp:{tls_port}:interface=127.0.0.1"]
[monitor]
listen = ["tcp:0:interface=127.0.0.1"]
[nginxAuth]
listen = ["tcp:0:interface=127.0.0.1"]
[spool]
minFreeSpaceMB = 0
"""

MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: integration\r\n\r\n"
    b"Hello Bob.\r\n.leading dot line\r\nBye.\r\n"
)


def send_plain(port: int, starttls: bool) -> dict:
    """Send MESSAGE with smtplib; returns the refused recipients (empty on success)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        if starttls:
            client.starttls(context=client_tls())
            client.ehlo("client.test")
        return client.sendmail("alice@example.org", ["bob@example.com"], MESSAGE)


def send_implicit_tls(port: int) -> dict:
    """Send MESSAGE over an implicit-TLS (port 465 style) connection."""
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=client_tls()) as client:
        client.ehlo("client.test")
        return client.sendmail("alice@example.org", ["bob@example.com"], MESSAGE)


class TwistdGomailTests(TestCase):
    """The service as an operator runs it."""

    timeout = 120

    def setUp(self) -> None:
        self.port, self.tls_port = free_port(), free_port()
        self.node = GomailNode(self, CONFIG, port=self.port, tls_port=self.tls_port)
        self.workdir, self.config, self.data = self.node.workdir, self.node.config, self.node.data
        self.mailbox = os.path.join(self.data, "spool", "mailbox", "bob@example.com", "new")

    async def start(self) -> None:
        self.process = await self.node.start()

    def delivered(self) -> list[bytes]:
        return maildir_messages(self.mailbox)

    async def _send_and_stop(self) -> None:
        await self.start()
        self.assertEqual(await deferToThread(send_plain, self.port, False), {})
        self.assertEqual(await deferToThread(send_plain, self.port, True), {})
        self.assertEqual(await deferToThread(send_implicit_tls, self.tls_port), {})
        await poll(reactor, lambda: len(self.delivered()) == 3)
        for raw in self.delivered():
            parsed = email.message_from_bytes(raw)
            self.assertIn("mx.test (gomail)", parsed["Received"])
            self.assertEqual(parsed["Subject"], "integration")
            self.assertTrue(raw.endswith(b"\r\n\r\nHello Bob.\r\n.leading dot line\r\nBye.\r\n"), raw)
        protocols = sorted(email.message_from_bytes(raw)["Received"].split(" with ")[1].split()[0]
                           for raw in self.delivered())
        self.assertEqual(protocols, ["ESMTP", "ESMTPS", "ESMTPS"])
        [writer] = child_processes(self.process.transport.pid)
        self.assertIn(b"gomail.spool.writerchild", read_cmdline(writer))
        code = await self.process.stop(reactor)
        # The spool writer process ended before the server did (nothing left running).
        self.assertFalse(os.path.exists(f"/proc/{writer}"))
        # twistd re-raises SIGTERM after a clean shutdown, so the exit is "killed by TERM"
        # (what init systems expect), never a crash or a SIGKILL.
        self.assertIn(code, (0, -15), self.process.output.decode(errors="replace"))
        self.assertIn(b"Server Shut Down", self.process.output)
        self.assertNotIn(b"Traceback", self.process.output)
        self.assertEqual(os.listdir(os.path.join(self.data, "spool", "queue")), [])

    def test_mail_reaches_the_mailbox_and_sigterm_exits_cleanly(self) -> Deferred:
        """
        Mail sent in plaintext, after STARTTLS and over implicit TLS is answered
        250, lands in the recipient's Maildir with our Received: header and the
        dot-unstuffed content, leaves the queue empty, and SIGTERM shuts down
        cleanly, the spool writer process with it.
        """
        return Deferred.fromCoroutine(self._send_and_stop())

    async def _kill9(self) -> None:
        await self.start()
        for _ in range(5):
            self.assertEqual(await deferToThread(send_plain, self.port, False), {})
        writer = child_processes(self.process.transport.pid)[0]
        watch = os.pidfd_open(writer)
        self.addCleanup(os.close, watch)
        self.process.transport.signalProcess("KILL")
        await self.process.ended
        # The orphaned writer process finishes the jobs it has and exits on its own.
        readable, _, _ = await deferToThread(select.select, [watch], [], [], 30)
        self.assertEqual(readable, [watch])
        await self.start()
        queue = os.path.join(self.data, "spool", "queue")
        await poll(reactor, lambda: len(self.delivered()) >= 5 and not os.listdir(queue))
        self.assertEqual(len(self.delivered()), 5)

    async def _sighup(self) -> None:
        await self.start()
        self.process.transport.signalProcess("HUP")
        await self.process.wait_for(b"SIGHUP: configuration reloaded, nothing changed", reactor)
        self.assertEqual(await deferToThread(send_plain, self.port, False), {})
        await poll(reactor, lambda: len(self.delivered()) == 1)
        self.assertIsNone(self.process.exit_code)

    def test_sighup_reloads_and_goes_on(self) -> Deferred:
        """SIGHUP never ends the server: it reloads the unchanged configuration, says so, and mail still flows."""
        return Deferred.fromCoroutine(self._sighup())

    def test_kill_9_loses_no_accepted_message(self) -> Deferred:
        """
        Five messages answered 250, then kill -9 of the server: its writer
        process exits by itself, and after a restart all five are in the
        Maildir, each once.
        """
        return Deferred.fromCoroutine(self._kill9())

    async def _restart_recovers(self) -> None:
        queue = os.path.join(self.data, "spool", "queue")
        tmp = os.path.join(self.data, "spool", "tmp")
        os.makedirs(queue)
        os.makedirs(tmp)
        with open(os.path.join(tmp, "leftover.eml"), "wb") as f:
            f.write(b"half a message")
        with open(os.path.join(queue, "broken.json"), "wb") as f:
            f.write(b"{not json")
        with open(os.path.join(queue, "broken.eml"), "wb") as f:
            f.write(b"x")
        await self.start()
        self.assertEqual(os.listdir(tmp), [])
        self.assertEqual(sorted(os.listdir(os.path.join(self.data, "spool", "corrupt"))),
                         ["broken.eml", "broken.json"])
        self.assertIn(b"moved unreadable queue entry", self.process.output)
        self.assertEqual(await deferToThread(send_plain, self.port, False), {})
        await poll(reactor, lambda: len(self.delivered()) == 1)

    async def _drain(self) -> None:
        await self.start()
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
        self.addCleanup(client.close)

        def begin() -> tuple:
            client.ehlo("client.test")
            client.mail("alice@example.org")
            client.rcpt("bob@example.com")
            client.putcmd("data")
            reply = client.getreply()
            client.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            return reply

        def finish() -> tuple:
            client.send(b"second half\r\n.\r\n")
            return client.getreply()

        self.assertEqual((await deferToThread(begin))[0], 354)
        self.process.transport.signalProcess("TERM")
        await self.process.wait_for(b"Received SIGTERM", reactor)
        code, text = await deferToThread(finish)
        self.assertEqual(code, 250, text)
        self.assertEqual(await self.process.ended, -15, self.process.output.decode(errors="replace"))
        self.assertEqual(len(self.delivered()) + len(os.listdir(os.path.join(self.data, "spool", "queue"))) // 2, 1)

    def test_sigterm_lets_a_transaction_in_flight_finish(self) -> Deferred:
        """
        SIGTERM during DATA stops listening but lets the open transaction end:
        the client still gets its 250 and the message is kept, then the process exits.
        """
        return Deferred.fromCoroutine(self._drain())

    async def _cli_retry(self) -> None:
        await self.start()
        # A failed entry as the server writes one (gomail.delivery.failed), for bob.
        now = 1700000000.0
        envelope = Envelope(id="0000000000001feedbeef", sender="alice@example.org", received=now,
                            recipients=[Recipient("bob@example.com", FAILED, "550 5.0.0 gone")])
        record = json.loads(envelope.to_json())
        record.update(reason="test", failed_at=now, content=MESSAGE.decode(), content_encoding="utf-8")
        with open(os.path.join(self.data, "spool", "failed", envelope.id + ".json"), "w") as f:
            json.dump(record, f)
        result = await deferToThread(subprocess.run, [sys.executable, "-m", "gomail.cli", "queue", "retry", "--all",
                                                      "--config", self.config],
                                     capture_output=True, text=True, timeout=60, cwd=self.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, "requeued 1 message (by the running server)\n")
        self.assertIn(b"control: retry: 1 failed messages requeued", self.process.output)
        await poll(reactor, lambda: len(self.delivered()) == 1)
        self.assertTrue(self.delivered()[0].endswith(MESSAGE))
        self.assertEqual(os.listdir(os.path.join(self.data, "spool", "failed")), [])
        self.assertFalse(os.path.exists(os.path.join(self.data, "spool", "gomail.pid")))

    def test_queue_retry_reaches_the_running_server(self) -> Deferred:
        """
        `gomail queue retry --all` asks the running server over its control
        socket: the server requeues the failed mail itself and delivers it at
        once (no pid file, no signal).
        """
        return Deferred.fromCoroutine(self._cli_retry())

    def test_start_cleans_tmp_and_sets_corrupt_entries_aside(self) -> Deferred:
        """Leftovers in tmp/ are removed and unreadable queue entries moved to corrupt/; the server still serves."""
        return Deferred.fromCoroutine(self._restart_recovers())


class ConfigErrorTests(TestCase):
    """A bad configuration stops start-up with one line, never a traceback."""

    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp()) + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_twistd_reports_the_key_and_the_file(self) -> None:
        """twistd gomail with smtpPort = 70000 exits non-zero with one line naming the key and file."""
        path = self.write("smtpPort = 70000\n")
        result = subprocess.run(TWISTD + ["-n", "--pidfile=", "gomail", "--config", path],
                                capture_output=True, text=True, timeout=60, cwd=os.path.dirname(path))
        self.assertNotEqual(result.returncode, 0)
        output = (result.stdout + result.stderr).strip()
        self.assertNotIn("Traceback", output)
        self.assertIn(f"{path}: smtpPort: must be >= 0 and <= 65535, got 70000", output)

    def test_check_config_command(self) -> None:
        """gomail check-config prints the same one-line error and exits 1; a good file exits 0."""
        bad = self.write("[smtp]\nmaxRecipients = \"many\"\n")
        result = subprocess.run([sys.executable, "-m", "gomail.cli", "check-config", bad],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip(),
                         f"gomail: configuration error: {bad}: smtp.maxRecipients: must be a whole number, got a string")
        good = os.path.join(os.path.dirname(__file__), "..", "conf", "gomail.toml")
        result = subprocess.run([sys.executable, "-m", "gomail.cli", "check-config", good],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("configuration ok", result.stdout)


class GoRelaySeedConfigTests(TestCase):
    """The Go relay's own config.json, as an application that relays through it uses it."""

    timeout = 120

    async def _seed(self) -> None:
        port = free_port()
        node = GomailNode(self, config_file="config.json")
        workdir = node.workdir
        with open(node.config, "w") as f:
            json.dump({"smtpHost": "127.0.0.1", "smtpPort": port, "defaultUsername": "alice",
                       "defaultPassword": "wonderland-4711", "enableHealthCheck": False,
                       "security": {"requireAuth": True, "allowLocalOnly": True}}, f)
        env = {"GOMAIL_DATADIR": os.path.join(workdir, "data"), "GOMAIL_AUTH_BCRYPTROUNDS": "4",
               "GOMAIL_NGINXAUTH_ENABLED": "false", "GOMAIL_POP3_ENABLED": "false", "GOMAIL_IMAP_ENABLED": "false",
               "GOMAIL_SPOOL_MINFREESPACEMB": "0"}
        process = await node.start(env)
        self.assertIn(b"the default user alice (defaultUsername) may send as any address", process.output)

        def send() -> dict:
            with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                client.ehlo("app.test")
                client.starttls(context=client_tls())
                client.ehlo("app.test")
                client.login("alice", "wonderland-4711")
                return client.sendmail("alice@example.org", ["bob@example.com"], MESSAGE)

        self.assertEqual(await deferToThread(send), {})

    def test_default_user_sends_as_its_applications_address(self) -> Deferred:
        """
        The tester's seed config.json (defaultUsername alice, requireAuth): alice
        logs in after STARTTLS and sends from alice@example.org: 250, not 553;
        the start-up log warns that this user may send as anyone.
        """
        return Deferred.fromCoroutine(self._seed())

