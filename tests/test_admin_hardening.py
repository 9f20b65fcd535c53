"""The admin app against what a review and an attack found: each test names the hole it keeps closed."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from gomail.admin.login import LockPolicy
from gomail.configschema import AdminSettings
from tests.admintesting import AdminHarness


class HeldCPU:
    """A CPU pool whose jobs wait until released: logins sent together all wait for bcrypt."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, Any, tuple]] = []

    def run(self, fn: Any, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, fn, args))
        return d

    def release(self) -> None:
        while self.jobs:
            d, fn, args = self.jobs.pop(0)
            d.callback(fn(*args))


class ParallelLockoutTests(TestCase):
    """LOCK_ERRORS bounds the guesses even when they are sent at once."""

    def test_parallel_guesses(self) -> None:
        """Nine logins in flight at once (eight wrong, the ninth right): only the first five are judged."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        h.add_admin("root")
        cpu = HeldCPU()
        h.login.cpu = cpu.run
        attempts = [Deferred.fromCoroutine(h.login.login("root", "wrong", None, "192.0.2.1")) for _ in range(8)]
        attempts.append(Deferred.fromCoroutine(h.login.login("root", "correct horse", None, "192.0.2.1")))
        cpu.release()
        results: list[str] = []
        for d in attempts:
            d.addCallbacks(lambda _: results.append("ok"), lambda f: results.append(type(f.value).__name__))
        self.assertEqual(results, ["LoginFailed"] * 9)

    def test_sequential_right_password_after_lock(self) -> None:
        """After LOCK_ERRORS failures the right password is refused until LOCK_TIME passes."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        h.add_admin("root")
        self.assertEqual(h.sysconfig.lock_policy(), LockPolicy(True, 5, 30))
        for _ in range(5):
            self.failureResultOf(h.login.login("root", "wrong", None, "192.0.2.1"))
        self.failureResultOf(h.login.login("root", "correct horse", None, "192.0.2.1"))
        h.clock.advance(30 * 60)
        self.successResultOf(h.login.login("root", "correct horse", None, "192.0.2.1"))


class BodyTests(TestCase):
    """Bodies JSON allows but no field should hold: 400, never 500."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        self.token = self.h.token("root")

    def test_nested_too_deep(self) -> None:
        """20,000 nested arrays: 400 (was 500 from a RecursionError), on the unauthenticated login too."""
        body = b'{"username": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        self.assertEqual(self.h.call("POST", "/api/login", raw=body).code, 400)

    def test_nan(self) -> None:
        """NaN passes every JSON Schema bound and SQLite stores it as NULL (a timed ban made permanent): 400."""
        answer = self.h.call("POST", "/api/blacklist", token=self.token,
                             raw=b'{"network": "10.0.0.1", "expires_in": NaN}')
        self.assertEqual(answer.code, 400, answer.body)

    def test_lone_surrogate(self) -> None:
        """A lone surrogate escape is no text: 400 on the login and on any route (was 500)."""
        for path, token, raw in (("/api/login", None, b'{"username": "\\ud800", "password": "x"}'),
                                 ("/api/blacklist", self.token, b'{"network": "10.0.0.1", "reason": "\\ud800"}')):
            self.assertEqual(self.h.call("POST", path, token=token, raw=raw).code, 400, path)


class RuleTests(TestCase):
    """Rules between admins."""

    def setUp(self) -> None:
        self.h = AdminHarness(self, AdminSettings(allowFrom=("0.0.0.0/0",), loginRateLimit=1000))
        self.root = self.h.token("root")

    def test_superadmin_changes_own_credentials_through_profile(self) -> None:
        """A superadmin's own password and TOTP go through /api/profile (current password asked), not /api/admins."""
        answer = self.h.call("PUT", "/api/admins/root/password", token=self.root, body={"password": "a new one!"})
        self.assertEqual(answer.code, 403, answer.body)
        self.assertEqual(self.h.call("DELETE", "/api/admins/root/totp", token=self.root).code, 403)

    def test_admin_cannot_weaken_admin_lockout(self) -> None:
        """LOCKED, LOCK_ERRORS and LOCK_TIME guard superadmins too: an admin may not change them."""
        admin = self.h.token("ada", "admin")
        answer = self.h.call("PUT", "/api/config", token=admin, body={"LOCKED": False})
        self.assertEqual(answer.code, 403, answer.body)
        self.assertTrue(self.h.sysconfig.get("LOCKED"))
        self.assertEqual(self.h.call("PUT", "/api/config", token=self.root, body={"LOCKED": False}).code, 200)

    def test_failed_login_actor(self) -> None:
        """A failed login is logged with the actor "-": nobody can make entries appear under root's name."""
        self.h.call("POST", "/api/login", body={"username": "root", "password": "wrong"})
        rows = self.h.db.run(lambda c: c.execute("SELECT actor, action, target FROM op_log "
                                                 "WHERE action = 'login.failed'").fetchall())
        self.assertEqual(rows, [("-", "login.failed", "root")])

    def test_unlock_route(self) -> None:
        """A superadmin lifts another admin name's lock (and it is logged)."""
        self.h.add_admin("ada", "admin")
        for i in range(5):
            self.h.browser.root.host = f"192.0.2.{i + 1}"  # many clients: the name's lock
            self.h.call("POST", "/api/login", body={"username": "ada", "password": "wrong"})
        self.h.browser.root.host = "198.51.100.7"
        good = {"username": "ada", "password": "correct horse"}
        self.assertEqual(self.h.call("POST", "/api/login", body=good).code, 401)
        self.assertEqual(self.h.call("POST", "/api/admins/ada/unlock", token=self.root).code, 200)
        self.assertEqual(self.h.call("POST", "/api/login", body=good).code, 200)
        actions = self.h.db.run(lambda c: c.execute("SELECT action FROM op_log WHERE action = 'admin.unlock'")
                                .fetchall())
        self.assertEqual(actions, [("admin.unlock",)])

    def test_refresh_does_not_outlive_the_login(self) -> None:
        """A session refreshed just before the refresh horizon ends at that horizon, not 24 h later."""
        body = self.h.json(self.h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"}))
        self.h.clock.advance(7 * 86400 - 100)
        fresh = self.h.json(self.h.call("POST", "/api/refresh", body={"refresh_token": body["refresh_token"]}))
        self.h.clock.advance(200)
        self.assertEqual(self.h.call("GET", "/api/session", token=fresh["token"]).code, 401)


class HeaderTests(TestCase):
    """The security headers on every answer."""

    def test_guard_refusals_carry_headers(self) -> None:
        """A 421 for a wrong Host carries the CSP and X-Frame-Options too."""
        h = AdminHarness(self)
        answer = h.call("GET", "/api/session", headers={"Host": ["evil.example"]})
        self.assertEqual(answer.code, 421)
        self.assertEqual(answer.header("X-Frame-Options"), "DENY")
        self.assertIn("default-src 'none'", answer.header("Content-Security-Policy") or "")

    def test_static_from_memory(self) -> None:
        """The UI's files are served from memory; other names (traversal included) are JSON 404s."""
        h = AdminHarness(self)
        index = h.call("GET", "/")
        self.assertEqual(index.code, 200)
        self.assertIn(b"<html", index.body.lower())
        self.assertEqual(h.call("GET", "/static/app.js").header("Content-Type"), "text/javascript; charset=utf-8")
        for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js", "/static/"):
            self.assertIn(h.call("GET", path).code, (404,), path)


class AttackTests(TestCase):
    """What a live attack on the admin listener found."""

    def setUp(self) -> None:
        self.h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        self.root = self.h.token("root")

    def test_unicode_digits_code(self) -> None:
        """
        A TOTP code of non-ASCII digits ("٠١٢٣٤٥", "０１２３４５") is a plain 401 whatever
        the password (it was a 500 for the right password only: a password oracle).
        """
        self.h.add_admin("aud", "auditor", password="aud password 1", totp=True)
        for password in ("aud password 1", "wrong"):
            for code in ("٠١٢٣٤٥", "０１２３４５"):
                answer = self.h.call("POST", "/api/login", body={"username": "aud", "password": password,
                                                                 "totp_code": code})
                self.assertEqual((answer.code, self.h.json(answer)), (401, {"error": "login failed"}))

    def test_redirects_are_404(self) -> None:
        """Paths werkzeug would redirect ("/api//session", "/static") are JSON 404s, not 500s."""
        for path in ("/api//session", "/static", "/api/users//alice", "/static//etc/passwd"):
            answer = self.h.call("GET", path, token=self.root)
            self.assertEqual(answer.code, 404, path)
            self.assertEqual(self.h.json(answer), {"error": "not found"})

    def test_non_ascii_digits_in_query(self) -> None:
        """page=² (a digit to str.isdigit, not to int) is a 400, not a 500."""
        for value in ("%C2%B2", "%D9%A1", "%EF%BC%91"):
            self.assertEqual(self.h.call("GET", f"/api/users?page={value}", token=self.root).code, 400, value)

    def test_duplicate_fields(self) -> None:
        """A field given twice is refused rather than guessed."""
        raw = b'{"name": "dup1@example.com", "name": "dup2@example.com", "password": "a password"}'
        self.assertEqual(self.h.call("POST", "/api/users", token=self.root, raw=raw).code, 400)

    def test_secrets_not_echoed(self) -> None:
        """A too-long password is refused without repeating it in the answer."""
        answer = self.h.call("POST", "/api/login", body={"username": "root", "password": "s3cret" * 200})
        self.assertEqual(answer.code, 422)
        self.assertNotIn(b"s3cret", answer.body)
        self.assertIn(b"'password'", answer.body)

    def test_admin_password_length(self) -> None:
        """An admin's password has at least 10 characters."""
        answer = self.h.call("POST", "/api/admins", token=self.root, body={"name": "weak", "password": "a",
                                                                           "role": "admin"})
        self.assertEqual(answer.code, 422)


class ConnectionCapTests(TestCase):
    """gomail.web.http.ConnectionCap: connections in all and per address."""

    def test_caps(self) -> None:
        """Past the per-address cap, and past the total, new connections get no protocol (closed)."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.protocol import Factory, Protocol

        from gomail.web.http import ConnectionCap

        cap = ConnectionCap(Factory.forProtocol(Protocol), total=3, per_ip=2)
        a = [cap.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1000 + i)) for i in range(3)]
        self.assertEqual([p is not None for p in a], [True, True, False])
        b = cap.buildProtocol(IPv4Address("TCP", "192.0.2.2", 1))
        self.assertIsNotNone(b)
        cap.registerProtocol(b)
        for p in a[:2]:
            cap.registerProtocol(p)
        self.assertIsNone(cap.buildProtocol(IPv4Address("TCP", "192.0.2.3", 1)))  # total reached
        cap.unregisterProtocol(a[0])
        self.assertIsNotNone(cap.buildProtocol(IPv4Address("TCP", "192.0.2.1", 2000)))


class RehashTests(TestCase):
    """Admin hashes follow auth.bcryptRounds, so a known name costs what an unknown one does."""

    def test_rehash_on_login(self) -> None:
        """A hash made at another cost is remade at the configured one by the next login; sessions go on."""
        from gomail.admin import store
        from gomail.auth import passwords

        h = AdminHarness(self)
        h.db.run(store.add_admin, "root", passwords.hash_password("correct horse", 5), "superadmin", 0.0)
        token = h.json(h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"}))["token"]
        hashed = h.db.run(store.password_hash, "root")
        self.assertEqual(passwords.bcrypt_cost(hashed), h.login.rounds)
        self.assertEqual(h.call("GET", "/api/session", token=token).code, 200)
        self.assertEqual(h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"}).code,
                         200)
