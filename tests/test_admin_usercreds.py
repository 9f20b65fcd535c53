"""The admin API's routes for users' TOTP, app passwords and lockouts (gomail.admin.api_usercreds)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit

from gomail.auth import passwords
from gomail.auth.lockout import FAIL_PAIR, FAIL_USER, LOCK_IP, LOCK_PAIR, pair_key, state_key
from tests.test_admin_users import UsersBase, user_ops


class TotpTests(UsersBase):
    """POST .../totp, POST .../totp/confirm, DELETE .../totp."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")

    def enrol(self) -> str:
        answer = self.ok("POST", "/api/users/alice/totp")
        secret = answer["secret"]
        uri = urlsplit(answer["uri"])
        self.assertEqual((uri.scheme, uri.netloc, uri.path), ("otpauth", "totp", "/gomail:alice"))
        self.assertEqual(parse_qs(uri.query), {"secret": [secret], "issuer": ["gomail"]})
        self.assertTrue(answer["qr_svg"].startswith("<svg"), answer["qr_svg"][:50])
        return str(secret)

    def test_enrol_long_name(self) -> None:
        """
        A name whose URI the qrcode package cannot encode at its first
        error-correction level (schemathesis found 500 "glog(0)") still gets its QR code.
        """
        name = "0" * 249
        self.add(name)
        answer = self.ok("POST", f"/api/users/{name}/totp")
        self.assertTrue(answer["qr_svg"].startswith("<svg"), answer["qr_svg"][:50])

    def test_enrol_then_confirm(self) -> None:
        """A new secret is pending, not required, until a right code confirms it; a wrong code is 422."""
        secret = self.enrol()
        user = self.ok("GET", "/api/users/alice")
        self.assertEqual((user["totp_enabled"], user["totp_pending"]), (False, True))
        record = self.stored("alice")
        assert record is not None
        self.assertEqual((record.totp_secret, record.totp_enabled), (secret, False))  # logins need no code yet
        wrong = "000000" if self.h.code(secret) != "000000" else "111111"
        for code in (wrong, "12345", "abcdef", "١٢٣٤٥٦"):
            self.assertEqual(self.error("POST", "/api/users/alice/totp/confirm", {"code": code}, 422),
                             "field 'code': wrong code")
        self.assertFalse(self.stored("alice").totp_enabled)  # type: ignore[union-attr]
        user = self.ok("POST", "/api/users/alice/totp/confirm", {"code": f" {self.h.code(secret)} "})
        self.assertEqual((user["totp_enabled"], user["totp_pending"]), (True, False))
        self.assertTrue(self.stored("alice").totp_enabled)  # type: ignore[union-attr]
        # The code shown to confirm cannot log in too: its time step is used up.
        self.assertIsNotNone(self.successResultOf(self.h.state.get(state_key("totp:last", "alice"))))
        ops = user_ops(self.h)
        self.assertEqual([op["action"] for op in ops], ["user.create", "user.totp.enrol", "user.totp.confirm"])
        self.assertEqual(ops[2]["after"], user)
        self.assertNotIn(secret, json.dumps(ops))

    def test_secret_never_shown_again(self) -> None:
        """After enrolment the secret is in no answer: not the user, not the list."""
        secret = self.enrol()
        for path in ("/api/users/alice", "/api/users", "/api/users/alice/app-passwords"):
            self.assertNotIn(secret.encode(), self.call("GET", path).body, path)

    def test_enrol_again(self) -> None:
        """A pending enrolment is replaced by a new one; an enabled TOTP must be removed first (409)."""
        first = self.enrol()
        second = self.enrol()
        self.assertNotEqual(first, second)
        self.assertEqual(self.stored("alice").totp_secret, second)  # type: ignore[union-attr]
        self.ok("POST", "/api/users/alice/totp/confirm", {"code": self.h.code(second)})
        self.assertIn("remove it first", self.error("POST", "/api/users/alice/totp", None, 409))
        self.assertEqual(self.stored("alice").totp_secret, second)  # type: ignore[union-attr]

    def test_confirm_without_enrolment(self) -> None:
        """Confirming with nothing pending is 409, twice is 409; an unknown user is 404."""
        self.assertIn("no TOTP enrolment", self.error("POST", "/api/users/alice/totp/confirm", {"code": "123456"},
                                                      409))
        secret = self.enrol()
        self.ok("POST", "/api/users/alice/totp/confirm", {"code": self.h.code(secret)})
        self.h.clock.advance(30)
        self.error("POST", "/api/users/alice/totp/confirm", {"code": self.h.code(secret)}, 409)
        self.error("POST", "/api/users/bob/totp/confirm", {"code": "123456"}, 404)
        self.error("POST", "/api/users/bob/totp", None, 404)
        self.assertIn("field 'code'", self.error("POST", "/api/users/alice/totp/confirm", {}, 422))

    def test_remove(self) -> None:
        """DELETE .../totp forgets the secret (enabled or pending) and logs it; with none it changes nothing."""
        secret = self.enrol()
        self.ok("POST", "/api/users/alice/totp/confirm", {"code": self.h.code(secret)})
        user = self.ok("DELETE", "/api/users/alice/totp")
        self.assertEqual((user["totp_enabled"], user["totp_pending"]), (False, False))
        record = self.stored("alice")
        assert record is not None
        self.assertEqual((record.totp_secret, record.totp_enabled), (None, False))
        self.enrol()
        self.assertFalse(self.ok("DELETE", "/api/users/alice/totp")["totp_pending"])
        self.assertEqual(self.ok("DELETE", "/api/users/alice/totp"), user | {"updated": user["updated"]})
        self.error("DELETE", "/api/users/bob/totp", None, 404)
        self.assertEqual([op["action"] for op in user_ops(self.h)].count("user.totp.remove"), 2)


class AppPasswordTests(UsersBase):
    """GET, POST .../app-passwords and DELETE .../app-passwords/<label>."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")

    def test_add_list_revoke(self) -> None:
        """The password is answered once (201) and stored only as its digest; revoking deletes it."""
        self.h.clock.advance(5)
        answer = self.ok("POST", "/api/users/alice/app-passwords", {"label": " phone "}, 201)
        self.assertEqual(answer["label"], "phone")
        password = answer["password"]
        digests = self.h.db.run(lambda c: c.execute("SELECT digest FROM app_passwords").fetchall())
        self.assertEqual(digests, [(passwords.app_password_digest(password),)])
        dump = "\n".join(self.h.db.conn.iterdump())
        self.assertNotIn(password, dump)
        listed = self.ok("GET", "/api/users/alice/app-passwords")
        self.assertEqual(listed, {"items": [{"label": "phone", "created": self.h.clock.seconds(), "last_used": None}]})
        self.assertEqual(self.ok("GET", "/api/users/alice")["app_passwords"], listed["items"])
        self.assertNotIn(password.encode(), self.call("GET", "/api/users/alice").body)
        version = self.stored("alice").credential_version  # type: ignore[union-attr]
        self.assertEqual(self.ok("DELETE", "/api/users/alice/app-passwords/phone"), {"revoked": "phone"})
        self.assertEqual(self.ok("GET", "/api/users/alice/app-passwords"), {"items": []})
        self.assertEqual(self.stored("alice").credential_version, version + 1)  # type: ignore[union-attr]
        ops = user_ops(self.h)
        self.assertEqual([op["action"] for op in ops],
                         ["user.create", "user.app-password.add", "user.app-password.revoke"])
        self.assertEqual(ops[1]["after"]["app_passwords"], listed["items"])
        self.assertEqual(ops[2]["after"]["app_passwords"], [])

    def test_label_with_space(self) -> None:
        """A label with any character but a control one can be revoked through its URL-quoted path."""
        label = "mail on the Mac / iPhone"
        self.ok("POST", "/api/users/alice/app-passwords", {"label": label}, 201)
        self.assertEqual(self.ok("DELETE", "/api/users/alice/app-passwords/" + quote(label, safe="")),
                         {"revoked": label})

    def test_errors(self) -> None:
        """A taken label is 409, a bad one 422 naming the field, unknown users and labels 404."""
        self.ok("POST", "/api/users/alice/app-passwords", {"label": "phone"}, 201)
        self.error("POST", "/api/users/alice/app-passwords", {"label": "phone"}, 409)
        for label in ("   ", "tab\there", "x" * 65, 7):
            self.assertIn("field 'label'", self.error("POST", "/api/users/alice/app-passwords", {"label": label},
                                                      422), label)
        self.error("POST", "/api/users/bob/app-passwords", {"label": "phone"}, 404)
        self.error("GET", "/api/users/bob/app-passwords", None, 404)
        self.assertIn("no app password", self.error("DELETE", "/api/users/alice/app-passwords/laptop", None, 404))
        self.error("DELETE", "/api/users/bob/app-passwords/phone", None, 404)
        self.assertEqual([op["action"] for op in user_ops(self.h)], ["user.create", "user.app-password.add"])


class UnlockTests(UsersBase):
    """POST .../unlock."""

    def setUp(self) -> None:
        super().setUp()
        self.add("alice")
        state = self.h.state
        for key in (state_key(FAIL_USER, "alice"), pair_key(LOCK_PAIR, "alice", "192.0.2.7"),
                    pair_key(FAIL_PAIR, "alice", "192.0.2.7"), pair_key(LOCK_PAIR, "alice", "192.0.2.8"),
                    state_key(LOCK_IP, "192.0.2.7")):
            self.successResultOf(state.set(key, b"1", 600))

    def present(self, key: str) -> bool:
        return self.successResultOf(self.h.state.get(key)) is not None

    def test_unlock_ip(self) -> None:
        """With an IP: that pair's lock and failures and the user's slowdown go; the IP's own lock stays."""
        self.assertEqual(self.ok("POST", "/api/users/ALICE/unlock", {"ip": " 192.0.2.7 "}), {"ok": True})
        self.assertFalse(self.present(state_key(FAIL_USER, "alice")))
        self.assertFalse(self.present(pair_key(LOCK_PAIR, "alice", "192.0.2.7")))
        self.assertFalse(self.present(pair_key(FAIL_PAIR, "alice", "192.0.2.7")))
        self.assertTrue(self.present(pair_key(LOCK_PAIR, "alice", "192.0.2.8")))
        self.assertTrue(self.present(state_key(LOCK_IP, "192.0.2.7")))
        op = user_ops(self.h)[-1]
        self.assertEqual((op["action"], op["target"], op["actor"], op["after"]),
                         ("user.unlock", "alice", "boss", {"ip": "192.0.2.7"}))

    def test_unlock_slowdown(self) -> None:
        """Without an IP: the user's slowdown goes (the state store cannot list the pairs' keys)."""
        self.assertEqual(self.ok("POST", "/api/users/alice/unlock"), {"ok": True})
        self.assertFalse(self.present(state_key(FAIL_USER, "alice")))
        self.assertEqual(user_ops(self.h)[-1]["after"], {"ip": None})

    def test_errors(self) -> None:
        """A bad IP is 422 naming the field; an unknown user 404; neither removes anything."""
        self.assertEqual(self.error("POST", "/api/users/alice/unlock", {"ip": "nope"}, 422),
                         "field 'ip': not an IP address")
        self.assertIn("field 'ip'", self.error("POST", "/api/users/alice/unlock", {"ip": 7}, 422))
        self.error("POST", "/api/users/bob/unlock", {}, 404)
        self.assertTrue(self.present(state_key(FAIL_USER, "alice")))
        self.assertEqual([op["action"] for op in user_ops(self.h)], ["user.create"])
