"""The admin API's user routes: list, create, show, update, delete, password (gomail.admin.api_users)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.trial.unittest import TestCase

from gomail.admin.routing import ROUTES
from gomail.auth import passwords, userdb
from tests.admintesting import ROUNDS, START, AdminHarness, Answer

HASH = passwords.hash_password("a password", ROUNDS)


def user_ops(h: AdminHarness) -> list[dict[str, Any]]:
    """The operation-log entries about users, oldest first, their before/after parsed."""
    rows = h.db.run(lambda c: c.execute("SELECT actor, action, target, before, after, client_ip FROM op_log "
                                        "WHERE action LIKE 'user.%' ORDER BY id").fetchall())
    return [{"actor": actor, "action": action, "target": target, "client_ip": ip,
             "before": None if before is None else json.loads(before),
             "after": None if after is None else json.loads(after)}
            for actor, action, target, before, after, ip in rows]


class UsersBase(TestCase):
    """An admin app with an admin (C{self.admin}) and an auditor (C{self.auditor}) logged in."""

    def setUp(self) -> None:
        self.h = AdminHarness(self)
        self.admin = self.h.token("boss", "admin")
        self.auditor = self.h.token("eve", "auditor")

    def call(self, method: str, path: str, body: Any = None, token: str | None = "") -> Answer:
        return self.h.call(method, path, token=self.admin if token == "" else token, body=body)

    def ok(self, method: str, path: str, body: Any = None, code: int = 200) -> Any:
        answer = self.call(method, path, body)
        self.assertEqual(answer.code, code, answer.body)
        return self.h.json(answer)

    def error(self, method: str, path: str, body: Any, code: int) -> str:
        answer = self.call(method, path, body)
        self.assertEqual(answer.code, code, answer.body)
        return str(self.h.json(answer)["error"])

    def add(self, name: str, **extra: Any) -> Any:
        return self.ok("POST", "/api/users", {"name": name, "password": "a password", **extra}, 201)

    def stored(self, name: str) -> userdb.UserRecord | None:
        return self.h.db.run(userdb.get_user, name)


class AccessTests(UsersBase):
    """Who may use the user routes."""

    def test_admin_role_needed(self) -> None:
        """Every user route answers 401 without a session and 403 to an auditor, changing nothing."""
        specs = [spec for spec in ROUTES if spec.path.startswith("/api/users")]
        self.assertEqual(len(specs), 13)
        self.add("alice")
        for spec in specs:
            path = spec.path.replace("<name>", "alice").replace("<path:label>", "phone")
            self.assertEqual(self.call(spec.method, path, token=None).code, 401, path)
            answer = self.call(spec.method, path, token=self.auditor)
            self.assertEqual(answer.code, 403, path)
        self.assertEqual([op["action"] for op in user_ops(self.h)], ["user.create"])


class CreateTests(UsersBase):
    """POST /api/users."""

    def test_create(self) -> None:
        """A new user answers 201 with its JSON; the row holds a bcrypt hash of the password; the change is logged."""
        user = self.add("Alice")
        self.assertEqual(user, {"name": "alice", "enabled": True, "totp_enabled": False, "totp_pending": False,
                                "allowed_senders": [], "backend": None, "app_passwords": [], "created": START,
                                "updated": START})
        record = self.stored("alice")
        assert record is not None
        self.assertTrue(passwords.verify_password("a password", record.password_hash))
        self.assertEqual(passwords.bcrypt_cost(record.password_hash), self.h.config.auth.bcryptRounds)
        self.assertEqual(user_ops(self.h), [{"actor": "boss", "action": "user.create", "target": "alice",
                                             "client_ip": "127.0.0.1", "before": None, "after": user}])
        self.assertGreater(self.h.users.forgotten, 0)

    def test_create_with_options(self) -> None:
        """enabled, allowed_senders and backend are stored in their canonical forms."""
        user = self.add("bob", enabled=False, allowed_senders=["Bob@EXAMPLE.com", "@Example.org", "Bob@example.com"],
                        backend="[2001:DB8::5]:143")
        self.assertEqual((user["enabled"], user["allowed_senders"], user["backend"]),
                         (False, ["Bob@example.com", "@example.org"], "[2001:db8::5]:143"))
        record = self.stored("bob")
        assert record is not None
        self.assertEqual((record.enabled, record.allowed_senders, record.backend),
                         (False, ("Bob@example.com", "@example.org"), "[2001:db8::5]:143"))

    def test_exists(self) -> None:
        """A name taken already, in any case, is 409; nothing more is logged."""
        self.add("alice")
        self.assertIn("already exists", self.error("POST", "/api/users", {"name": "ALICE", "password": "x"}, 409))
        self.assertEqual(len(user_ops(self.h)), 1)

    def test_invalid_fields(self) -> None:
        """Each invalid field is a 422 naming it, and no user is made."""
        cases = [({"name": "a b"}, "field 'name'"), ({"name": ""}, "field 'name'"), ({"name": "a/b"}, "field 'name'"),
                 ({"password": "x" * 73}, "field 'password'"), ({"password": "a\0b"}, "field 'password'"),
                 ({"allowed_senders": ["ok@example.com", "nope"]}, "field 'allowed_senders.1'"),
                 ({"allowed_senders": "a@example.com"}, "field 'allowed_senders'"),
                 ({"backend": "mail.example:143"}, "field 'backend'"), ({"backend": "10.0.0.1:0"}, "field 'backend'"),
                 ({"enabled": "yes"}, "field 'enabled'"), ({"password": None}, "field 'password'"),
                 ({"extra": 1}, "unknown field")]
        for change, text in cases:
            body = {"name": "alice", "password": "a password", **change}
            self.assertIn(text, self.error("POST", "/api/users", body, 422), change)
        self.assertIn("field 'password': is required", self.error("POST", "/api/users", {"name": "alice"}, 422))
        self.assertIsNone(self.stored("alice"))
        self.assertEqual(user_ops(self.h), [])


class ShowUpdateDeleteTests(UsersBase):
    """GET, PATCH and DELETE /api/users/<name>, PUT .../password."""

    def test_show(self) -> None:
        """A user is found by any form of its name; an unknown or impossible name is 404."""
        self.add("alice")
        self.assertEqual(self.ok("GET", "/api/users/ALICE")["name"], "alice")
        self.assertIn("no user bob", self.error("GET", "/api/users/bob", None, 404))
        self.assertEqual(self.call("GET", "/api/users/" + quote("a b")).code, 404)
        self.assertEqual(self.call("GET", "/api/users/" + quote("x" * 300)).code, 404)

    def test_update(self) -> None:
        """PATCH changes the fields given, logs the user before and after, and only disabling ends logins."""
        self.add("alice")
        version = self.stored("alice").credential_version  # type: ignore[union-attr]
        self.h.clock.advance(10)
        user = self.ok("PATCH", "/api/users/alice", {"allowed_senders": ["@EXAMPLE.com"], "backend": "10.0.0.5:143"})
        self.assertEqual((user["allowed_senders"], user["backend"], user["updated"]),
                         (["@example.com"], "10.0.0.5:143", START + 10))
        self.assertEqual(self.stored("alice").credential_version, version)  # type: ignore[union-attr]
        user = self.ok("PATCH", "/api/users/alice", {"enabled": False, "backend": None})
        self.assertEqual((user["enabled"], user["backend"]), (False, None))
        record = self.stored("alice")
        assert record is not None
        self.assertEqual((record.enabled, record.backend, record.credential_version), (False, None, version + 1))
        ops = user_ops(self.h)
        self.assertEqual([op["action"] for op in ops], ["user.create", "user.update", "user.update"])
        self.assertEqual((ops[2]["before"]["enabled"], ops[2]["after"]), (True, user))

    def test_update_nothing(self) -> None:
        """A PATCH changing nothing answers the user, unchanged and not logged."""
        user = self.add("alice")
        self.assertEqual(self.ok("PATCH", "/api/users/alice", {}), user)
        self.assertEqual(self.ok("PATCH", "/api/users/alice", {"enabled": True, "allowed_senders": []}), user)
        self.assertEqual(len(user_ops(self.h)), 1)

    def test_update_errors(self) -> None:
        """Bad fields are 422 naming them; an unknown user is 404."""
        self.add("alice")
        self.assertIn("field 'allowed_senders.0'",
                      self.error("PATCH", "/api/users/alice", {"allowed_senders": ["a@"]}, 422))
        self.assertIn("field 'backend'", self.error("PATCH", "/api/users/alice", {"backend": "x"}, 422))
        self.assertIn("unknown field", self.error("PATCH", "/api/users/alice", {"name": "bob"}, 422))
        self.error("PATCH", "/api/users/bob", {"enabled": False}, 404)
        self.assertEqual(len(user_ops(self.h)), 1)

    def test_delete(self) -> None:
        """DELETE removes the user and its app passwords and logs what it was; a second DELETE is 404."""
        self.add("alice")
        self.h.db.run(userdb.add_app_password, "alice", "phone", "0" * 64, START)
        self.assertEqual(self.ok("DELETE", "/api/users/Alice"), {"deleted": "alice"})
        self.assertIsNone(self.stored("alice"))
        self.assertEqual(self.h.db.run(lambda c: c.execute("SELECT COUNT(*) FROM app_passwords").fetchone()[0]), 0)
        self.error("DELETE", "/api/users/alice", None, 404)
        op = user_ops(self.h)[-1]
        self.assertEqual((op["action"], op["target"], op["after"]), ("user.delete", "alice", None))
        self.assertEqual(op["before"]["app_passwords"], [{"label": "phone", "created": START, "last_used": None}])

    def test_password(self) -> None:
        """PUT .../password replaces the hash (ending cached logins) and logs no secret."""
        self.add("alice")
        before = self.stored("alice")
        self.assertEqual(self.ok("PUT", "/api/users/alice/password", {"password": "new secret"}), {"ok": True})
        after = self.stored("alice")
        assert before is not None and after is not None
        self.assertTrue(passwords.verify_password("new secret", after.password_hash))
        self.assertFalse(passwords.verify_password("a password", after.password_hash))
        self.assertEqual(after.credential_version, before.credential_version + 1)
        op = user_ops(self.h)[-1]
        self.assertEqual((op["action"], op["target"]), ("user.password", "alice"))
        self.assertNotIn("secret", json.dumps(op))
        self.assertNotIn(after.password_hash.decode(), json.dumps(op))

    def test_password_errors(self) -> None:
        """A password bcrypt cannot use in full is 422 naming the field; an unknown user is 404."""
        self.add("alice")
        self.assertIn("field 'password'", self.error("PUT", "/api/users/alice/password", {"password": "é" * 40}, 422))
        self.assertIn("field 'password'", self.error("PUT", "/api/users/alice/password", {}, 422))
        self.error("PUT", "/api/users/bob/password", {"password": "new secret"}, 404)
        self.assertEqual(len(user_ops(self.h)), 1)


class ListTests(UsersBase):
    """GET /api/users: search, filters, sorting, pages."""

    def setUp(self) -> None:
        super().setUp()
        # Added in this order, one second apart: created grows along the list.
        for name in ("carol", "alice", "bob_1", "bobx1", "100%", "dave", "erin"):
            self.h.db.run(userdb.add_user, name, HASH, self.h.clock.seconds())
            self.h.clock.advance(1)
        self.h.db.run(userdb.set_enabled, "dave", False, self.h.clock.seconds())
        self.h.db.run(userdb.set_totp, "erin", "JBSWY3DPEHPK3PXP", True, self.h.clock.seconds())
        self.h.db.run(userdb.set_totp, "carol", "JBSWY3DPEHPK3PXP", False, self.h.clock.seconds())

    def names(self, query: str = "") -> list[str]:
        return [user["name"] for user in self.ok("GET", f"/api/users{query}")["items"]]

    def test_all(self) -> None:
        """Without parameters: every user by name, page 1 of 50, the total, no secrets."""
        answer = self.ok("GET", "/api/users")
        self.assertEqual([u["name"] for u in answer["items"]],
                         ["100%", "alice", "bob_1", "bobx1", "carol", "dave", "erin"])
        self.assertEqual((answer["total"], answer["page"], answer["per_page"]), (7, 1, 50))
        by_name = {u["name"]: u for u in answer["items"]}
        self.assertEqual((by_name["erin"]["totp_enabled"], by_name["erin"]["totp_pending"]), (True, False))
        self.assertEqual((by_name["carol"]["totp_enabled"], by_name["carol"]["totp_pending"]), (False, True))
        self.assertNotIn(b"JBSWY3DPEHPK3PXP", self.call("GET", "/api/users").body)

    def test_search(self) -> None:
        """search is a case-insensitive substring of the name; % and _ are taken literally."""
        self.assertEqual(self.names("?search=BOB"), ["bob_1", "bobx1"])
        self.assertEqual(self.names("?search=b_1"), ["bob_1"])
        self.assertEqual(self.names("?search=" + quote("%")), ["100%"])
        self.assertEqual(self.names("?search=" + quote("\\")), [])
        self.assertEqual(self.ok("GET", "/api/users?search=zzz"), {"items": [], "total": 0, "page": 1,
                                                                    "per_page": 50})

    def test_search_unicode(self) -> None:
        """A non-ASCII search is folded as names are (NFKC, case-folded): ÉLO and ＯＤＩ find élodie."""
        self.h.db.run(userdb.add_user, "Élodie", HASH, self.h.clock.seconds())
        self.assertEqual(self.names("?search=" + quote("ÉLO")), ["élodie"])
        self.assertEqual(self.names("?search=" + quote("ＯＤＩ")), ["élodie"])  # fullwidth letters

    def test_filters(self) -> None:
        """enabled and totp filter on those flags (a pending enrolment is not TOTP), with the search."""
        self.assertEqual(self.names("?enabled=false"), ["dave"])
        self.assertEqual(self.names("?totp=true"), ["erin"])
        self.assertEqual(len(self.names("?totp=false&enabled=true")), 5)
        self.assertEqual(self.names("?enabled=true&search=R"), ["carol", "erin"])

    def test_sort(self) -> None:
        """sort orders by name, created or updated, either way."""
        self.assertEqual(self.names("?sort=-name")[:2], ["erin", "dave"])
        self.assertEqual(self.names("?sort=created"), ["carol", "alice", "bob_1", "bobx1", "100%", "dave", "erin"])
        self.assertEqual(self.names("?sort=-created")[0], "erin")
        self.assertEqual(self.names("?sort=-updated")[:3], ["carol", "dave", "erin"])

    def test_pages(self) -> None:
        """page and per_page cut the sorted list; the total counts every match; past the end is empty."""
        pages = [self.ok("GET", f"/api/users?per_page=3&page={page}") for page in (1, 2, 3, 4)]
        self.assertEqual([[u["name"] for u in page["items"]] for page in pages],
                         [["100%", "alice", "bob_1"], ["bobx1", "carol", "dave"], ["erin"], []])
        self.assertEqual({page["total"] for page in pages}, {7})
        self.assertEqual(self.names("?per_page=2&page=2&search=o"), ["carol"])
        self.assertEqual(self.names(f"?page={10 ** 17}&per_page=500"), [])

    def test_bad_parameters(self) -> None:
        """Bad query parameters are 400 naming them."""
        for query, name in (("sort=size", "sort"), ("per_page=0", "per_page"), ("page=0", "page"),
                            ("enabled=1", "enabled"), ("colour=red", "colour")):
            self.assertIn(repr(name), self.error("GET", f"/api/users?{query}", None, 400), query)
