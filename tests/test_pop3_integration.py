"""
POP3 end to end: a real C{twistd -n gomail} (L{tests.gomailprocess}) takes
mail for a local user over SMTP (smtplib) and serves it over POP3 to
Python's poplib, inside TLS (STLS, and an implicit-TLS listener), with the
server's self-signed certificate (not verified). poplib and smtplib block:
they run in threads, so the reactor that watches the process keeps running.

The user is created directly in the server's SQLite user database (bcrypt
cost 4) before it starts.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import time

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gomail.auth import passwords, userdb
from gomail.auth.authlog import query_entries
from tests.gomailprocess import GomailNode
from tests.processes import client_tls, free_port, poll

BOB, BOB_PASSWORD = "bob@example.com", "bob-Correct-horse-1"

CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[smtp]
hostname = "mx.test"
localDomains = ["example.com"]
[spool]
minFreeSpaceMB = 0
[auth]
bcryptRounds = 4
[nginxAuth]
enabled = false
[pop3]
listen = ["tcp:{pop3_port}:interface=127.0.0.1"]
implicitTlsListen = ["tcp:{pop3s_port}:interface=127.0.0.1"]
"""


def message(subject: str) -> bytes:
    return (f"From: alice@example.org\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\n"
            f"First line of {subject}.\r\n.A line starting with a dot.\r\n").encode()


def send(port: int, content: bytes) -> None:
    """Deliver C{content} to Bob over SMTP. Blocking."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("alice@example.org", [BOB], content)


def open_pop3(port: int, implicit_tls: bool = False) -> poplib.POP3:
    """A poplib client inside TLS: STLS (checking CAPA before and after it), or an implicit-TLS port. Blocking."""
    if implicit_tls:
        return poplib.POP3_SSL("127.0.0.1", port, timeout=20, context=client_tls())
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    before = client.capa()
    assert "STLS" in before and "USER" not in before and "SASL" not in before, before
    client.stls(context=client_tls())
    after = client.capa()
    assert "USER" in after and after.get("SASL") == ["PLAIN"] and "STLS" not in after, after
    return client


def read_mailbox(port: int, implicit_tls: bool = False) -> tuple[tuple[int, int], list[bytes], list[bytes]]:
    """Log in as Bob: (STAT, the UIDL lines, each message retrieved); QUIT without deleting. Blocking."""
    client = open_pop3(port, implicit_tls)
    client.user(BOB)
    client.pass_(BOB_PASSWORD)
    stat = client.stat()
    uidls = client.uidl()[1]
    messages = [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in range(1, stat[0] + 1)]
    client.quit()
    return stat, uidls, messages


def delete_first(port: int, quit: bool) -> bytes:
    """Log in, DELE 1, then QUIT (its answer) or just close the connection (b""). Blocking."""
    client = open_pop3(port)
    client.user(BOB)
    client.pass_(BOB_PASSWORD)
    client.dele(1)
    if quit:
        return client.quit()
    client.close()
    return b""


def wrong_password(port: int) -> bytes:
    """The answer to PASS with a wrong password. Blocking."""
    client = open_pop3(port)
    client.user(BOB)
    try:
        client.pass_("not-the-password")
    except poplib.error_proto as e:
        return e.args[0]
    finally:
        client.close()
    raise AssertionError("a wrong password was accepted")


class POP3IntegrationTests(TestCase):
    """A running gomail: SMTP in, POP3 out, the same Maildir in between."""

    timeout = 180

    def setUp(self) -> None:
        self.ports = {"port": free_port(), "pop3_port": free_port(), "pop3s_port": free_port()}
        self.node = GomailNode(self, CONFIG, **self.ports)
        self.database = os.path.join(self.node.data, "gomail.db")
        os.makedirs(self.node.data, exist_ok=True)
        connection = userdb.open_connection(self.database)
        try:
            userdb.transact(connection, userdb.migrate)
            userdb.transact(connection, userdb.add_user, BOB, passwords.hash_password(BOB_PASSWORD, 4), time.time())
        finally:
            connection.close()
        self.maildir = os.path.join(self.node.data, "spool", "mailbox", BOB)

    def files(self, sub: str) -> list[str]:
        path = os.path.join(self.maildir, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    async def deliver(self, *subjects: str) -> list[bytes]:
        contents = [message(subject) for subject in subjects]
        for content in contents:
            await deferToThread(send, self.ports["port"], content)
        await poll(reactor, lambda: len(self.files("new")) + len(self.files("cur")) >= len(contents))
        return contents

    async def test_deliver_read_delete_restart(self) -> None:
        """
        Mail delivered over SMTP is read over POP3 after STLS (UIDLs are the
        Maildir unique names, each message as sent); UIDLs are the same after
        a restart; DELE then a lost connection keeps the message, DELE then
        QUIT removes it from disk.
        """
        await self.node.start()
        sent = await self.deliver("first", "second")
        stat, uidls, retrieved = await deferToThread(read_mailbox, self.ports["pop3_port"])
        sizes = [os.path.getsize(os.path.join(self.maildir, "cur", name)) for name in self.files("cur")]
        self.assertEqual(stat, (2, sum(sizes)))
        self.assertEqual(sorted(line.split()[1].decode() + ":2," for line in uidls), self.files("cur"))
        self.assertEqual(self.files("new"), [])
        # Our Received: header comes first; the rest is what was sent, dots and all.
        self.assertEqual(sorted(r[r.index(b"From: "):] for r in retrieved), sorted(sent))
        await self.node.stop_cleanly()
        await self.node.start()
        again = await deferToThread(read_mailbox, self.ports["pop3_port"])
        self.assertEqual(again[1], uidls)
        self.assertEqual(await deferToThread(delete_first, self.ports["pop3_port"], False), b"")
        await self.node.wait_for(b"ended without QUIT: nothing deleted")  # the session is over server-side
        self.assertEqual(len(self.files("cur")), 2)
        answer = await deferToThread(delete_first, self.ports["pop3_port"], True)
        self.assertTrue(answer.startswith(b"+OK"), answer)
        self.assertEqual(len(self.files("cur")), 1)
        # Over the implicit-TLS listener: the second message is left, now numbered 1, with its UIDL.
        stat, rest, _ = await deferToThread(read_mailbox, self.ports["pop3s_port"], True)
        self.assertEqual((stat[0], rest), (1, [b"1 " + uidls[1].split()[1]]))
        await self.node.stop_cleanly()

    async def test_wrong_password_and_audit(self) -> None:
        """A wrong password gets the uniform -ERR; both attempts are in the audit log with protocol pop3."""
        await self.node.start()
        self.assertEqual(await deferToThread(wrong_password, self.ports["pop3_port"]),
                         b"-ERR [AUTH] Authentication failed")
        stat, _, _ = await deferToThread(read_mailbox, self.ports["pop3s_port"], True)
        self.assertEqual(stat, (0, 0))
        await self.node.stop_cleanly()  # the audit log is flushed at stop
        connection = userdb.open_connection(self.database)
        try:
            entries = query_entries(connection.cursor(), user=BOB)
        finally:
            connection.close()
        self.assertEqual(sorted((e.protocol, e.result) for e in entries), [("pop3", "failure"), ("pop3", "success")])
