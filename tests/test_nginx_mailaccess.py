"""
A real nginx mail proxy in front of gomail's OWN IMAP and POP3 listeners
(no imap/pop3 backend configured: auth_http names gomail's listeners, with a
login ticket as C{Auth-Pass}; nginx's address is in C{trustedProxies}), with
Python's imaplib and poplib as the clients, connecting from 127.0.0.2 while
nginx connects to gomail from 127.0.0.1: what an operator following
conf/nginx-mail.conf gets.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import socket

import pyotp
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from gomail.auth import userdb
from gomail.auth.passwords import app_password_digest, hash_password
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll, spawn
from tests.test_nginx_integration import MAIL_MODULE, NGINX, accepts, write_file

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
SHARED = "nginx-shared-key"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
#: The clients' own address: nginx connects to gomail from 127.0.0.1, the only trusted proxy.
CLIENT = "127.0.0.2"

GOMAIL_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {smtp}
dataDir = "{data}"
enableHealthCheck = false
[smtp]
hostname = "mx.test"
[spool]
minFreeSpaceMB = 0
[auth]
bcryptRounds = 4
maxFailAttempts = 2
[nginxAuth]
listen = ["tcp:{auth}:interface=127.0.0.1"]
sharedSecret = "{shared}"
waitSeconds = 1
healthCheckInterval = 0
[pop3]
listen = ["tcp:{pop_own}:interface=127.0.0.1"]
trustedProxies = ["127.0.0.1/32"]
[imap]
listen = ["tcp:{imap_own}:interface=127.0.0.1"]
trustedProxies = ["127.0.0.1/32"]
"""

NGINX_CONFIG = """
load_module {module};
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
mail {{
    server_name mail.test;
    auth_http 127.0.0.1:{auth}/api/auth;
    auth_http_header X-Auth-Key "{shared}";
    proxy_pass_error_message on;
    server {{ listen 127.0.0.1:{imap}; protocol imap; }}
    server {{ listen 127.0.0.1:{pop}; protocol pop3; }}
}}
"""


class ClientIMAP(imaplib.IMAP4):
    """imaplib from the client's own address (CLIENT)."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


class ClientPOP3(poplib.POP3):
    """poplib from the client's own address (CLIENT)."""

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout, source_address=(CLIENT, 0))


def imap_session(port: int, user: str, password: str) -> str:
    """LOGIN, SELECT INBOX (only a real gomail session answers it), LOGOUT; "OK" or the error. Blocking."""
    try:
        client = ClientIMAP("127.0.0.1", port, timeout=20)
    except OSError as e:
        return f"connection failed: {e!r}"
    try:
        client.login(user, password)
        typ, _ = client.select("INBOX")
        client.logout()
        return "OK" if typ == "OK" else f"SELECT {typ}"
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        try:
            client.shutdown()
        except OSError:
            pass


def pop3_session(port: int, user: str, password: str) -> str:
    """USER, PASS, STAT, QUIT; "OK" or the error. Blocking."""
    try:
        client = ClientPOP3("127.0.0.1", port, timeout=20)
    except OSError as e:
        return f"connection failed: {e!r}"
    try:
        client.user(user)
        client.pass_(password)
        client.stat()
        client.quit()
        return "OK"
    except poplib.error_proto as e:
        return str(e)


def capabilities(port: int) -> str:
    """The capabilities gomail's IMAP listener offers a client connecting directly (no TLS). Blocking."""
    client = ClientIMAP("127.0.0.1", port, timeout=20)
    try:
        return " ".join(client.capabilities)
    finally:
        client.shutdown()


class NginxGomailBackendTests(TestCase):
    """nginx mail proxy -> gomail's own IMAP and POP3, end to end."""

    timeout = 120

    def setUp(self):
        if not (os.path.exists(NGINX) and os.path.exists(MAIL_MODULE)):
            if os.environ.get("CI"):
                self.fail("nginx with the mail module is required (Debian: nginx-core libnginx-mod-mail)")
            raise SkipTest("nginx with the mail module is not installed")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.ports = {name: free_port() for name in ("smtp", "auth", "imap", "pop", "imap_own", "pop_own")}
        self.data = os.path.join(self.workdir, "data")
        self._users()
        return Deferred.fromCoroutine(self._start())

    def _users(self) -> None:
        os.makedirs(self.data)
        conn = userdb.open_connection(os.path.join(self.data, "gomail.db"))
        try:
            userdb.transact(conn, userdb.migrate)
            userdb.transact(conn, userdb.add_user, "alice@example.org", hash_password("alice pw", 4), 0.0)
            userdb.transact(conn, userdb.add_user, "tom@example.org", hash_password("tom-pw", 4), 0.0)
            userdb.transact(conn, userdb.set_totp, "tom@example.org", SECRET, True, 0.0)
            userdb.transact(conn, userdb.add_app_password, "tom@example.org", "phone",
                            app_password_digest(APP_PASSWORD), 0.0)
        finally:
            conn.close()

    async def _start(self) -> None:
        p = self.ports
        node = GomailNode(self, GOMAIL_CONFIG, workdir=self.workdir, data=self.data, shared=SHARED, **p)
        self.gomail = await node.start()
        prefix = os.path.join(self.workdir, "nginx")
        os.makedirs(prefix)
        write_file(os.path.join(prefix, "nginx.conf"),
                   NGINX_CONFIG.format(module=MAIL_MODULE, prefix=prefix, auth=p["auth"], shared=SHARED,
                                       imap=p["imap"], pop=p["pop"]))
        self.nginx = spawn(reactor, [NGINX, "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                                     "-c", os.path.join(prefix, "nginx.conf")], cwd=prefix)
        self.addCleanup(self.nginx.stop, reactor)
        await poll(reactor, lambda: accepts(p["imap"]) and accepts(p["pop"]))

    def _diagnostics(self) -> str:
        log = os.path.join(self.workdir, "nginx", "error.log")
        text = ""
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                text = f.read()[-3000:]
        return f"nginx: {text}\ngomail: {self.gomail.output.decode(errors='replace')[-3000:]}"

    async def imap(self, user: str, password: str) -> str:
        return await deferToThread(imap_session, self.ports["imap"], user, password)

    async def pop3(self, user: str, password: str) -> str:
        return await deferToThread(pop3_session, self.ports["pop"], user, password)

    async def test_password_user(self):
        """A password user gets a real gomail IMAP and POP3 session through nginx, logged in with a ticket."""
        self.assertEqual(await self.imap("alice@example.org", "alice pw"), "OK", self._diagnostics())
        self.assertEqual(await self.pop3("alice@example.org", "alice pw"), "OK", self._diagnostics())
        # auth_http checked the password from the client's address; the backend took nginx's ticket.
        await poll(reactor, lambda: b'IMAP login of user "alice@example.org" from 127.0.0.1 (ticket)'
                   in self.gomail.output)

    async def test_totp_code_works_once(self):
        """Password + TOTP code gets in once (IMAP); the same code again is refused, over IMAP and POP3."""
        password = "tom-pw" + pyotp.TOTP(SECRET).now()
        self.assertEqual(await self.imap("tom@example.org", password), "OK", self._diagnostics())
        self.assertIn("Invalid login or password", await self.imap("tom@example.org", password))
        self.assertIn("Invalid login or password", await self.pop3("tom@example.org", password))

    async def test_totp_code_over_pop3(self):
        """A TOTP user's password + code gets a POP3 session (the backend never sees the code)."""
        password = "tom-pw" + pyotp.TOTP(SECRET).now()
        self.assertEqual(await self.pop3("tom@example.org", password), "OK", self._diagnostics())

    async def test_app_password(self):
        """A TOTP user's app password logs in over IMAP and POP3, as often as needed."""
        for _ in range(2):
            self.assertEqual(await self.imap("tom@example.org", APP_PASSWORD), "OK", self._diagnostics())
            self.assertEqual(await self.pop3("tom@example.org", APP_PASSWORD), "OK", self._diagnostics())

    async def test_wrong_password_and_lockout(self):
        """A wrong password is refused; after maxFailAttempts (2) even the right one is, on both protocols."""
        self.assertIn("Invalid login or password", await self.imap("alice@example.org", "wrong"))
        self.assertIn("Invalid login or password", await self.pop3("alice@example.org", "wrong"))
        self.assertIn("Invalid login or password", await self.imap("alice@example.org", "alice pw"),
                      self._diagnostics())
        self.assertIn("Invalid login or password", await self.pop3("alice@example.org", "alice pw"))

    async def test_direct_clients_still_need_tls(self):
        """A client reaching gomail's IMAP listener directly (not via nginx) still sees LOGINDISABLED."""
        offered = await deferToThread(capabilities, self.ports["imap_own"])
        self.assertIn("LOGINDISABLED", offered)
