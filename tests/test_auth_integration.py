"""
End-to-end SMTP AUTH against real processes: C{twistd -n gomail} servers on
free ports sharing a real C{redis-server} (L{tests.redisserver}) and one user
database, driven by smtplib clients (STARTTLS and implicit TLS) in threads so
the reactor that watches the processes keeps running.

What only real processes can show: that lockouts and TOTP replay marks really
live in the shared Redis (one server's decision binds the other), and what a
running server does when Redis goes away and comes back.

Users are created by the test directly in the SQLite user database (bcrypt
cost 4), before the servers start. smtplib's C{login()} is not used: it would
retry a refused AUTH with the next mechanism, so one call could count as two
failed logins; C{AUTH PLAIN} is sent as one command and its reply returned.
"""

from __future__ import annotations

import base64
import dataclasses
import email
import json
import os
import smtplib
import time

import pyotp
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gomail.auth import passwords, userdb
from gomail.configschema import Config
from tests.gomailprocess import GomailNode
from tests.processes import (
    client_tls,
    free_port,
    maildir_messages,
    poll,
)
from tests.redisserver import RedisServer, start_redis

CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = {data}
enableHealthCheck = false
[security]
requireAuth = true
[smtp]
hostname = "{hostname}"
implicitTlsListen = ["tcp:{tls_port}:interface=127.0.0.1"]
[spool]
minFreeSpaceMB = 0
[auth]
database = {database}
secretFile = {secret}
bcryptRounds = 4
maxFailAttempts = 3
failTTL = 60
lockTTL = 300
cacheTTL = 300
[redis]
url = "{redis}"
"""

# Fixed-port HTTP listeners would collide between two servers on one host:
# off, where this gomail has them (the monitor follows enableHealthCheck).
HTTP_OFF = "".join(f"[{section}]\nenabled = false\n" for section in ("nginxAuth", "admin", "pop3", "imap")
                   if section in {f.name for f in dataclasses.fields(Config)})

ALICE, ALICE_PASSWORD = "alice@example.org", "alice-Correct-horse-1"
ALICE_APP_PASSWORD = "abcd-efgh-ijkl-mnop"
#: Alice's own client address, and a guesser's (both loopback: the servers listen on 127.0.0.1).
HOME, GUESSER = "127.0.0.1", "127.0.0.2"
CAROL, CAROL_PASSWORD = "carol@example.org", "carol-Battery-staple-2"
TINA, TINA_PASSWORD = "tina@example.org", "tina-Totp-protected-3"
TINA_SECRET = pyotp.random_base32()

MESSAGE = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: sent while redis was down\r\n\r\n"
           b"Still authenticated.\r\n")


def _plain(name: str, password: str) -> str:
    return base64.b64encode(f"\0{name}\0{password}".encode()).decode("ascii")


def connect(port: int, implicit_tls: bool, source: str = "127.0.0.1") -> smtplib.SMTP:
    """
    An smtplib client inside TLS (STARTTLS, or an implicit-TLS port), after
    EHLO, from the loopback address C{source} (127.0.0.2 is another client IP). Blocking.
    """
    if implicit_tls:
        client: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, timeout=20, context=client_tls(),
                                                source_address=(source, 0))
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(source, 0))
        client.ehlo("client.test")
        client.starttls(context=client_tls())
    client.ehlo("client.test")
    return client


def auth_plain(client: smtplib.SMTP, name: str, password: str) -> tuple[int, str]:
    """One C{AUTH PLAIN} command: its reply code and text. Blocking."""
    code, text = client.docmd("AUTH", "PLAIN " + _plain(name, password))
    return code, text.decode(errors="replace")


def try_login(port: int, name: str, password: str, implicit_tls: bool = False,
              source: str = "127.0.0.1") -> tuple[int, str]:
    """AUTH PLAIN on a new connection from C{source} (closed afterwards): the reply code and text. Blocking."""
    with connect(port, implicit_tls, source) as client:
        return auth_plain(client, name, password)


def create_users(database: str, *, totp: bool = False) -> None:
    """The test's users in the shared database (bcrypt cost 4); Tina needs TOTP when C{totp}."""
    conn = userdb.open_connection(database)
    try:
        userdb.transact(conn, userdb.migrate)
        now = time.time()
        for name, password in ((ALICE, ALICE_PASSWORD), (CAROL, CAROL_PASSWORD), (TINA, TINA_PASSWORD)):
            userdb.transact(conn, userdb.add_user, name, passwords.hash_password(password, 4), now)
        userdb.transact(conn, userdb.add_app_password, ALICE, "phone",
                        passwords.app_password_digest(ALICE_APP_PASSWORD), now)
        if totp:
            userdb.transact(conn, userdb.set_totp, TINA, TINA_SECRET, True, now)
    finally:
        conn.close()


class Node(GomailNode):
    """One gomail server of the test: its ports and data directory (<workdir>/<name>), in a shared work directory."""

    def __init__(self, test: TestCase, workdir: str, name: str, redis_url: str) -> None:
        super().__init__(test, name=name, workdir=workdir, data=os.path.join(workdir, name))
        self.port, self.tls_port = free_port(), free_port()
        self.mailbox = os.path.join(self.data, "spool", "mailbox", "bob@example.com", "new")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(
                port=self.port, tls_port=self.tls_port, hostname=f"{self.name}.test", redis=redis_url,
                data=json.dumps(self.data), database=json.dumps(os.path.join(workdir, "users.db")),
                secret=json.dumps(os.path.join(workdir, "auth.secret"))) + HTTP_OFF)

    def delivered(self) -> list[bytes]:
        return maildir_messages(self.mailbox)


class AuthIntegrationCase(TestCase):
    """A Redis server and gomail servers that share it, the user database and the auth secret."""

    timeout = 180

    async def start_cluster(self, names: tuple[str, ...], *, totp: bool = False) -> list[Node]:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.redis: RedisServer = await start_redis(self, reactor)
        create_users(os.path.join(self.workdir, "users.db"), totp=totp)
        nodes = []
        # One after the other: the first creates the shared auth secret file.
        for name in names:
            node = Node(self, self.workdir, name, self.redis.url)
            await node.start()
            nodes.append(node)
        return nodes

    def output(self, node: Node) -> str:
        return node.process.output.decode(errors="replace")


class SharedRedisTests(AuthIntegrationCase):
    """Two gomail servers, one Redis: per-user auth state is the cluster's, not a process's."""

    async def _lockout(self) -> None:
        a, b = await self.start_cluster(("a", "b"))
        for attempt in range(3):
            code, text = await deferToThread(try_login, a.port, ALICE, f"wrong-password-{attempt}",
                                             source=GUESSER)
            self.assertEqual((code, text), (535, "5.7.8 Authentication credentials invalid"))
        await a.process.wait_for(b"user locked out for 300 s on client IP 127.0.0.2", reactor)
        # The right password from the guessing IP, on the other server: refused exactly like a wrong one.
        code, text = await deferToThread(try_login, b.port, ALICE, ALICE_PASSWORD, source=GUESSER)
        self.assertEqual((code, text), (535, "5.7.8 Authentication credentials invalid"), self.output(b))
        # Same over B's implicit-TLS listener, and for her app password.
        code, _ = await deferToThread(try_login, b.tls_port, ALICE, ALICE_PASSWORD, True, GUESSER)
        self.assertEqual(code, 535)
        code, _ = await deferToThread(try_login, b.port, ALICE, ALICE_APP_PASSWORD, source=GUESSER)
        self.assertEqual(code, 535)
        await b.process.wait_for(b'SMTP AUTH failed for user "alice@example.org" from 127.0.0.2 (locked)', reactor)
        # From her own IP Alice logs in on both servers, with her password and her app password.
        code, text = await deferToThread(try_login, b.port, ALICE, ALICE_PASSWORD, source=HOME)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(b))
        code, _ = await deferToThread(try_login, a.tls_port, ALICE, ALICE_APP_PASSWORD, True, HOME)
        self.assertEqual(code, 235)
        # The lock is Alice's on that IP only: Carol logs in from the guessing IP.
        code, text = await deferToThread(try_login, b.port, CAROL, CAROL_PASSWORD, source=GUESSER)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(b))

    def test_lockout_on_one_server_is_enforced_by_the_other(self) -> Deferred:
        """
        What the tester did (issue 14, item 13), on two servers sharing Redis:
        three wrong passwords for Alice from 127.0.0.2 through server A (each
        535 5.7.8, and A logs the lock on that IP) lock her out on server B too
        from that IP: her right password and her app password answer 535 5.7.8
        (B logs "locked"), on STARTTLS and implicit TLS. From her own IP
        (127.0.0.1) she still logs in on B and A (235 2.7.0), with her password
        and her app password; Carol logs in from 127.0.0.2.
        """
        return Deferred.fromCoroutine(self._lockout())

    async def _totp_replay(self) -> None:
        a, b = await self.start_cluster(("a", "b"), totp=True)
        totp = pyotp.TOTP(TINA_SECRET)
        now = time.time()
        code_prev, code_now, code_next = totp.at(now - 30), totp.at(now), totp.at(now + 30)
        # The password alone is not enough for a TOTP user.
        code, _ = await deferToThread(try_login, a.port, TINA, TINA_PASSWORD)
        self.assertEqual(code, 535)
        code, text = await deferToThread(try_login, a.port, TINA, TINA_PASSWORD + code_now)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(a))
        # The same code, within its validity, on the other server: a replay.
        code, text = await deferToThread(try_login, b.tls_port, TINA, TINA_PASSWORD + code_now, True)
        self.assertEqual((code, text), (535, "5.7.8 Authentication credentials invalid"), self.output(b))
        await b.process.wait_for(b'SMTP AUTH failed for user "tina@example.org" from 127.0.0.1 (totp-replay)', reactor)
        # B itself is fine with Tina: an unused code (the next step's, within the
        # +-1 step window) is accepted, her password found in the auth cache A
        # filled (the shared Redis and auth secret), not checked again.
        code, text = await deferToThread(try_login, b.port, TINA, TINA_PASSWORD + code_next)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(b))
        await b.process.wait_for(b'SMTP AUTH succeeded for user "tina@example.org" from 127.0.0.1 (cache)', reactor)
        # And A refuses that one now, and the older code (still in its validity window) too.
        code, _ = await deferToThread(try_login, a.port, TINA, TINA_PASSWORD + code_next)
        self.assertEqual(code, 535)
        code, _ = await deferToThread(try_login, a.port, TINA, TINA_PASSWORD + code_prev)
        self.assertEqual(code, 535)
        await a.process.wait_for(b'SMTP AUTH failed for user "tina@example.org" from 127.0.0.1 (totp-replay)', reactor)

    def test_totp_code_used_on_one_server_is_refused_by_the_other(self) -> Deferred:
        """
        Tina has TOTP: password + current code on server A answers 235; the same
        password + code on server B answers 535 5.7.8 (logged as a TOTP replay)
        while the code is still within its validity window. B accepts an unused
        code (235, password from the auth cache A filled, which the shared auth
        secret makes usable), and A then refuses that code in turn, and the
        previous step's code as well (RFC 6238 5.2: nothing at or before the
        last step used is accepted).
        """
        return Deferred.fromCoroutine(self._totp_replay())


class RedisOutageTests(AuthIntegrationCase):
    """One gomail server whose Redis stops and comes back."""

    async def _outage(self) -> None:
        (node,) = await self.start_cluster(("solo",))
        client = await deferToThread(connect, node.port, False)
        self.addCleanup(client.close)
        code, text = await deferToThread(auth_plain, client, ALICE, ALICE_PASSWORD)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(node))

        await self.redis.stop()
        # A new login, right password: a temporary failure, not a success nor a 535.
        code, text = await deferToThread(try_login, node.port, CAROL, CAROL_PASSWORD)
        self.assertEqual((code, text), (454, "4.7.0 Temporary authentication failure, try again later"),
                         self.output(node))
        code, _ = await deferToThread(try_login, node.tls_port, ALICE, ALICE_PASSWORD, True)
        self.assertEqual(code, 454)

        # The session authenticated before the outage still sends (requireAuth is on).
        def send() -> list[tuple[int, bytes]]:
            return [client.mail(ALICE), client.rcpt("bob@example.com"), client.data(MESSAGE)]
        (mail, _), (rcpt, _), (data, queued) = await deferToThread(send)
        self.assertEqual((mail, rcpt, data), (250, 250, 250), queued)
        self.assertTrue(queued.startswith(b"2.0.0 Ok: queued as "), queued)
        await poll(reactor, lambda: len(node.delivered()) == 1)
        delivered = email.message_from_bytes(node.delivered()[0])
        self.assertEqual(delivered["Subject"], "sent while redis was down")
        self.assertIn("ESMTPSA", delivered["Received"])

        # Redis back on the same port: gomail reconnects by itself (backoff up to ~10 s).
        await self.redis.start()
        for _ in range(60):
            code, text = await deferToThread(try_login, node.port, CAROL, CAROL_PASSWORD)
            if code != 454:
                break
            await task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual((code, text), (235, "2.7.0 Authentication successful"), self.output(node))
        # The old session is still usable too.
        code, _ = await deferToThread(client.noop)
        self.assertEqual(code, 250)
        self.assertIn("state store unavailable", self.output(node))

    def test_redis_outage_fails_new_logins_temporarily_and_spares_sessions(self) -> Deferred:
        """
        With Redis stopped, a new AUTH with the right password answers
        454 4.7.0 (STARTTLS and implicit TLS), while a session authenticated
        before the outage still sends a message (MAIL/RCPT/DATA 250, queued) that
        is delivered to the local Maildir. Once Redis is started again on the
        same port, a new AUTH succeeds (235) within a bounded number of retries,
        without restarting gomail.
        """
        return Deferred.fromCoroutine(self._outage())
