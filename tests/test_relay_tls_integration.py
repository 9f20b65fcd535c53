"""
Relaying over STARTTLS with AUTH and certificate verification: a real
``twistd -n gomail`` relays to a second real gomail acting as the smarthost
(STARTTLS, AUTH PLAIN/LOGIN required, a user in its database), trusting the
smarthost's certificate through ``delivery.tlsCAFile``.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gomail.auth import userdb
from gomail.auth.passwords import hash_password
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll

SMARTHOST_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
enableHealthCheck = false
[security]
requireAuth = true
[smtp]
hostname = "localhost"
localDomains = ["example.net"]
# bob@example.net is no user of this smarthost: accepted as a Maildir of its own.
verifyRecipients = false
[auth]
bcryptRounds = 4
enforceSenderAddress = false
[nginxAuth]
enabled = false
[spool]
minFreeSpaceMB = 0
"""

RELAY_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
enableHealthCheck = false
forwardSMTP = true
forwardHost = "localhost"
forwardPort = {forward_port}
forwardUsername = "relay@example.org"
forwardPassword = "{password}"
[security]
requireAuth = false
[smtp]
hostname = "mx.test"
[nginxAuth]
enabled = false
[spool]
minFreeSpaceMB = 0
[delivery]
tlsVerify = true
tlsCAFile = "{ca}"
retryInitialDelay = 1
retryJitter = 0.0
retryMaxDelay = 2
failedRetryInterval = 0
"""

MESSAGE = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: over TLS\r\n\r\nHello.\r\n.dot line\r\n"


def send(port: int) -> tuple[int, str]:
    """Send MESSAGE to bob@example.net through the relay; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        code, text = client.data(MESSAGE)
        return code, text.decode()


class RelayOverTLSTests(TestCase):
    """gomail to gomail: STARTTLS, a verified certificate, AUTH."""

    timeout = 120

    async def start(self, password: str) -> None:
        workdir = os.path.abspath(self.mktemp())
        self.smarthost_data = os.path.join(workdir, "smarthost")
        relay_data = os.path.join(workdir, "relay")
        os.makedirs(self.smarthost_data)
        conn = userdb.open_connection(os.path.join(self.smarthost_data, "gomail.db"))
        try:
            userdb.transact(conn, userdb.migrate)
            userdb.transact(conn, userdb.add_user, "relay@example.org", hash_password("relay-pw", 4), 0.0)
        finally:
            conn.close()
        self.relay_port, smarthost_port = free_port(), free_port()
        smarthost = GomailNode(self, SMARTHOST_CONFIG, name="smarthost", workdir=workdir, data=self.smarthost_data,
                               port=smarthost_port)
        relay = GomailNode(self, RELAY_CONFIG, name="relay", workdir=workdir, data=relay_data, port=self.relay_port,
                           forward_port=smarthost_port, password=password,
                           ca=os.path.join(self.smarthost_data, "tls", "selfsigned-cert.pem"))
        self.smarthost = await smarthost.start()  # its certificate exists from here on
        self.relay = await relay.start()

    def mailbox(self) -> list[str]:
        path = os.path.join(self.smarthost_data, "spool", "mailbox", "bob@example.net", "new")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    async def _relayed(self) -> None:
        await self.start("relay-pw")
        code, text = await deferToThread(send, self.relay_port)
        self.assertEqual(code, 250, text)
        await poll(reactor, lambda: len(self.mailbox()) == 1)
        path = os.path.join(self.smarthost_data, "spool", "mailbox", "bob@example.net", "new", self.mailbox()[0])
        with open(path, "rb") as f:
            stored = f.read()
        self.assertTrue(stored.endswith(MESSAGE), stored)
        self.assertIn(b"with ESMTPSA", stored)  # the smarthost saw TLS and AUTH (RFC 3848)
        self.assertIn(b'SMTP AUTH succeeded for user "relay@example.org" from 127.0.0.1', self.smarthost.output)

    def test_relayed_over_starttls_with_auth(self) -> Deferred:
        """The relay upgrades to TLS, verifies the smarthost against tlsCAFile, logs in, and the mail arrives."""
        return Deferred.fromCoroutine(self._relayed())

    async def _refused(self) -> None:
        await self.start("not-the-password")
        code, text = await deferToThread(send, self.relay_port)
        self.assertEqual(code, 250, text)
        await self.relay.wait_for(b" deferred: 1 recipients pending", reactor)
        self.assertIn(b"Smarthost refused the session at AUTH: 535 5.7.8", self.relay.output)
        self.assertNotIn(b"moved to failed/", self.relay.output)  # waits for the operator, never bounces
        self.assertEqual(self.mailbox(), [])
        self.assertNotIn(b"not-the-password", self.relay.output)

    def test_wrong_password_defers(self) -> Deferred:
        """
        With a wrong password the smarthost refuses the login (535): the message
        is deferred, not bounced; nothing arrives; the password is never logged.
        """
        return Deferred.fromCoroutine(self._refused())
