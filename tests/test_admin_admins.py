"""
The admin accounts routes and each admin's own profile (gomail.admin.api_admins),
and the operation log of command-line changes (gomail.cli.changes).
"""

from __future__ import annotations

import json
from typing import Any

import pyotp
from twisted.trial.unittest import TestCase

from gomail.admin import oplog, store
from gomail.admin.api_admins import refusal
from gomail.auth import userdb
from gomail.auth.passwords import verify_password
from gomail.configschema import AdminSettings
from tests.admintesting import AdminHarness
from tests.test_cli_user import PASSWORD, UserCommandTestCase

FIELDS = {"name", "role", "enabled", "totp_enabled", "created", "updated"}


def op_log(cursor: Any) -> list[tuple]:
    """Every operation-log row: actor, action, target, before, after, client IP."""
    return cursor.execute("SELECT actor, action, target, before, after, client_ip FROM op_log ORDER BY id").fetchall()


class AdminApiTestCase(TestCase):
    """An admin app with the superadmin C{root} logged in."""

    def setUp(self) -> None:
        self.h = AdminHarness(self, AdminSettings(loginRateLimit=1000))
        self.root = self.h.token("root")

    def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        answer = self.h.call(method, path, token=self.root if token is None else token, body=body)
        return answer.code, self.h.json(answer)

    def login(self, name: str, password: str = "correct horse", code: str | None = None) -> int:
        body = {"username": name, "password": password, **({"totp_code": code} if code else {})}
        return self.h.call("POST", "/api/login", body=body).code

    def actions(self) -> list[tuple[str, str, str, str]]:
        """The logged changes (login entries left out): actor, action, target, client IP."""
        return [(r[0], r[1], r[2], r[5]) for r in self.h.db.run(op_log) if not r[1].startswith("login")]


class AdminsTests(AdminApiTestCase):
    """/api/admins: superadmins manage admins, within the store's rules."""

    def test_list_and_show(self) -> None:
        """The list and one admin carry exactly the documented fields; an unknown or impossible name is 404."""
        self.h.add_admin("ada", "admin")
        code, body = self.call("GET", "/api/admins")
        self.assertEqual(code, 200)
        self.assertEqual([a["name"] for a in body["items"]], ["ada", "root"])
        self.assertEqual(set(body["items"][0]), FIELDS)
        code, ada = self.call("GET", "/api/admins/ADA")
        self.assertEqual((code, ada["role"], ada["enabled"], ada["totp_enabled"]), (200, "admin", True, False))
        self.assertEqual(self.call("GET", "/api/admins/nobody"), (404, {"error": "no admin nobody"}))
        self.assertEqual(self.call("GET", "/api/admins/a%09b")[0], 404)

    def test_create(self) -> None:
        """POST makes an admin who can log in (201); the log says who and from where, without the password."""
        code, body = self.call("POST", "/api/admins", body={"name": "Ada", "password": "pass word 10", "role": "auditor"})
        self.assertEqual((code, body["name"], body["role"], set(body)), (201, "ada", "auditor", FIELDS))
        self.assertEqual(self.login("ada", "pass word 10"), 200)
        self.assertEqual(self.actions(), [("root", "admin.create", "ada", "127.0.0.1")])
        self.assertNotIn("pass word 10", json.dumps(self.h.db.run(op_log)))

    def test_create_refusals(self) -> None:
        """A taken name is 409; a bad name, role or password is 422 naming the field; nothing is logged."""
        self.h.add_admin("ada", "admin")
        self.assertEqual(self.call("POST", "/api/admins", body={"name": "ADA", "password": "long enough 1",
                                                                "role": "admin"}),
                         (409, {"error": "admin ada already exists"}))
        for body, field in (({"name": "a b", "password": "x", "role": "admin"}, "'name'"),
                            ({"name": "bob", "password": "x", "role": "king"}, "'role'"),
                            ({"name": "bob", "password": "x" * 100, "role": "admin"}, "'password'"),
                            ({"name": "bob", "role": "admin"}, "'password'")):
            code, answer = self.call("POST", "/api/admins", body=body)
            self.assertEqual(code, 422, body)
            self.assertIn(field, answer["error"])
        self.assertEqual(self.actions(), [])

    def test_below_superadmin_is_403(self) -> None:
        """Admins and auditors get 403 on every admins route; an admin cannot raise their own role."""
        for role in ("admin", "auditor"):
            token = self.h.token(f"an-{role}", role)
            for method, path, body in (("GET", "/api/admins", None),
                                       ("POST", "/api/admins", {"name": "x", "password": "y", "role": "auditor"}),
                                       ("PATCH", f"/api/admins/an-{role}", {"role": "superadmin"}),
                                       ("PUT", "/api/admins/root/password", {"password": "z"}),
                                       ("DELETE", "/api/admins/root", None)):
                self.assertEqual(self.call(method, path, token, body)[0], 403, (role, method, path))
        self.assertEqual(self.h.db.run(store.get_admin, "an-admin").role, "admin")
        self.assertEqual(self.h.call("GET", "/api/admins").code, 401)

    def test_change_role_and_enabled(self) -> None:
        """PATCH changes the role and enabled state, ends the admin's sessions and logs each change."""
        ada = self.h.token("ada", "admin")
        code, body = self.call("PATCH", "/api/admins/ada", body={"role": "auditor", "enabled": False})
        self.assertEqual((code, body["role"], body["enabled"]), (200, "auditor", False))
        self.assertEqual(self.h.call("GET", "/api/profile", token=ada).code, 401)
        self.assertEqual(self.login("ada"), 401)
        self.assertEqual(self.call("PATCH", "/api/admins/ada", body={"enabled": True})[1]["enabled"], True)
        self.assertEqual(self.call("PATCH", "/api/admins/ada", body={"enabled": True})[0], 200)  # no change
        self.assertEqual([a[1] for a in self.actions()], ["admin.role", "admin.disable", "admin.enable"])
        before, after = self.h.db.run(op_log)[-1][3:5]
        self.assertEqual((json.loads(before)["enabled"], json.loads(after)["enabled"]), (False, True))
        self.assertEqual(self.call("PATCH", "/api/admins/ada", body={"role": "king"})[0], 422)
        self.assertEqual(self.call("PATCH", "/api/admins/nobody", body={"enabled": False})[0], 404)

    def test_last_superadmin_stays(self) -> None:
        """The last enabled superadmin cannot be demoted, disabled or deleted (409); with a second one it can."""
        for method, body in (("PATCH", {"role": "admin"}), ("PATCH", {"enabled": False}), ("DELETE", None)):
            code, answer = self.call(method, "/api/admins/root", body=body)
            self.assertEqual(code, 409, method)
            self.assertIn("last enabled superadmin", answer["error"])
        self.assertEqual(self.actions(), [])
        self.h.add_admin("root2")
        self.assertEqual(self.call("PATCH", "/api/admins/root", body={"role": "admin"})[0], 200)
        self.assertEqual(self.h.call("GET", "/api/profile", token=self.root).code, 401)  # its role changed

    def test_delete(self) -> None:
        """DELETE removes the admin (its sessions with it) and logs the admin it was."""
        ada = self.h.token("ada", "admin")
        self.assertEqual(self.call("DELETE", "/api/admins/ADA"), (200, {"deleted": "ada"}))
        self.assertIsNone(self.h.db.run(store.get_admin, "ada"))
        self.assertEqual(self.h.call("GET", "/api/profile", token=ada).code, 401)
        self.assertEqual(self.call("DELETE", "/api/admins/ada")[0], 404)
        [row] = [r for r in self.h.db.run(op_log) if r[1] == "admin.delete"]
        self.assertEqual((json.loads(row[3])["role"], row[4]), ("admin", None))

    def test_set_password(self) -> None:
        """PUT .../password sets it (bcrypt), ends the admin's sessions; the new one logs in."""
        ada = self.h.token("ada", "auditor")
        self.assertEqual(self.call("PUT", "/api/admins/ada/password", body={"password": "new one 1234"}),
                         (200, {"ok": True}))
        self.assertEqual(self.h.call("GET", "/api/profile", token=ada).code, 401)
        self.assertEqual((self.login("ada"), self.login("ada", "new one 1234")), (401, 200))
        self.assertEqual(self.call("PUT", "/api/admins/nobody/password", body={"password": "long enough 1"})[0], 404)
        self.assertIn("'password'", self.call("PUT", "/api/admins/ada/password", body={"password": ""})[1]["error"])
        self.assertEqual(self.actions(), [("root", "admin.password", "ada", "127.0.0.1")])

    def test_remove_totp(self) -> None:
        """DELETE .../totp stops requiring codes of an admin and ends their sessions; nothing to remove logs nothing."""
        secret = self.h.add_admin("ada", "admin", totp=True)
        assert secret is not None
        ada = self.h.json(self.h.call("POST", "/api/login", body={"username": "ada", "password": "correct horse",
                                                                  "totp_code": self.h.code(secret)}))["token"]
        code, body = self.call("DELETE", "/api/admins/ada/totp")
        self.assertEqual((code, body["totp_enabled"]), (200, False))
        self.assertEqual(self.h.call("GET", "/api/profile", token=ada).code, 401)
        self.assertEqual(self.login("ada"), 200)
        self.assertEqual(self.call("DELETE", "/api/admins/ada/totp")[0], 200)
        self.assertEqual(self.actions(), [("root", "admin.totp.remove", "ada", "127.0.0.1")])
        self.assertEqual(self.call("DELETE", "/api/admins/nobody/totp")[0], 404)

    def test_refusal_statuses(self) -> None:
        """The store's refusals map to 404, 409, 403 (acting above one's role) and 422."""
        self.assertEqual([refusal(e).status for e in (store.NoSuchAdmin("x"), store.AdminExists("x"),
                                                      store.LastSuperadmin("x"), store.RankViolation("x"),
                                                      store.AdminError("x"))], [404, 409, 409, 403, 422])


class ProfileTests(AdminApiTestCase):
    """/api/profile: any admin's own account."""

    def setUp(self) -> None:
        super().setUp()
        self.me = self.h.token("aud", "auditor")

    def test_show(self) -> None:
        """GET /api/profile is the acting admin, for any role; without a session 401."""
        code, body = self.call("GET", "/api/profile", self.me)
        self.assertEqual((code, body["name"], body["role"], set(body)), (200, "aud", "auditor", FIELDS))
        self.assertEqual(self.h.call("GET", "/api/profile").code, 401)

    def test_change_password(self) -> None:
        """A wrong current password is 403; the change ends the session, the new password logs in."""
        wrong = self.call("PUT", "/api/profile/password", self.me,
                          {"current_password": "nope", "new_password": "new horse 1"})
        self.assertEqual(wrong, (403, {"error": "current password is wrong"}))
        bad = self.call("PUT", "/api/profile/password", self.me, {"current_password": "correct horse",
                                                                  "new_password": "a\0b"})
        self.assertEqual(bad[0], 422)
        self.assertIn("'new_password'", bad[1]["error"])
        ok = self.call("PUT", "/api/profile/password", self.me, {"current_password": "correct horse",
                                                                 "new_password": "new horse 1"})
        self.assertEqual(ok, (200, {"ok": True}))
        self.assertEqual(self.h.call("GET", "/api/profile", token=self.me).code, 401)
        self.assertEqual((self.login("aud"), self.login("aud", "new horse 1")), (401, 200))
        self.assertEqual(self.actions(), [("aud", "profile.password", "aud", "127.0.0.1")])
        self.assertTrue(verify_password("new horse 1", self.h.db.run(store.password_hash, "aud")))

    def test_current_password_tries_are_limited(self) -> None:
        """Each current-password check counts against the login rate limit: then 429 with Retry-After."""
        h = AdminHarness(self, AdminSettings(loginRateLimit=3))
        token = h.token("ada", "admin")  # one login: one of the three
        bodies = [{"current_password": "nope"}] * 3
        codes = [h.call("DELETE", "/api/profile/totp", token=token, body=b).code for b in bodies]
        self.assertEqual(codes, [403, 403, 429])

    def test_totp_enrolment(self) -> None:
        """Enrol (password needed), pending until confirmed; confirming ends the session; logins then need codes."""
        self.assertEqual(self.call("POST", "/api/profile/totp", self.me, {"current_password": "x"})[0], 403)
        self.assertEqual(self.call("POST", "/api/profile/totp/confirm", self.me, {"code": "123456"})[0], 409)
        code, enrolment = self.call("POST", "/api/profile/totp", self.me, {"current_password": "correct horse"})
        self.assertEqual(code, 200)
        self.assertTrue(enrolment["qr_svg"].lstrip().startswith("<?xml") or "<svg" in enrolment["qr_svg"])
        secret = enrolment["secret"]
        self.assertEqual(pyotp.parse_uri(enrolment["uri"]).secret, secret)
        # Pending: the session goes on, and logins need no code yet.
        self.assertEqual(self.call("GET", "/api/profile", self.me)[1]["totp_enabled"], False)
        self.assertEqual(self.login("aud"), 200)
        wrong = "000000" if self.h.code(secret) != "000000" else "111111"
        self.assertEqual(self.call("POST", "/api/profile/totp/confirm", self.me, {"code": wrong}),
                         (422, {"error": "field 'code': wrong code"}))
        self.assertEqual(self.call("POST", "/api/profile/totp/confirm", self.me, {"code": "abc"})[0], 422)
        used = self.h.code(secret)
        code, admin = self.call("POST", "/api/profile/totp/confirm", self.me, {"code": used})
        self.assertEqual((code, admin["totp_enabled"]), (200, True))
        self.assertEqual(self.h.call("GET", "/api/profile", token=self.me).code, 401)
        # The confirming code is spent; a login needs a fresh one.
        self.assertEqual((self.login("aud"), self.login("aud", code=used)), (401, 401))
        self.h.clock.advance(30)
        self.assertEqual(self.login("aud", code=self.h.code(secret)), 200)
        self.assertEqual([a[1] for a in self.actions()], ["profile.totp.enrol", "profile.totp.confirm"])
        self.assertNotIn(secret, json.dumps(self.h.db.run(op_log)))

    def test_totp_enrol_when_enabled(self) -> None:
        """Enrolling again while TOTP is on is 409 (it would replace the working secret)."""
        h = self.h
        secret = h.add_admin("ada", "admin", totp=True)
        assert secret is not None
        token = h.json(h.call("POST", "/api/login", body={"username": "ada", "password": "correct horse",
                                                          "totp_code": h.code(secret)}))["token"]
        self.assertEqual(self.call("POST", "/api/profile/totp", token, {"current_password": "correct horse"})[0], 409)
        self.assertEqual(self.call("POST", "/api/profile/totp/confirm", token, {"code": "123456"})[0], 409)
        self.assertEqual(h.db.run(store.totp_secret, "ada"), secret)

    def test_totp_remove(self) -> None:
        """
        DELETE /api/profile/totp (password needed) stops requiring codes; losing
        the second factor is a credential change: every session ends, this one too.
        """
        h = self.h
        secret = h.add_admin("ada", "admin", totp=True)
        assert secret is not None
        token = h.json(h.call("POST", "/api/login", body={"username": "ada", "password": "correct horse",
                                                          "totp_code": h.code(secret)}))["token"]
        self.assertEqual(self.call("DELETE", "/api/profile/totp", token, {"current_password": "nope"})[0], 403)
        code, body = self.call("DELETE", "/api/profile/totp", token, {"current_password": "correct horse"})
        self.assertEqual((code, body["totp_enabled"]), (200, False))
        self.assertEqual(self.call("GET", "/api/profile", token)[0], 401)
        self.assertEqual(self.login("ada"), 200)
        self.assertIsNone(h.db.run(store.totp_secret, "ada"))
        self.assertEqual(self.actions(), [("ada", "profile.totp.remove", "ada", "127.0.0.1")])


class CommandLineTestCase(UserCommandTestCase):
    """Commands on a new database, and its operation log."""

    def rows(self) -> list[tuple]:
        conn = userdb.open_connection(self.database)
        try:
            return userdb.transact(conn, op_log)
        finally:
            conn.close()

    def run_all(self, *commands: tuple[str, ...]) -> None:
        for argv in commands:
            status, _, err = self.gomail(*argv, stdin=PASSWORD + "\n")
            self.assertEqual((status, err), (0, ""), argv)


class CommandLineLogTests(CommandLineTestCase):
    """Every state-changing command writes an operation-log entry (actor cli:<login>, no client IP)."""

    def test_admin_commands(self) -> None:
        """add, passwd, role, disable, enable, totp, delete: one entry each, before and after without secrets."""
        self.run_all(("admin", "add", "Root", "--role", "superadmin", "--password-stdin"),
                     ("admin", "add", "ada", "--role", "admin", "--password-stdin"),
                     ("admin", "passwd", "ada", "--password-stdin"), ("admin", "role", "ada", "auditor"),
                     ("admin", "disable", "ada"), ("admin", "enable", "ada"), ("admin", "totp", "ada", "enable"),
                     ("admin", "totp", "ada", "disable"), ("admin", "delete", "ada"))
        rows = self.rows()
        self.assertEqual([(r[1], r[2]) for r in rows],
                         [("admin.create", "root"), ("admin.create", "ada"), ("admin.password", "ada"),
                          ("admin.role", "ada"), ("admin.disable", "ada"), ("admin.enable", "ada"),
                          ("admin.totp.enable", "ada"), ("admin.totp.remove", "ada"), ("admin.delete", "ada")])
        self.assertEqual({(r[0], r[5]) for r in rows}, {(oplog.cli_actor(), "")})
        self.assertEqual(json.loads(rows[3][3])["role"], "admin")
        self.assertEqual(json.loads(rows[3][4])["role"], "auditor")
        self.assertEqual((rows[0][3], rows[-1][4]), (None, None))
        self.assertNotIn("$2b$", json.dumps(rows))

    def test_refused_changes_are_not_logged(self) -> None:
        """A change the rules refuse (the last superadmin, a missing entry) leaves no entry."""
        self.run_all(("admin", "add", "root", "--role", "superadmin", "--password-stdin"))
        self.assertEqual(self.gomail("admin", "delete", "root")[0], 1)
        self.assertEqual(self.gomail("blacklist", "remove", "192.0.2.1")[0], 1)
        self.assertEqual(self.gomail("user", "disable", "nobody")[0], 1)
        self.assertEqual([r[1] for r in self.rows()], ["admin.create"])

    def test_user_commands(self) -> None:
        """Every user change is logged with the user as the admin API shows it; no password or secret."""
        self.run_all(("user", "add", "alice", "--password-stdin"), ("user", "passwd", "alice", "--password-stdin"),
                     ("user", "disable", "alice"), ("user", "enable", "alice"),
                     ("user", "sender", "set", "alice", "alice@example.com"), ("user", "sender", "clear", "alice"),
                     ("user", "backend", "set", "alice", "10.0.0.5:143"), ("user", "backend", "clear", "alice"),
                     ("user", "totp", "enable", "alice"), ("user", "totp", "disable", "alice"),
                     ("user", "app-password", "add", "alice", "phone"),
                     ("user", "app-password", "revoke", "alice", "phone"), ("user", "delete", "alice"))
        rows = self.rows()
        self.assertEqual([r[1] for r in rows],
                         ["user.create", "user.password", *["user.update"] * 6, "user.totp.enable",
                          "user.totp.remove", "user.app-password.add", "user.app-password.revoke", "user.delete"])
        self.assertEqual({(r[0], r[2], r[5]) for r in rows}, {(oplog.cli_actor(), "alice", "")})
        self.assertEqual(json.loads(rows[4][4])["allowed_senders"], ["alice@example.com"])
        self.assertEqual([a["label"] for a in json.loads(rows[10][4])["app_passwords"]], ["phone"])
        self.assertNotIn("$2b$", json.dumps(rows))
        self.assertNotIn(PASSWORD, json.dumps(rows))

    def test_blacklist_and_alias_commands(self) -> None:
        """blacklist add/remove and alias add/remove are logged with the entry before and after."""
        with open(self.config, "a", encoding="utf-8") as f:
            f.write('[smtp]\nlocalDomains = ["example.com"]\n')
        self.run_all(("blacklist", "add", "192.0.2.7/24", "--reason", "spam"), ("blacklist", "remove", "192.0.2.0/24"),
                     ("alias", "add", "info@example.com", "bob@example.net,carol@example.net"),
                     ("alias", "remove", "info@example.com", "carol@example.net"),
                     ("alias", "remove", "info@example.com"))
        rows = self.rows()
        self.assertEqual([(r[1], r[2]) for r in rows],
                         [("blacklist.add", "192.0.2.0/24"), ("blacklist.remove", "192.0.2.0/24"),
                          ("alias.add", "info@example.com"), ("alias.remove", "info@example.com"),
                          ("alias.remove", "info@example.com")])
        self.assertEqual(json.loads(rows[0][4])["reason"], "spam")
        self.assertEqual(json.loads(rows[3][4])["targets"], ["bob@example.net"])
        self.assertIsNone(rows[4][4])


class UnlockLogTests(CommandLineTestCase, TestCase):
    """C{gomail user unlock} (locks in Redis) is logged when there is a user database."""

    timeout = 60

    async def test_unlock(self) -> None:
        """An unlock writes user.unlock with the client IP it was limited to; no database, no entry and no error."""
        from twisted.internet import reactor

        from tests.redisserver import start_redis

        server = await start_redis(self, reactor)
        with open(self.config, "a", encoding="utf-8") as f:
            f.write(f"[redis]\nurl = {json.dumps(server.url)}\n")
        status, _, err = self.gomail("user", "unlock", "Alice")
        self.assertEqual((status, err), (0, ""))  # no database yet: nothing to record in, and none made
        self.run_all(("user", "add", "alice", "--password-stdin"), ("user", "unlock", "Alice", "--ip", "192.0.2.1"))
        rows = self.rows()
        self.assertEqual([(r[1], r[2]) for r in rows], [("user.create", "alice"), ("user.unlock", "alice")])
        self.assertEqual((rows[1][0], rows[1][3], json.loads(rows[1][4])), (oplog.cli_actor(), None, {"ip": "192.0.2.1"}))


class AdminUnlockCommandTests(CommandLineTestCase, TestCase):
    """C{gomail admin unlock NAME}: the way back in when the only superadmin is kept locked."""

    timeout = 60

    async def test_unlock(self) -> None:
        """The name's lock and count go from the real Redis the server uses; the change is logged."""
        from twisted.internet import reactor

        from gomail.admin.login import name_lock_keys
        from gomail.state.syncredis import SyncRedis
        from tests.redisserver import start_redis

        server = await start_redis(self, reactor)
        with open(self.config, "a", encoding="utf-8") as f:
            f.write(f"[redis]\nurl = {json.dumps(server.url)}\n")
        status, _, err = self.gomail("admin", "add", "root", "--role", "superadmin", "--password-stdin",
                                     stdin="a long password\n")
        self.assertEqual((status, err), (0, ""))
        from gomail.configload import load_config

        settings = load_config(self.config).redis
        lock, count = name_lock_keys("root")
        with SyncRedis.from_settings(settings) as redis:
            for key in (lock, count):
                redis.call("SET", redis.prefix + key, "1")
        status, out, err = self.gomail("admin", "unlock", "Root")
        self.assertEqual((status, err, out), (0, "", "unlocked admin root\n"))
        with SyncRedis.from_settings(settings) as redis:
            self.assertEqual([redis.ttl(key) for key in (lock, count)], [-2, -2])  # gone
        self.assertEqual([(r[1], r[2]) for r in self.rows()][-1], ("admin.unlock", "root"))

    def test_unlock_without_redis(self) -> None:
        """Without [redis] the command says where the locks are and how they end."""
        self.gomail("admin", "add", "root", "--role", "superadmin", "--password-stdin", stdin="a long password\n")
        status, _, err = self.gomail("admin", "unlock", "root")
        self.assertEqual(status, 1)
        self.assertIn("no [redis]", err)
