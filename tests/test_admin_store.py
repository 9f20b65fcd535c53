"""
Admin accounts and roles (gomail.admin.store) and `gomail admin`: no
default admin, the role rules (nobody acts above their role, the last
superadmin stays), sessions revoked by credential changes.
"""

from __future__ import annotations

import sqlite3

from twisted.trial.unittest import SynchronousTestCase

from gomail.admin import store
from gomail.auth import userdb
from gomail.auth.passwords import verify_password
from tests.test_cli_user import PASSWORD, UserCommandTestCase


class StoreTests(SynchronousTestCase):
    """The rules, on a real SQLite database."""

    def setUp(self) -> None:
        self.conn = sqlite3.connect(":memory:")
        userdb.transact(self.conn, userdb.migrate)
        self.root = self.do(store.add_admin, "root", b"hash", "superadmin", 1.0)

    def do(self, function, *args):  # type: ignore[no-untyped-def]
        return userdb.transact(self.conn, function, *args)

    def test_no_admin_to_begin_with(self) -> None:
        """A new database has no admin at all (no default credentials, ever)."""
        conn = sqlite3.connect(":memory:")
        userdb.transact(conn, userdb.migrate)
        self.assertEqual(userdb.transact(conn, store.list_admins), [])

    def test_nobody_acts_above_their_role(self) -> None:
        """An admin cannot create a superadmin, change one, or raise anyone (themselves included) above admin."""
        admin = self.do(store.add_admin, "ada", b"h", "admin", 2.0, self.root)
        self.assertRaises(store.AdminError, self.do, store.add_admin, "eve", b"h", "superadmin", 3.0, admin)
        self.assertRaises(store.AdminError, self.do, store.set_password, "root", b"x", 3.0, admin)
        self.assertRaises(store.AdminError, self.do, store.set_enabled, "root", False, 3.0, admin)
        self.assertRaises(store.AdminError, self.do, store.set_role, "ada", "superadmin", 3.0, admin)
        auditor = self.do(store.add_admin, "aud", b"h", "auditor", 3.0, admin)
        self.assertRaises(store.AdminError, self.do, store.set_role, "aud", "admin", 4.0, auditor)
        self.assertEqual(self.do(store.set_role, "aud", "admin", 4.0, admin).role, "admin")

    def test_last_superadmin_stays(self) -> None:
        """The last enabled superadmin cannot be demoted, disabled or deleted; with a second one it can."""
        for change in ((store.set_role, "root", "admin", 2.0), (store.set_enabled, "root", False, 2.0),
                       (store.delete_admin, "root")):
            error = self.assertRaises(store.AdminError, self.do, *change)
            self.assertIn("last enabled superadmin", str(error))
        self.do(store.add_admin, "root2", b"h", "superadmin", 2.0)
        self.do(store.set_role, "root", "admin", 3.0)
        self.assertEqual(self.do(store.get_admin, "root").role, "admin")

    def test_credential_changes_move_the_version(self) -> None:
        """Password, role and enabled changes each move the credential version (sessions end)."""
        self.do(store.add_admin, "ada", b"h", "admin", 2.0)
        versions = [self.do(store.get_admin, "ada").credential_version]
        self.do(store.set_password, "ada", b"h2", 3.0)
        versions.append(self.do(store.get_admin, "ada").credential_version)
        self.do(store.set_role, "ada", "auditor", 4.0)
        versions.append(self.do(store.get_admin, "ada").credential_version)
        self.do(store.set_enabled, "ada", False, 5.0)
        versions.append(self.do(store.get_admin, "ada").credential_version)
        self.assertEqual(versions, sorted(set(versions)))
        self.assertIsNone(self.do(store.password_hash, "ada"))  # disabled: no login


class AdminCommandTests(UserCommandTestCase):
    """`gomail admin`, in-process, on a real database file."""

    def test_add_list_and_password(self) -> None:
        """add (password from stdin, bcrypt), list without secrets, passwd."""
        status, out, err = self.gomail("admin", "add", "root", "--role", "superadmin", "--password-stdin",
                                       stdin=PASSWORD + "\n")
        self.assertEqual((status, err, out), (0, "", "added superadmin root\n"))
        status, out, _ = self.gomail("admin", "list")
        self.assertIn("root", out)
        self.assertIn("superadmin", out)
        self.assertNotIn(PASSWORD, out)
        conn = userdb.open_connection(self.database)
        try:
            hashed = userdb.transact(conn, store.password_hash, "root")
        finally:
            conn.close()
        self.assertTrue(verify_password(PASSWORD, hashed))

    def test_rules_reach_the_command_line(self) -> None:
        """Demoting the only superadmin fails with one line; an unknown role is a usage error."""
        self.gomail("admin", "add", "root", "--role", "superadmin", "--password-stdin", stdin=PASSWORD + "\n")
        self.assertOneErrorLine(self.gomail("admin", "role", "root", "admin"), "last enabled superadmin")
        status, _, _ = self.gomail("admin", "role", "root", "king")
        self.assertEqual(status, 2)

    def test_totp_enable_and_disable(self) -> None:
        """totp enable prints a QR code and the otpauth URI, stores the secret, and refuses a second enable."""
        import re

        import pyotp

        self.gomail("admin", "add", "root", "--role", "superadmin", "--password-stdin", stdin=PASSWORD + "\n")
        status, out, err = self.gomail("admin", "totp", "root", "enable")
        self.assertEqual((status, err), (0, ""))
        uri = re.search(r"otpauth://\S+", out).group(0)
        secret = pyotp.parse_uri(uri).secret
        conn = userdb.open_connection(self.database)
        try:
            row = conn.execute("SELECT totp_secret, totp_enabled FROM admins WHERE name = 'root'").fetchone()
        finally:
            conn.close()
        self.assertEqual(row, (secret, 1))
        self.assertOneErrorLine(self.gomail("admin", "totp", "root", "enable"), "already enabled")
        self.assertEqual(self.gomail("admin", "totp", "root", "disable")[0], 0)
