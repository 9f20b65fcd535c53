"""
Tests for C{gomail user ...} and C{gomail blacklist ...} (L{gomail.cli} and
L{gomail.cli.user}, L{gomail.cli.blacklist}): what an operator sees, the exit status, and the user
database after each command.

The commands run in-process through L{gomail.cli.main} with a L{Clock},
bcrypt's minimum work factor, captured output and a stdin the test controls
(a prompt is a patched C{getpass}); one test runs the real entry point as a
process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import sys

import bcrypt
import pyotp
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

import gomail
from gomail.auth import passwords, userdb
from gomail.auth.checker import AuthFailure, LoginAttempt
from gomail.auth.records import UserRecord
from gomail.cli import main
from gomail.cli import user as usercli
from gomail.state.redis import RedisStateStore
from tests.authtesting import MemoryUsers, authenticator
from tests.processes import free_port
from tests.redisserver import start_redis

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))
START = 1714564800.0  # 2024-05-01T12:00:00Z
PASSWORD = "s3cret-Horse-battery"


class TerminalInput(io.StringIO):
    """A stdin that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class UserCommandTestCase(SynchronousTestCase):
    """A configuration file whose data directory is new, and L{gomail} to run commands on it."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.database = os.path.join(self.directory, "data", "gomail.db")
        self.config = os.path.join(self.directory, "gomail.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"dataDir = {json.dumps(os.path.join(self.directory, 'data'))}\n")
        self.clock = Clock()
        self.clock.advance(START)
        self.prompts: list[str] = []
        self.answers: list[str] = []
        self.patch(usercli, "getpass", self.getpass)

    def getpass(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answers.pop(0)

    def gomail(self, *argv: str, stdin: str = "", tty: bool = False) -> tuple[int, str, str]:
        """Run C{gomail ARGV --config FILE} in-process; returns the exit status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", TerminalInput(stdin) if tty else io.StringIO(stdin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([*argv, "--config", self.config], clock=self.clock, bcrypt_rounds=4)
        return status, out.getvalue(), err.getvalue()

    def add(self, name: str = "alice", *options: str, password: str = PASSWORD) -> None:
        status, _, err = self.gomail("user", "add", name, "--password-stdin", *options, stdin=password + "\n")
        self.assertEqual((status, err), (0, ""))

    def user(self, name: str = "alice") -> UserRecord:
        conn = userdb.open_connection(self.database)
        try:
            user = userdb.transact(conn, userdb.get_user, name)
        finally:
            conn.close()
        assert user is not None, name
        return user

    def assertOneErrorLine(self, result: tuple[int, str, str], text: str, status: int = 1) -> None:
        """The status given (1: error), nothing on stdout, one line on stderr containing C{text}."""
        self.assertEqual(result[:2], (status, ""))
        err = result[2]
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("gomail: "), err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)


class AddTests(UserCommandTestCase):
    """C{gomail user add}."""

    def test_password_stdin(self) -> None:
        """--password-stdin reads one line; the user is stored with a bcrypt hash of it and the canonical name."""
        status, out, err = self.gomail("user", "add", " Alice", "--password-stdin", stdin=PASSWORD + "\nnext\n")
        self.assertEqual((status, out, err), (0, "added user alice\n", ""))
        user = self.user()
        self.assertTrue(user.password_hash.startswith(b"$2b$04$"))
        self.assertTrue(bcrypt.checkpw(PASSWORD.encode(), user.password_hash))
        self.assertEqual((user.enabled, user.totp_enabled, user.created), (True, False, START))

    def test_prompt(self) -> None:
        """On a terminal the password is prompted for twice and never echoed to the output."""
        self.answers = [PASSWORD, PASSWORD]
        status, out, err = self.gomail("user", "add", "alice", tty=True)
        self.assertEqual((status, out, err), (0, "added user alice\n", ""))
        self.assertEqual(self.prompts, ["New password: ", "Repeat password: "])
        self.assertTrue(bcrypt.checkpw(PASSWORD.encode(), self.user().password_hash))

    def test_prompt_mismatch(self) -> None:
        """Two different answers are an error (1) and add nobody."""
        self.answers = [PASSWORD, PASSWORD + "x"]
        self.assertOneErrorLine(self.gomail("user", "add", "alice", tty=True), "do not match")
        self.assertEqual(self.gomail("user", "list")[1], "0 users\n")

    def test_prompt_cancelled(self) -> None:
        """^D at the prompt cancels (1) without a traceback and adds nobody."""
        def eof(prompt: str) -> str:
            raise EOFError()
        self.patch(usercli, "getpass", eof)
        status, out, err = self.gomail("user", "add", "alice", tty=True)
        self.assertEqual((status, out, err), (1, "", "\ngomail: cancelled\n"))
        self.assertEqual(self.gomail("user", "list")[1], "0 users\n")

    def test_no_terminal(self) -> None:
        """Without a terminal and without --password-stdin the command refuses (usage, 2) and reads nothing."""
        result = self.gomail("user", "add", "alice", stdin=PASSWORD + "\n")
        self.assertOneErrorLine(result, "--password-stdin", status=2)
        self.assertEqual((self.prompts, sys.stdin.read()), ([], PASSWORD + "\n"))

    def test_never_from_argv(self) -> None:
        """There is no way to pass the password as an argument: a usage error (2) that never echoes it."""
        for argv in (["alice", PASSWORD], ["alice", "--password", PASSWORD], ["alice", f"--password={PASSWORD}"]):
            status, out, err = self.gomail("user", "add", *argv)
            self.assertEqual((status, out), (2, ""))
            self.assertNotIn(PASSWORD, err)
        self.assertFalse(os.path.exists(self.database))

    def test_bad_passwords(self) -> None:
        """Empty and over-long (more than 72 bytes) passwords are refused with one line that never shows them."""
        long = "Ü" * 40  # 80 bytes in UTF-8
        for password, text in (("", "empty"), (long, "longer than 72 bytes")):
            result = self.gomail("user", "add", "alice", "--password-stdin", stdin=password + "\n")
            self.assertOneErrorLine(result, text)
            if password:
                self.assertNotIn(password, result[2])
        self.assertEqual(self.gomail("user", "list")[1], "0 users\n")

    def test_bad_name(self) -> None:
        """A bad name is refused (1) before any password is asked for."""
        self.answers = [PASSWORD, PASSWORD]
        self.assertOneErrorLine(self.gomail("user", "add", "al ice", tty=True), "space or control character")
        self.assertEqual(self.prompts, [])

    def test_exists(self) -> None:
        """Adding a name that is already taken in another spelling fails (1) without asking for a password."""
        self.add("alice")
        self.answers = [PASSWORD, PASSWORD]
        self.assertOneErrorLine(self.gomail("user", "add", "ＡＬＩＣＥ", tty=True), "user alice already exists")
        self.assertEqual(self.prompts, [])

    def test_senders(self) -> None:
        """--sender entries are stored canonical; a bad one is refused before the password is read."""
        self.add("alice", "--sender", "Alice@Example.COM", "--sender", "@example.org")
        self.assertEqual(self.user().allowed_senders, ("Alice@example.com", "@example.org"))
        self.assertOneErrorLine(self.gomail("user", "add", "bob", "--sender", "bob", "--password-stdin",
                                            stdin=PASSWORD + "\n"), "'bob'")
        self.assertEqual(sys.stdin.read(), PASSWORD + "\n")

    def test_file_mode(self) -> None:
        """The database the command creates is readable by its owner only."""
        self.add()
        self.assertEqual(stat.S_IMODE(os.stat(self.database).st_mode), 0o600)


class ChangeTests(UserCommandTestCase):
    """C{gomail user passwd|disable|enable|delete|sender}."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")

    def test_passwd(self) -> None:
        """passwd replaces the hash and bumps the credential version (cached logins end)."""
        self.clock.advance(10)
        status, out, err = self.gomail("user", "passwd", "Alice", "--password-stdin", stdin="new-password\n")
        self.assertEqual((status, out, err), (0, "changed the password of alice\n", ""))
        user = self.user()
        self.assertTrue(bcrypt.checkpw(b"new-password", user.password_hash))
        self.assertEqual((user.credential_version, user.updated), (2, START + 10))

    def test_backend(self) -> None:
        """backend set stores an IP:PORT assignment, refuses a host name, and clear removes it."""
        self.assertEqual(self.gomail("user", "backend", "set", "alice", "10.0.0.5:143")[:2],
                         (0, "alice's logins go to 10.0.0.5:143\n"))
        self.assertEqual(self.user().backend, "10.0.0.5:143")
        self.assertOneErrorLine(self.gomail("user", "backend", "set", "alice", "imap.example:143"),
                                "not IP:PORT")
        self.assertEqual(self.gomail("user", "backend", "clear", "alice")[0], 0)
        self.assertIsNone(self.user().backend)

    def test_passwd_unknown(self) -> None:
        """passwd for an unknown user fails (1) before asking for the password."""
        self.answers = [PASSWORD, PASSWORD]
        self.assertOneErrorLine(self.gomail("user", "passwd", "bob", tty=True), "no user bob")
        self.assertEqual(self.prompts, [])

    def test_disable_enable(self) -> None:
        """disable and enable flip the flag, each bumping the credential version."""
        self.assertEqual(self.gomail("user", "disable", "ALICE"), (0, "disabled user alice\n", ""))
        self.assertEqual((self.user().enabled, self.user().credential_version), (False, 2))
        self.assertEqual(self.gomail("user", "enable", "alice"), (0, "enabled user alice\n", ""))
        self.assertEqual((self.user().enabled, self.user().credential_version), (True, 3))
        self.assertOneErrorLine(self.gomail("user", "disable", "bob"), "no user bob")

    def test_delete(self) -> None:
        """delete removes the user; deleting it again fails (1)."""
        self.assertEqual(self.gomail("user", "delete", "alice"), (0, "deleted user alice\n", ""))
        self.assertOneErrorLine(self.gomail("user", "delete", "alice"), "no user alice")

    def test_senders(self) -> None:
        """sender set replaces the list (no version bump); sender clear empties it; bad entries fail (1)."""
        status, out, err = self.gomail("user", "sender", "set", "alice", "@Example.com", "bob@example.com")
        self.assertEqual((status, out, err), (0, "alice may send as: @example.com, bob@example.com\n", ""))
        self.assertEqual((self.user().allowed_senders, self.user().credential_version),
                         (("@example.com", "bob@example.com"), 1))
        self.assertOneErrorLine(self.gomail("user", "sender", "set", "alice", "@"), "no valid domain")
        self.assertEqual(self.gomail("user", "sender", "clear", "alice")[0], 0)
        self.assertEqual(self.user().allowed_senders, ())


class ListTests(UserCommandTestCase):
    """C{gomail user list}."""

    def test_table(self) -> None:
        """A table of users with flags, app password count, senders and backend; never a hash or secret."""
        self.add("bob", "--sender", "@example.com")
        self.add("alice")
        self.gomail("user", "totp", "enable", "alice")
        self.gomail("user", "app-password", "add", "bob", "phone")
        self.gomail("user", "disable", "bob")
        status, out, err = self.gomail("user", "list")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NAME", "ENABLED", "TOTP", "APP-PASSWORDS", "SENDERS", "BACKEND"])
        self.assertEqual(lines[1].split(), ["alice", "yes", "yes", "0", "-", "-"])
        self.assertEqual(lines[2].split(), ["bob", "no", "no", "1", "@example.com", "-"])
        self.assertEqual(lines[3], "2 users")
        self.assertNotIn("$2b$", out)
        self.assertNotIn(self.user().totp_secret, out)

    def test_json(self) -> None:
        """--json prints the same facts as an array, without hashes, digests or secrets."""
        self.add("alice")
        self.gomail("user", "app-password", "add", "alice", "phone")
        status, out, err = self.gomail("user", "list", "--json")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(json.loads(out), [{
            "name": "alice", "enabled": True, "totp": False, "app_passwords": ["phone"], "senders": [],
            "backend": None, "created": "2024-05-01T12:00:00Z", "updated": "2024-05-01T12:00:00Z"}])
        self.assertNotIn(self.user().app_passwords[0].digest, out)


class TOTPTests(UserCommandTestCase):
    """C{gomail user totp enable|disable}."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")

    def test_enable(self) -> None:
        """enable stores a new secret, requires codes and prints the otpauth:// URI (issuer gomail) and a QR code."""
        status, out, err = self.gomail("user", "totp", "enable", "Alice")
        self.assertEqual((status, err), (0, ""))
        user = self.user()
        self.assertEqual((user.totp_enabled, user.credential_version), (True, 2))
        uri = next(line for line in out.splitlines() if line.startswith("otpauth://"))
        totp = pyotp.parse_uri(uri)
        self.assertEqual((totp.secret, totp.name, totp.issuer), (user.totp_secret, "alice", "gomail"))
        self.assertIn("█", out)  # the QR code, drawn with block characters
        self.assertIn(f"secret (for manual entry): {user.totp_secret}", out)

    def test_enable_twice(self) -> None:
        """Enabling again fails (1) and keeps the enrolled secret, pointing at disable."""
        self.gomail("user", "totp", "enable", "alice")
        secret = self.user().totp_secret
        self.assertOneErrorLine(self.gomail("user", "totp", "enable", "alice"), "gomail user totp disable alice")
        self.assertEqual(self.user().totp_secret, secret)

    def test_disable(self) -> None:
        """disable stops requiring codes and forgets the secret."""
        self.gomail("user", "totp", "enable", "alice")
        self.assertEqual(self.gomail("user", "totp", "disable", "alice"), (0, "TOTP disabled for alice\n", ""))
        user = self.user()
        self.assertEqual((user.totp_enabled, user.totp_secret, user.credential_version), (False, None, 3))

    def test_unknown(self) -> None:
        """TOTP for an unknown user fails (1)."""
        self.assertOneErrorLine(self.gomail("user", "totp", "enable", "bob"), "no user bob")

    def test_qr_without_unicode(self) -> None:
        """On an output that cannot encode block characters the QR code is drawn with '#'."""
        out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
        drawn = usercli.render_qr("otpauth://totp/gomail:alice?secret=JBSWY3DPEHPK3PXP", out)
        self.assertIn("##", drawn)
        drawn.encode("ascii")
        self.assertEqual(len({len(line) for line in drawn.splitlines()}), 1)


class AppPasswordTests(UserCommandTestCase):
    """C{gomail user app-password add|list|revoke}."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")

    def test_add(self) -> None:
        """add prints a new password once; only its digest is stored."""
        status, out, err = self.gomail("user", "app-password", "add", "alice", "phone")
        self.assertEqual((status, err), (0, ""))
        header, password = out.splitlines()
        self.assertEqual(header, "app password 'phone' for alice (shown only this once):")
        (app,) = self.user().app_passwords
        self.assertEqual((app.label, app.digest, app.created), ("phone", passwords.app_password_digest(password),
                                                                 START))
        self.assertOneErrorLine(self.gomail("user", "app-password", "add", "alice", "phone"), "already has")

    def test_list(self) -> None:
        """list shows label, creation and last use (UTC), never the password or digest."""
        self.gomail("user", "app-password", "add", "alice", "phone")
        self.clock.advance(60)
        self.gomail("user", "app-password", "add", "alice", "laptop")
        conn = userdb.open_connection(self.database)
        userdb.transact(conn, userdb.touch_app_password, self.user().app_passwords[1].id, START + 3600)
        conn.close()
        status, out, err = self.gomail("user", "app-password", "list", "alice")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual([line.split() for line in out.splitlines()], [
            ["LABEL", "CREATED", "LAST-USED"],
            ["laptop", "2024-05-01T12:01:00Z", "never"],
            ["phone", "2024-05-01T12:00:00Z", "2024-05-01T13:00:00Z"],
            ["2", "app", "passwords", "for", "alice"],
        ])

    def test_revoke(self) -> None:
        """revoke removes the app password and bumps the credential version; an unknown label fails (1)."""
        self.gomail("user", "app-password", "add", "alice", "phone")
        status, out, err = self.gomail("user", "app-password", "revoke", "alice", "phone")
        self.assertEqual((status, out, err), (0, "revoked app password 'phone' of alice\n", ""))
        self.assertEqual((self.user().app_passwords, self.user().credential_version), ((), 2))
        self.assertOneErrorLine(self.gomail("user", "app-password", "revoke", "alice", "phone"),
                                "no app password labelled 'phone'")


class BlacklistTests(UserCommandTestCase):
    """C{gomail blacklist add|remove|list}."""

    def test_add_list_remove(self) -> None:
        """Entries are added canonical, listed with expiry and reason, and removed."""
        status, out, err = self.gomail("blacklist", "add", "192.0.2.77/24", "--expires", "1h", "--reason", "scan")
        self.assertEqual((status, out, err), (0, "blacklisted 192.0.2.0/24 until 2024-05-01T13:00:00Z\n", ""))
        self.assertEqual(self.gomail("blacklist", "add", "2001:db8::1")[1], "blacklisted 2001:db8::1/128 for good\n")
        status, out, err = self.gomail("blacklist", "list")
        self.assertEqual([line.split() for line in out.splitlines()], [
            ["NETWORK", "EXPIRES", "REASON"],
            ["192.0.2.0/24", "2024-05-01T13:00:00Z", "scan"],
            ["2001:db8::1/128", "never", "-"],
            ["2", "entries"],
        ])
        self.assertEqual(self.gomail("blacklist", "remove", "192.0.2.0/24"),
                         (0, "removed 192.0.2.0/24 from the blacklist\n", ""))
        self.assertOneErrorLine(self.gomail("blacklist", "remove", "192.0.2.0/24"), "192.0.2.0/24 is not blacklisted")

    def test_expiry(self) -> None:
        """An entry is no longer listed once its time is up."""
        self.gomail("blacklist", "add", "192.0.2.1", "--expires", "600")
        self.clock.advance(600)
        self.assertEqual(self.gomail("blacklist", "list"), (0, "0 entries\n", ""))

    def test_bad_input(self) -> None:
        """A bad network is an error (1); a bad --expires a usage error (2)."""
        self.assertOneErrorLine(self.gomail("blacklist", "add", "example.com"), "not an IP address or network")
        for expires in ("0", "soon", "-5"):
            status, out, _ = self.gomail("blacklist", "add", "192.0.2.1", "--expires", expires)
            self.assertEqual((status, out), (2, ""), expires)


class UsageTests(UserCommandTestCase):
    """Missing actions, configuration errors and the real entry point."""

    def test_no_action(self) -> None:
        """A group without an action prints its help and exits 2."""
        for argv in (["user"], ["user", "totp"], ["user", "app-password"], ["blacklist"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = main(argv, clock=self.clock)
            self.assertEqual(status, 2, argv)
            self.assertIn("ACTION", out.getvalue())

    def test_config_error(self) -> None:
        """An invalid configuration is reported in one line with status 1."""
        with open(self.config, "w", encoding="utf-8") as f:
            f.write("dataDir = 5\n")
        self.assertOneErrorLine(self.gomail("user", "list"), "configuration error")

    def test_configured_database_and_rounds(self) -> None:
        """auth.database names the file the server uses, and auth.bcryptRounds is the cost of new hashes."""
        database = os.path.join(self.directory, "elsewhere", "users.db")
        with open(self.config, "a", encoding="utf-8") as f:
            f.write(f"[auth]\ndatabase = {json.dumps(database)}\nbcryptRounds = 5\n")
        self.patch(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(["user", "add", "alice", "--password-stdin", "--config", self.config], clock=self.clock)
        self.assertEqual(status, 0)
        self.assertFalse(os.path.exists(self.database))
        conn = userdb.open_connection(database)
        self.addCleanup(conn.close)
        self.assertTrue(userdb.transact(conn, userdb.get_user, "alice").password_hash.startswith(b"$2b$05$"))

    def test_unusable_database(self) -> None:
        """A database that cannot be opened is reported in one line with status 1."""
        os.makedirs(self.database)  # a directory where the file should be
        self.assertOneErrorLine(self.gomail("user", "list"), "cannot use the user database")

    def test_entry_point(self) -> None:
        """C{python -m gomail.cli user add --password-stdin} reads a piped password; list then shows the user."""
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8"}
        command = [sys.executable, "-m", "gomail.cli", "user"]
        added = subprocess.run([*command, "add", "alice", "--password-stdin", "--config", self.config],
                               input=PASSWORD + "\n", cwd=self.directory, env=env, capture_output=True,
                               text=True, timeout=60)
        self.assertEqual((added.returncode, added.stdout, added.stderr), (0, "added user alice\n", ""))
        listed = subprocess.run([*command, "list", "--config", self.config], cwd=self.directory, env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((listed.returncode, listed.stderr), (0, ""))
        self.assertEqual(listed.stdout.splitlines()[1].split()[:2], ["alice", "yes"])
        self.assertTrue(bcrypt.checkpw(PASSWORD.encode(), self.user().password_hash))


class UnlockTests(UserCommandTestCase, TestCase):
    """
    C{gomail user unlock NAME [--ip IP]} against a real redis-server that a
    real checker (L{LoginChecker} on a L{RedisStateStore}) locked alice in.
    """

    timeout = 60
    GUESSER, OTHER = "198.51.100.66", "198.51.100.67"

    def append_config(self, text: str) -> None:
        with open(self.config, "a", encoding="utf-8") as f:
            f.write(text)

    def use_redis(self, prefix: str = "gomail:") -> Deferred:
        async def start() -> None:
            server = await start_redis(self, reactor)
            self.append_config(f"[redis]\nurl = {json.dumps(server.url)}\nkeyPrefix = {json.dumps(prefix)}\n")
            self.store = RedisStateStore(reactor, "127.0.0.1", server.port, None, 0, prefix=prefix, reactor=reactor)
            self.addCleanup(self.store.disconnect)
            self.users = MemoryUsers()
            self.users.add("alice", "s3cret")
            clock = Clock()
            clock.advance(START)
            self.auth = authenticator(clock, self.store, self.users)
        return Deferred.fromCoroutine(start())

    async def login(self, password: str, ip: str) -> str:
        """The checker's answer: the via of a success, or the failure's reason."""
        try:
            return (await self.auth.check(LoginAttempt("alice", password, ip, "imap"))).via
        except AuthFailure as failure:
            return failure.reason

    async def lock(self, ip: str) -> None:
        for _ in range(5):
            self.assertEqual(await self.login("wrong", ip), "bad-password")
        self.assertEqual(await self.login("s3cret", ip), "locked")

    def test_without_redis(self) -> None:
        """With no [redis], the locks are in the server's memory: the command says it cannot reach them (1)."""
        status, out, err = self.gomail("user", "unlock", "alice")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no [redis] is configured", err)
        self.assertIn("cannot reach", err)
        self.assertIn("auth.lockTTL (300 s)", err)

    async def _one_ip(self) -> None:
        await self.use_redis()
        await self.lock(self.GUESSER)
        await self.lock(self.OTHER)
        status, out, err = self.gomail("user", "unlock", "Alice", "--ip", self.GUESSER)
        self.assertEqual((status, out, err),
                         (0, f"unlocked alice on {self.GUESSER}: removed 3 lock and failure marks\n", ""))
        self.assertEqual(await self.login("s3cret", self.GUESSER), "password")
        self.assertEqual(await self.login("s3cret", self.OTHER), "locked")
        status, out, _ = self.gomail("user", "unlock", "alice", "--ip", self.GUESSER)
        self.assertEqual((status, out), (0, f"alice was not locked or slowed down on {self.GUESSER}\n"))

    def test_one_ip(self) -> Deferred:
        """--ip lifts alice's lock on that client IP (and her count across IPs) only: the other IP stays locked."""
        return Deferred.fromCoroutine(self._one_ip())

    async def _every_ip(self) -> None:
        await self.use_redis(prefix="gm[1]*:")
        await self.lock(self.GUESSER)
        await self.lock(self.OTHER)
        status, out, err = self.gomail("user", "unlock", "alice")
        self.assertEqual((status, out, err), (0, "unlocked alice: removed 5 lock and failure marks\n", ""))
        self.assertEqual(await self.login("s3cret", self.GUESSER), "password")
        self.assertEqual(await self.login("s3cret", self.OTHER), "cache")

    def test_every_ip(self) -> Deferred:
        """
        Without --ip every lock of alice goes (found by SCAN, a key prefix
        with glob characters taken literally), and the slowdown count too.
        """
        return Deferred.fromCoroutine(self._every_ip())

    async def _ip_lock_kept(self) -> None:
        await self.use_redis()
        for n in range(20):
            try:
                await self.auth.check(LoginAttempt(f"user{n}", "wrong", self.GUESSER, "imap"))
            except AuthFailure:
                pass
        status, out, _ = self.gomail("user", "unlock", "alice", "--ip", self.GUESSER)
        self.assertEqual(status, 0)
        self.assertIn(f"note: the client IP {self.GUESSER} itself is locked for every user", out)
        self.assertEqual(await self.login("s3cret", self.GUESSER), "locked")

    def test_ip_lock_kept(self) -> Deferred:
        """The client IP's own lock (maxFailAttemptsPerIP) is not lifted, only reported with its time left."""
        return Deferred.fromCoroutine(self._ip_lock_kept())

    def test_bad_input(self) -> None:
        """A bad IP or user name is one error line and status 1, before any store is used."""
        self.assertOneErrorLine(self.gomail("user", "unlock", "alice", "--ip", "nope"), "not an IP address")
        self.assertOneErrorLine(self.gomail("user", "unlock", "", "--ip", "192.0.2.1"), "")

    def test_redis_unreachable(self) -> None:
        """A configured Redis that does not answer: one error line naming it, status 1."""
        self.append_config(f"[redis]\nhost = \"127.0.0.1\"\nport = {free_port()}\ntimeout = 1.0\n")
        self.assertOneErrorLine(self.gomail("user", "unlock", "alice"), "cannot use Redis: cannot connect")

    async def _wrong_password(self) -> None:
        server = await start_redis(self, reactor, "right horse")
        self.append_config(f"[redis]\nurl = \"redis://:wrong@127.0.0.1:{server.port}/0\"\n")
        status, out, err = self.gomail("user", "unlock", "alice")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("cannot use Redis: Redis: WRONGPASS", err)
        self.assertNotIn("wrong@", err)

    def test_redis_wrong_password(self) -> None:
        """Redis refusing the password: its error (never the password), status 1."""
        return Deferred.fromCoroutine(self._wrong_password())
