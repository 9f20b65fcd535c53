"""
A real nginx mail proxy asking a real gomail (auth_http), with Python's
imaplib, poplib and smtplib as the clients: what an operator's users see.

The IMAP and POP3 backends are tiny fakes in this process that record the
credentials nginx logs in with; SMTP logins go to gomail's own SMTP listener
(nginx names the client and the user with XCLIENT), and gomail relays to a
fake smarthost that always answers 421, so that accepted mail stays in the
queue where the test reads its envelope.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket

import pyotp
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from gomail.auth import userdb
from gomail.auth.passwords import hash_password
from gomail.spool.envelope import Envelope
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll, spawn

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
SHARED = "nginx-shared-key"

GOMAIL_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {smtp}
dataDir = "{data}"
enableHealthCheck = false
forwardSMTP = true
forwardHost = "127.0.0.1"
forwardPort = {smarthost}
[security]
requireAuth = true
[smtp]
hostname = "mx.test"
# nginx connects from 127.0.0.1; the SMTP client from another loopback address
# (CLIENT_ADDRESS) must not be allowed XCLIENT itself.
xclientHosts = ["127.0.0.1/32"]
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
[[nginxAuth.backends]]
protocol = "imap"
address = "127.0.0.1"
port = {imap_backend}
[plugins]
path = ["{plugins}"]
[plugins.directory_source]
user = "dana@example.org"
password = "directory pw"
[[nginxAuth.backends]]
protocol = "pop3"
address = "localhost"
port = {pop_backend}
"""

#: An operator's credential-source plugin (IAuthSource): one user the user database does not hold.
DIRECTORY_PLUGIN = """
from zope.interface import implementer
from gomail.interfaces import IAuthSource
from gomail.plugin import SourceUser, plugin

@implementer(IAuthSource)
class Directory:
    def __init__(self, settings, context):
        self.user, self.password = settings.text("user"), settings.text("password")

    def authenticate(self, name, password, protocol, client):
        if name == self.user and password == self.password:
            return SourceUser(name)
        return None

directory_source = plugin("directory_source", Directory, "One user from a directory")
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
    server {{ listen 127.0.0.1:{smtp}; protocol smtp; smtp_auth login plain; xclient on; }}
}}
"""


class FakeIMAPBackend(Protocol):
    """Just enough IMAP for nginx's backend login (LOGIN with literals) and LOGOUT."""

    def connectionMade(self) -> None:
        self.buffer, self.state, self.tag, self.need = b"", "command", b"", 0
        self.user = b""
        self.transport.write(b"* OK fake IMAP ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self._step():
            pass

    def _line(self) -> bytes | None:
        if b"\r\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _step(self) -> bool:
        if self.state == "command":
            line = self._line()
            if line is None:
                return False
            match = re.match(rb"(\S+) LOGIN \{(\d+)\}$", line, re.IGNORECASE)
            tag = line.split(b" ", 1)[0]
            if match:
                self.tag, self.need, self.state = match.group(1), int(match.group(2)), "user"
                self.transport.write(b"+ go ahead\r\n")
            elif b" LOGOUT" in line.upper():
                self.transport.write(b"* BYE\r\n" + tag + b" OK LOGOUT completed\r\n")
                self.transport.loseConnection()
            else:
                self.transport.write(tag + b" OK done\r\n")
            return True
        if len(self.buffer) < self.need:
            return False
        value, self.buffer = self.buffer[:self.need], self.buffer[self.need:]
        if self.state == "user":
            self.user = value
            line = self._line()
            if line is None:  # wait for " {N}": put the value back
                self.buffer = value + self.buffer
                return False
            self.need, self.state = int(re.match(rb" \{(\d+)\}", line).group(1)), "password"
            self.transport.write(b"+ go ahead\r\n")
            return True
        line = self._line()
        if line is None:
            self.buffer = value + self.buffer
            return False
        self.factory.logins.append((self.user.decode(), value.decode()))
        self.state = "command"
        self.transport.write(self.tag + b" OK LOGIN completed\r\n")
        return True


class FakePOP3Backend(Protocol):
    """Just enough POP3 for nginx's backend login (USER, PASS) and QUIT."""

    def connectionMade(self) -> None:
        self.buffer, self.user = b"", ""
        self.transport.write(b"+OK fake POP3 ready\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            verb, _, argument = line.decode().partition(" ")
            if verb.upper() == "USER":
                self.user = argument
                self.transport.write(b"+OK\r\n")
            elif verb.upper() == "PASS":
                self.factory.logins.append((self.user, argument))
                self.transport.write(b"+OK logged in\r\n")
            elif verb.upper() == "QUIT":
                self.transport.write(b"+OK bye\r\n")
                self.transport.loseConnection()
            else:
                self.transport.write(b"+OK\r\n")


class BusySmarthost(Protocol):
    """A smarthost that never takes mail: relayed messages stay queued (deferred)."""

    def connectionMade(self) -> None:
        self.transport.write(b"421 4.3.2 smarthost.test busy, try later\r\n")
        self.transport.loseConnection()


def backend(protocol: type) -> Factory:
    factory = Factory.forProtocol(protocol)
    factory.logins = []
    return factory


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# -- the clients (blocking: run in threads) ------------------------------------------------


def imap_login(port: int, user: str, password: str) -> str:
    """Log in over IMAP through nginx; returns "OK" or the error text (the test then shows nginx's log)."""
    try:
        client = imaplib.IMAP4("127.0.0.1", port, timeout=20)
    except OSError as e:
        return f"connection failed: {e!r}"
    try:
        client.login(user, password)
        client.logout()
        return "OK"
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        try:
            client.shutdown()
        except OSError:
            pass


def pop3_login(port: int, user: str, password: str) -> str:
    """Log in over POP3 through nginx; returns "OK" or the error text."""
    try:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
    except OSError as e:
        return f"connection failed: {e!r}"
    try:
        client.user(user)
        client.pass_(password)
        client.quit()
        return "OK"
    except poplib.error_proto as e:
        return str(e)


#: The SMTP client's own address: nginx itself connects to gomail from 127.0.0.1.
CLIENT_ADDRESS = "127.0.0.2"


def smtp_send(port: int, user: str, password: str, sender: str | None = None,
              commands: tuple[tuple[str, str], ...] = ()) -> tuple[str, list]:
    """
    AUTH through nginx from CLIENT_ADDRESS, send C{commands} (verb, argument)
    and then one message; returns "OK" or the error, and the commands' replies.
    """
    answers: list = []
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=20, source_address=(CLIENT_ADDRESS, 0)) as client:
            client.ehlo("client.test")
            client.login(user, password)
            for verb, argument in commands:
                answers.append(client.docmd(verb, argument))
            client.sendmail(sender or user, ["bob@example.com"], b"Subject: via nginx\r\n\r\nhello\r\n")
        return "OK", answers
    except smtplib.SMTPException as e:
        return f"{getattr(e, 'smtp_code', '')} {getattr(e, 'smtp_error', e)!r}", answers


def queued(data: str) -> list[tuple[Envelope, bytes]]:
    """The envelopes and contents in gomail's queue."""
    queue = os.path.join(data, "spool", "queue")
    found = []
    for name in sorted(os.listdir(queue)) if os.path.isdir(queue) else ():
        if name.endswith(".json"):
            with open(os.path.join(queue, name), "rb") as f:
                envelope = Envelope.from_json(f.read())
            with open(os.path.join(queue, name[:-5] + ".eml"), "rb") as f:
                found.append((envelope, f.read()))
    return found


class NginxMailProxyTests(TestCase):
    """nginx mail proxy + gomail auth_http, end to end."""

    timeout = 120

    def setUp(self) -> Deferred:
        if not (os.path.exists(NGINX) and os.path.exists(MAIL_MODULE)):
            if os.environ.get("CI"):
                self.fail("nginx with the mail module is required (Debian: nginx-core libnginx-mod-mail)")
            raise SkipTest("nginx with the mail module is not installed")
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.imap_backend = backend(FakeIMAPBackend)
        self.pop_backend = backend(FakePOP3Backend)
        ports = {}
        for name, factory in (("imap_backend", self.imap_backend), ("pop_backend", self.pop_backend),
                              ("smarthost", Factory.forProtocol(BusySmarthost))):
            listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            ports[name] = listening.getHost().port
        self.ports = dict(ports, smtp=free_port(), auth=free_port(), imap=free_port(), pop=free_port(),
                          nginx_smtp=free_port())
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
        finally:
            conn.close()

    def blacklist(self, network: str) -> None:
        conn = userdb.open_connection(os.path.join(self.data, "gomail.db"))
        try:
            userdb.transact(conn, userdb.add_blacklist, network, None, "test", 0.0)
        finally:
            conn.close()

    async def _start(self) -> None:
        p = self.ports
        plugins = os.path.join(self.workdir, "plugins")
        os.makedirs(plugins)
        write_file(os.path.join(plugins, "directory_source.py"), DIRECTORY_PLUGIN)
        node = GomailNode(self, GOMAIL_CONFIG, workdir=self.workdir, data=self.data, shared=SHARED,
                          plugins=plugins, **p)
        self.gomail = await node.start()
        prefix = os.path.join(self.workdir, "nginx")
        os.makedirs(prefix)
        write_file(os.path.join(prefix, "nginx.conf"),
                   NGINX_CONFIG.format(module=MAIL_MODULE, prefix=prefix, auth=p["auth"], shared=SHARED,
                                       imap=p["imap"], pop=p["pop"], smtp=p["nginx_smtp"]))
        self.nginx = spawn(reactor, [NGINX, "-p", prefix, "-e", os.path.join(prefix, "error.log"),
                                     "-c", os.path.join(prefix, "nginx.conf")], cwd=prefix)
        self.addCleanup(self.nginx.stop, reactor)
        await poll(reactor, lambda: accepts(p["imap"]) and accepts(p["pop"]) and accepts(p["nginx_smtp"]))

    def _diagnostics(self) -> str:
        log = os.path.join(self.workdir, "nginx", "error.log")
        text = ""
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                text = f.read()[-3000:]
        return f"nginx: {text}\ngomail: {self.gomail.output.decode(errors='replace')[-3000:]}"

    async def test_imap_good_password_reaches_backend(self) -> None:
        """IMAP login with the right password reaches the backend with the same credentials."""
        result = await deferToThread(imap_login, self.ports["imap"], "alice@example.org", "alice pw")
        self.assertEqual(result, "OK", self._diagnostics())
        self.assertEqual(self.imap_backend.logins, [("alice@example.org", "alice pw")])

    async def test_pop3_good_password_reaches_backend(self) -> None:
        """POP3 login reaches the backend configured by host name (gomail sent nginx its IP)."""
        result = await deferToThread(pop3_login, self.ports["pop"], "alice@example.org", "alice pw")
        self.assertEqual(result, "OK", self._diagnostics())
        self.assertEqual(self.pop_backend.logins, [("alice@example.org", "alice pw")])

    async def test_totp_code_is_stripped_for_the_backend(self) -> None:
        """Password + TOTP code gets in; the backend sees the password without the code."""
        code = pyotp.TOTP(SECRET).now()
        result = await deferToThread(imap_login, self.ports["imap"], "tom@example.org", "tom-pw" + code)
        self.assertEqual(result, "OK", self._diagnostics())
        self.assertEqual(self.imap_backend.logins, [("tom@example.org", "tom-pw")])

    async def test_wrong_password_refused(self) -> None:
        """A wrong password is refused with gomail's generic text, and nothing reaches the backend."""
        result = await deferToThread(imap_login, self.ports["imap"], "alice@example.org", "wrong")
        self.assertIn("Invalid login or password", result, self._diagnostics())
        self.assertEqual(self.imap_backend.logins, [])

    async def test_plugin_source_user_reaches_backend(self) -> None:
        """A user only a credential-source plugin knows logs in through nginx (IMAP, and SMTP, where gomail
        is the backend named by XCLIENT LOGIN); a wrong password does not."""
        result = await deferToThread(imap_login, self.ports["imap"], "dana@example.org", "directory pw")
        self.assertEqual(result, "OK", self._diagnostics())
        self.assertEqual(self.imap_backend.logins, [("dana@example.org", "directory pw")])
        refused = await deferToThread(imap_login, self.ports["imap"], "dana@example.org", "guess")
        self.assertIn("Invalid login or password", refused)
        # nginx's SMTP proxy: auth_http logs dana in through the plugin, then XCLIENT LOGIN names her.
        result, _ = await deferToThread(smtp_send, self.ports["nginx_smtp"], "dana@example.org", "directory pw")
        self.assertEqual(result, "OK", self._diagnostics())
        [(envelope, _)] = queued(self.data)
        self.assertEqual((envelope.sender, envelope.auth_user), ("dana@example.org", "dana@example.org"))

    async def test_locked_user_refused(self) -> None:
        """After maxFailAttempts wrong passwords, even the right one is refused the same way."""
        for _ in range(2):
            await deferToThread(pop3_login, self.ports["pop"], "alice@example.org", "wrong")
        result = await deferToThread(pop3_login, self.ports["pop"], "alice@example.org", "alice pw")
        self.assertIn("Invalid login or password", result, self._diagnostics())
        self.assertEqual(self.pop_backend.logins, [])

    async def test_blacklisted_client_refused(self) -> None:
        """A blacklisted client IP (nginx's Client-IP) is refused even with the right password."""
        self.blacklist("127.0.0.0/8")
        await poll(reactor, lambda: True)  # the entry is read at the next refresh
        self.gomail.output = b""
        result = await deferToThread(imap_login, self.ports["imap"], "alice@example.org", "alice pw")
        self.assertIn("Invalid login or password", result, self._diagnostics())
        self.assertEqual(self.imap_backend.logins, [])

    async def test_smtp_through_nginx(self) -> None:
        """
        With requireAuth = true (the default) and the shipped "xclient on", SMTP
        AUTH at nginx is enough: nginx's XCLIENT carries the user and the
        client's own address to gomail. The message is queued for the
        smarthost with the user as auth_user, the client (not nginx) as its
        address, and a Received: header naming the client and ESMTPA.
        """
        result, _ = await deferToThread(smtp_send, self.ports["nginx_smtp"], "alice@example.org", "alice pw")
        self.assertEqual(result, "OK", self._diagnostics())
        [(envelope, content)] = queued(self.data)
        self.assertEqual((envelope.auth_user, envelope.client_address, envelope.sender),
                         ("alice@example.org", CLIENT_ADDRESS, "alice@example.org"))
        self.assertTrue(content.startswith(f"Received: from client.test ([{CLIENT_ADDRESS}])\r\n"
                                           f"\tby mx.test (gomail) with ESMTPA id {envelope.id}".encode()), content)
        # nginx's connection is the peer, the client is who the log names.
        await poll(reactor, lambda: b"XCLIENT from 127.0.0.1: client 127.0.0.2" in self.gomail.output)

    async def test_smtp_sender_not_owned_through_nginx(self) -> None:
        """Through nginx the logged-in user is held to its own sender addresses: 553 5.7.1."""
        result, _ = await deferToThread(smtp_send, self.ports["nginx_smtp"], "alice@example.org", "alice pw",
                                        "ceo@example.org")
        self.assertIn("553", result, self._diagnostics())
        self.assertIn("5.7.1", result)
        self.assertEqual(queued(self.data), [])

    async def test_smtp_client_xclient_through_nginx_refused(self) -> None:
        """
        Once logged in, nginx relays everything its client sends: the client's
        own XCLIENT (to become tom, or to look like nginx) gets 550 5.7.0, and
        it is still alice, who may not send as tom.
        """
        result, answers = await deferToThread(
            smtp_send, self.ports["nginx_smtp"], "alice@example.org", "alice pw", "tom@example.org",
            (("XCLIENT", "LOGIN=tom@example.org"), ("XCLIENT", "ADDR=127.0.0.1 LOGIN=tom@example.org")))
        self.assertEqual(answers, [(550, b"5.7.0 Error: insufficient authorization")] * 2, self._diagnostics())
        self.assertIn("553", result)
        self.assertEqual(queued(self.data), [])

    async def test_smtp_wrong_password(self) -> None:
        """A wrong SMTP password gets 535 5.7.8 from nginx (gomail's Auth-Error-Code)."""
        result, _ = await deferToThread(smtp_send, self.ports["nginx_smtp"], "alice@example.org", "nope")
        self.assertIn("535", result, self._diagnostics())
        self.assertIn("5.7.8", result)
