"""
IMAP end to end: a real C{twistd -n gomail} (L{tests.gomailprocess}) takes
mail for a local user over SMTP (smtplib) and serves it over IMAP to
Python's imaplib after STARTTLS, with the server's self-signed certificate
(not verified). imaplib and smtplib block: they run in threads, so the
reactor that watches the process keeps running.

The user is created directly in the server's SQLite user database (bcrypt
cost 4) before it starts.
"""

from __future__ import annotations

import imaplib
import os
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
[imap]
listen = ["tcp:{imap_port}:interface=127.0.0.1"]
# No poll within the test: what wakes IDLE is the delivery's notice (gomail.mailaccess.notify).
idlePollInterval = 3600
"""

#: Seconds an idling client waits for the EXISTS of a delivered message (a bound, not a delay).
WAKE_WITHIN = 10


def message(subject: str) -> bytes:
    return f"From: alice@example.org\r\nTo: {BOB}\r\nSubject: {subject}\r\n\r\nText of {subject}.\r\n".encode()


def send(port: int, content: bytes) -> None:
    """Deliver C{content} to Bob over SMTP. Blocking."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.sendmail("alice@example.org", [BOB], content)


def open_imap(port: int) -> imaplib.IMAP4:
    """imaplib inside TLS, logged in as Bob (checking LOGINDISABLED before STARTTLS). Blocking."""
    client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    assert "LOGINDISABLED" in client.capabilities, client.capabilities
    client.starttls(ssl_context=client_tls())
    assert "LOGINDISABLED" not in client.capabilities and "AUTH=PLAIN" in client.capabilities, client.capabilities
    client.login(BOB, BOB_PASSWORD)
    return client


def session(port: int) -> dict:
    """SELECT, FETCH, STORE \\Seen, SEARCH, COPY to a new folder, EXPUNGE; what was seen. Blocking."""
    client = open_imap(port)
    seen: dict = {}
    _, data = client.select("INBOX")
    seen["exists"] = int(data[0])
    seen["uidvalidity"] = client.untagged_responses.get("UIDVALIDITY", [b"?"])[0]
    _, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    seen["headers"] = [part[1] for part in data if isinstance(part, tuple)]
    _, data = client.fetch("1", "(BODY[])")
    seen["body"] = data[0][1]
    client.store("2", "+FLAGS", "(\\Flagged)")
    _, data = client.search(None, "UNSEEN")
    seen["unseen"] = data[0]
    client.create("Archive")
    client.copy("1", "Archive")
    client.store("1", "+FLAGS", "(\\Deleted)")
    _, data = client.expunge()
    seen["expunged"] = data
    _, data = client.status("Archive", "(MESSAGES)")
    seen["archive"] = data[0]
    _, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
    seen["after"] = data
    client.logout()
    return seen


def flags_again(port: int) -> tuple[bytes, list]:
    """Log in again: UIDVALIDITY and the UID/FLAGS of INBOX. Blocking."""
    client = open_imap(port)
    client.select("INBOX")
    uidvalidity = client.untagged_responses.get("UIDVALIDITY", [b"?"])[0]
    _, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
    client.logout()
    return uidvalidity, data


def start_idle(port: int) -> imaplib.IMAP4:
    """Log in, SELECT INBOX, send IDLE and read its continuation. Blocking."""
    client = open_imap(port)
    client.select("INBOX")
    client.send(b"i1 IDLE\r\n")
    line = client.readline()
    assert line.startswith(b"+"), line
    return client


def end_idle(client: imaplib.IMAP4) -> list[bytes]:
    """Read until an EXISTS arrives (socket.timeout after L{WAKE_WITHIN} s without one), then DONE; the lines read. Blocking."""
    client.sock.settimeout(WAKE_WITHIN)
    lines = []
    while True:
        line = client.readline()
        lines.append(line)
        if line.endswith(b"EXISTS\r\n") or not line:
            break
    client.send(b"DONE\r\n")
    while True:
        line = client.readline()
        lines.append(line)
        if line.startswith(b"i1 ") or not line:
            break
    client.logout()
    return lines


def audit_entries(database: str) -> list:
    """Bob's audit log entries. Blocking."""
    connection = userdb.open_connection(database)
    try:
        return query_entries(connection.cursor(), user=BOB)
    finally:
        connection.close()


class IMAPIntegrationTests(TestCase):
    """A running gomail: SMTP in, IMAP out, the same Maildir in between."""

    timeout = 180

    def setUp(self) -> None:
        self.ports = {"port": free_port(), "imap_port": free_port()}
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

    def files(self, sub: str, folder: str = "") -> list[str]:
        path = os.path.join(self.maildir, folder, sub)
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    async def deliver(self, *subjects: str) -> None:
        before = len(self.files("new")) + len(self.files("cur"))
        for subject in subjects:
            await deferToThread(send, self.ports["port"], message(subject))
        await poll(reactor, lambda: len(self.files("new")) + len(self.files("cur")) >= before + len(subjects))

    async def test_session_restart_and_idle(self) -> None:
        """
        Mail delivered over SMTP is read with imaplib after STARTTLS: SELECT,
        FETCH, STORE, SEARCH, COPY into a created folder, EXPUNGE; after a
        restart UIDVALIDITY, UIDs and flags are unchanged; an IDLE session
        hears of a message delivered over SMTP while it waits, at once
        (within WAKE_WITHIN s, with a poll every hour: the local delivery's
        notice woke it); the logins are in the audit log with protocol imap.
        """
        await self.node.start()
        await self.deliver("first", "second")
        seen = await deferToThread(session, self.ports["imap_port"])
        self.assertEqual(seen["exists"], 2)
        self.assertEqual([h.strip() for h in seen["headers"]], [b"Subject: first", b"Subject: second"])
        self.assertIn(b"Subject: first\r\n\r\nText of first.\r\n", seen["body"])
        self.assertEqual(seen["unseen"], b"2")  # FETCH BODY[] of 1 set \Seen
        self.assertEqual(seen["expunged"], [b"1"])
        self.assertIn(b"(MESSAGES 1)", seen["archive"])
        self.assertEqual(len(self.files("cur", ".Archive")), 1)
        self.assertEqual(seen["after"], [b"1 (UID 2 FLAGS (\\Flagged \\Recent))"])
        await self.node.stop_cleanly()
        await self.node.start()
        uidvalidity, after = await deferToThread(flags_again, self.ports["imap_port"])
        self.assertEqual(uidvalidity, seen["uidvalidity"])
        self.assertEqual(after, [b"1 (UID 2 FLAGS (\\Flagged))"])
        idling = await deferToThread(start_idle, self.ports["imap_port"])
        await self.deliver("third")
        lines = await deferToThread(end_idle, idling)
        self.assertIn(b"* 2 EXISTS\r\n", lines)
        self.assertTrue(lines[-1].startswith(b"i1 OK"), lines)
        await self.node.stop_cleanly()  # the audit log is flushed at stop
        entries = await deferToThread(audit_entries, self.database)
        self.assertIn(("imap", "success"), {(e.protocol, e.result) for e in entries})
