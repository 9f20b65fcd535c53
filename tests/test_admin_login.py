"""Admin login, sessions, lockout, CSRF and the app's security headers (gomail.admin.app, login, sessions)."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from gomail.admin import store
from gomail.auth import passwords
from gomail.configschema import AdminSettings
from tests.admintesting import ROUNDS, AdminHarness


class LoginTests(TestCase):
    """POST /api/login and what a session can do."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)

    def login(self, name: str = "root", password: str = "correct horse", **extra: str) -> object:
        return self.h.call("POST", "/api/login", body={"username": name, "password": password, **extra})

    def test_bearer_login(self) -> None:
        """A right password gives a bearer token and a refresh token; the token opens /api/session."""
        self.h.add_admin("root")
        answer = self.login()
        self.assertEqual(answer.code, 200, answer.body)
        body = self.h.json(answer)
        self.assertEqual(body["admin"], {"name": "root", "role": "superadmin", "totp_enabled": False})
        self.assertEqual(body["expires_at"], self.h.clock.seconds() + 86400)
        me = self.h.call("GET", "/api/session", token=body["token"])
        self.assertEqual(me.code, 200, me.body)
        self.assertEqual(self.h.json(me)["admin"]["name"], "root")
        self.assertNotIn("csrf_token", self.h.json(me))

    def test_curl_form_encoded_json(self) -> None:
        """curl -d sends JSON labelled as a form: it is still read as JSON."""
        self.h.add_admin("root")
        answer = self.h.call("POST", "/api/login", raw=b'{"username":"root","password":"correct horse"}',
                             headers={"Content-Type": ["application/x-www-form-urlencoded"]})
        self.assertEqual(answer.code, 200, answer.body)

    def test_every_failure_is_the_same(self) -> None:
        """Unknown admin, wrong password, disabled admin, missing TOTP code: the same 401 "login failed"."""
        self.h.add_admin("root")
        self.h.add_admin("off", "admin")
        self.h.db.run(store.set_enabled, "off", False, 0.0)
        self.h.add_admin("otp", "admin", totp=True)
        answers = [self.login("nobody"), self.login("root", "wrong"), self.login("off"), self.login("otp")]
        self.assertEqual({(a.code, a.body) for a in answers}, {(401, b'{"error": "login failed"}\n')})

    def test_totp_once(self) -> None:
        """With TOTP the right code logs in, once: the same code again is refused."""
        secret = self.h.add_admin("root", totp=True)
        assert secret is not None
        code = self.h.code(secret)
        self.assertEqual(self.login(totp_code=code).code, 200)
        self.assertEqual(self.login(totp_code=code).code, 401)
        self.assertEqual(self.login(totp_code="000000" if code != "000000" else "111111").code, 401)

    def test_lockout_per_admin(self) -> None:
        """LOCK_ERRORS (5) failures from any clients lock the admin name for LOCK_TIME (30 min), right password or not."""
        h = AdminHarness(self, AdminSettings(allowFrom=("0.0.0.0/0",), loginRateLimit=1000))
        h.add_admin("root")
        for i in range(5):
            h.browser.root.host = f"192.0.2.{i + 1}"  # a different client each time: the name's count
            self.assertEqual(h.call("POST", "/api/login", body={"username": "root", "password": "bad"}).code, 401)
        h.browser.root.host = "198.51.100.1"
        good = {"username": "root", "password": "correct horse"}
        self.assertEqual(h.call("POST", "/api/login", body=good).code, 401)
        h.clock.advance(30 * 60 + 1)
        self.assertEqual(h.call("POST", "/api/login", body=good).code, 200)

    def test_lockout_per_ip(self) -> None:
        """Failures for different names from one IP lock that IP; a success clears the count."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        h.add_admin("root")
        good = {"username": "root", "password": "correct horse"}
        for i in range(4):
            self.assertEqual(h.call("POST", "/api/login", body={"username": f"nobody{i}", "password": "x"}).code, 401)
        self.assertEqual(h.call("POST", "/api/login", body=good).code, 200)  # clears the counts
        for i in range(5):
            self.assertEqual(h.call("POST", "/api/login", body={"username": f"nobody{i}", "password": "x"}).code, 401)
        self.assertEqual(h.call("POST", "/api/login", body=good).code, 401)

    def test_lock_policy_from_system_config(self) -> None:
        """LOCKED = false (system configuration) stops locking."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        h.add_admin("root")
        self.successResultOf(h.sysconfig.change({"LOCKED": False}, "test"))
        for _ in range(10):
            h.call("POST", "/api/login", body={"username": "root", "password": "bad"})
        self.assertEqual(h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"}).code,
                         200)

    def test_rate_limit(self) -> None:
        """More than admin.loginRateLimit tries a minute from one IP: 429 with Retry-After."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=3))
        h.add_admin("root")
        for _ in range(3):
            h.call("POST", "/api/login", body={"username": "root", "password": "bad"})
        answer = h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"})
        self.assertEqual(answer.code, 429)
        self.assertEqual(answer.header("Retry-After"), "60")
        h.clock.advance(60)
        self.assertEqual(h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"}).code,
                         200)

    def test_validation_names_the_field(self) -> None:
        """A missing or mistyped field: 422 naming it; a body that is not JSON: 400."""
        answer = self.h.call("POST", "/api/login", body={"username": "root"})
        self.assertEqual((answer.code, self.h.json(answer)), (422, {"error": "field 'password': is required"}))
        answer = self.h.call("POST", "/api/login", body={"username": 3, "password": "x"})
        self.assertEqual(answer.code, 422)
        self.assertIn("'username'", self.h.json(answer)["error"])
        self.assertEqual(self.h.call("POST", "/api/login", raw=b"{nope").code, 400)

    def test_token_expiry(self) -> None:
        """A session ends after admin.sessionTTL; its refresh token gives a new one (once)."""
        self.h.add_admin("root")
        body = self.h.json(self.login())
        self.h.clock.advance(86400)
        self.assertEqual(self.h.call("GET", "/api/session", token=body["token"]).code, 401)
        fresh = self.h.call("POST", "/api/refresh", body={"refresh_token": body["refresh_token"]})
        self.assertEqual(fresh.code, 200, fresh.body)
        self.assertEqual(self.h.call("GET", "/api/session", token=self.h.json(fresh)["token"]).code, 200)
        again = self.h.call("POST", "/api/refresh", body={"refresh_token": body["refresh_token"]})
        self.assertEqual(again.code, 401)  # rotated: the old refresh token is spent

    def test_password_change_revokes(self) -> None:
        """A password change (here by the command line's function) ends the admin's sessions at once."""
        token = self.h.token("root")
        self.h.db.run(store.set_password, "root", passwords.hash_password("another one", ROUNDS), 1.0)
        self.assertEqual(self.h.call("GET", "/api/session", token=token).code, 401)

    def test_logout(self) -> None:
        """Logout ends the session."""
        token = self.h.token("root")
        self.assertEqual(self.h.call("POST", "/api/logout", token=token).code, 200)
        self.assertEqual(self.h.call("GET", "/api/session", token=token).code, 401)

    def test_no_session(self) -> None:
        """Without a session: 401 with WWW-Authenticate; a made-up token too."""
        answer = self.h.call("GET", "/api/session")
        self.assertEqual(answer.code, 401)
        self.assertIn("Bearer", answer.header("WWW-Authenticate") or "")
        self.assertEqual(self.h.call("GET", "/api/session", token="made-up").code, 401)


class CookieSessionTests(TestCase):
    """The browser's session: HttpOnly, Secure, SameSite=Strict cookies and the CSRF token."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        self.h.add_admin("root")
        answer = self.h.call("POST", "/api/login", body={"username": "root", "password": "correct horse",
                                                         "session": "cookie"})
        self.assertEqual(answer.code, 200, answer.body)
        self.answer = answer
        self.body = self.h.json(answer)
        cookies = answer.headers.getRawHeaders("Set-Cookie")
        self.cookies = cookies
        self.session = next(c for c in cookies if c.startswith("gomail_session=")).split(";")[0]

    def test_cookie_attributes(self) -> None:
        """Both cookies are HttpOnly, Secure and SameSite=Strict; the tokens are not in the body."""
        for cookie in self.cookies:
            self.assertIn("HttpOnly", cookie)
            self.assertIn("Secure", cookie)
            self.assertIn("SameSite=strict", cookie)
        self.assertNotIn("token", self.body)
        self.assertIn("csrf_token", self.body)

    def test_csrf_required(self) -> None:
        """A state-changing request with the cookie but without the CSRF token is refused; with it, served."""
        headers = {"Cookie": [self.session]}
        answer = self.h.call("POST", "/api/logout", headers=headers)
        self.assertEqual(answer.code, 403)
        self.assertIn("CSRF", self.h.json(answer)["error"])
        answer = self.h.call("POST", "/api/logout", headers={**headers, "X-CSRF-Token": ["wrong"]})
        self.assertEqual(answer.code, 403)
        me = self.h.call("GET", "/api/session", headers=headers)
        self.assertEqual(self.h.json(me)["csrf_token"], self.body["csrf_token"])
        answer = self.h.call("POST", "/api/logout", headers={**headers, "X-CSRF-Token": [self.body["csrf_token"]]})
        self.assertEqual(answer.code, 200)

    def test_cookie_token_is_not_a_bearer_token(self) -> None:
        """The cookie's token sent as a bearer token is refused: that would skip the CSRF check."""
        token = self.session.partition("=")[2]
        self.assertEqual(self.h.call("GET", "/api/session", token=token).code, 401)

    def test_cross_site_refused(self) -> None:
        """A state-changing request from another site's page is refused before anything runs."""
        answer = self.h.call("POST", "/api/login", body={"username": "root", "password": "correct horse"},
                             headers={"Origin": ["https://evil.example"]})
        self.assertEqual(answer.code, 403)


class HeaderTests(TestCase):
    """What every answer carries."""

    def test_security_headers(self) -> None:
        """CSP without inline scripts, X-Frame-Options DENY, nosniff, Referrer-Policy, on API and page alike."""
        h = AdminHarness(self)
        for path in ("/api/session", "/api/nothing", "/static/missing.js"):
            answer = h.call("GET", path)
            csp = answer.header("Content-Security-Policy") or ""
            self.assertIn("script-src 'self'", csp)
            self.assertNotIn("unsafe-inline", csp)
            self.assertEqual(answer.header("X-Frame-Options"), "DENY")
            self.assertEqual(answer.header("X-Content-Type-Options"), "nosniff")
            self.assertEqual(answer.header("Referrer-Policy"), "no-referrer")

    def test_cors_off_by_default(self) -> None:
        """No Access-Control-Allow-Origin unless admin.corsOrigins lists the origin."""
        h = AdminHarness(self)
        answer = h.call("GET", "/api/openapi.json", headers={"Origin": ["https://tools.example"]})
        self.assertIsNone(answer.header("Access-Control-Allow-Origin"))
        h = AdminHarness(self, AdminSettings(corsOrigins=("https://tools.example",)))
        answer = h.call("OPTIONS", "/api/users", headers={"Origin": ["https://tools.example"]})
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.header("Access-Control-Allow-Origin"), "https://tools.example")

    def test_peer_allowlist(self) -> None:
        """A client outside admin.allowFrom (loopback by default) is refused 403."""
        h = AdminHarness(self, peer="192.0.2.9")
        self.assertEqual(h.call("GET", "/api/openapi.json").code, 403)

    def test_openapi(self) -> None:
        """The OpenAPI 3.1 document lists the routes with their roles."""
        h = AdminHarness(self)
        doc = h.json(h.call("GET", "/api/openapi.json"))
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertIsNone(doc["paths"]["/api/login"]["post"]["x-gomail-role"])
        self.assertEqual(doc["paths"]["/api/session"]["get"]["x-gomail-role"], "auditor")
