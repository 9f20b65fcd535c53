"""
Tests for the user database functions (L{gomail.auth.userdb}), the canonical
names they rely on (L{gomail.auth.names}) and the password helpers
(L{gomail.auth.passwords}).

The functions run directly on an SQLite connection in a temporary directory
with L{userdb.transact}, as the C{gomail user} command runs them.
"""

from __future__ import annotations

import os
import sqlite3
import stat

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from gomail.auth import dbfile, passwords, userdb
from gomail.auth.names import canonical_sender, canonical_username
from gomail.auth.records import AppPassword, BlacklistEntry

NOW = 1714564800.0
ROUNDS = 4  # bcrypt's minimum: fast tests
HASH = b"$2b$04$" + b"x" * 53  # shaped like a bcrypt hash; these tests never verify it
DIGEST = "ab" * 32


class DatabaseTestCase(SynchronousTestCase):
    """A migrated database file in a fresh directory, and L{db} to use it."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.path = os.path.join(self.directory, "data", "gomail.db")
        self.conn = userdb.open_connection(self.path)
        self.addCleanup(self.conn.close)
        self.db(userdb.migrate)

    def db(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return userdb.transact(self.conn, fn, *args, **kwargs)

    def version(self, name: str = "alice") -> int:
        user = self.db(userdb.get_user, name)
        assert user is not None
        return user.credential_version


class SchemaTests(DatabaseTestCase):
    """The schema, its migrations and the file."""

    def test_created_from_empty(self) -> None:
        """migrate() on an empty file creates every table and records the schema version."""
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertTrue({"users", "app_passwords", "blacklist", "meta"} <= tables, tables)
        self.assertEqual(self.conn.execute("PRAGMA user_version").fetchone()[0], userdb.SCHEMA_VERSION)

    def test_migrate_again(self) -> None:
        """migrate() again (a restart, or the CLI after the server) changes nothing and keeps the data."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        self.assertEqual(self.db(userdb.migrate), userdb.SCHEMA_VERSION)
        self.assertEqual(self.db(userdb.migrate), userdb.SCHEMA_VERSION)
        self.assertEqual([u.name for u in self.db(userdb.list_users)], ["alice"])

    def test_steps_in_order(self) -> None:
        """A database at an older version gets only the missing steps, in order."""
        self.patch(dbfile, "MIGRATIONS", [*userdb.MIGRATIONS, ("CREATE TABLE extra (x)",)])
        self.patch(dbfile, "SCHEMA_VERSION", len(dbfile.MIGRATIONS))
        self.assertEqual(self.db(userdb.migrate), dbfile.SCHEMA_VERSION)
        self.assertEqual(self.conn.execute("PRAGMA user_version").fetchone()[0], dbfile.SCHEMA_VERSION)
        self.conn.execute("SELECT x FROM extra")

    def test_newer_schema_refused(self) -> None:
        """A database from a newer gomail is refused rather than used with the wrong schema."""
        self.conn.execute(f"PRAGMA user_version = {userdb.SCHEMA_VERSION + 1}")
        with self.assertRaises(userdb.UserDBError) as caught:
            self.db(userdb.migrate)
        self.assertIn("newer", str(caught.exception))

    def test_connection_settings(self) -> None:
        """Connections use WAL, enforce foreign keys and wait for a busy database."""
        self.assertEqual(self.conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(self.conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertEqual(self.conn.execute("PRAGMA busy_timeout").fetchone()[0], 5000)

    def test_file_modes(self) -> None:
        """The database file is created 0600 and its new directory 0700, whatever the umask."""
        path = os.path.join(self.directory, "other", "gomail.db")
        old = os.umask(0o022)
        try:
            userdb.open_connection(path).close()
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)


class NameTests(SynchronousTestCase):
    """L{canonical_username} and L{canonical_sender}."""

    def test_one_form(self) -> None:
        """Case, surrounding spaces and compatibility forms (fullwidth) do not make another user."""
        for raw in ("alice", "Alice", " alice ", "ALICE\t", "ＡＬＩＣＥ", "\u3000Alice\u00a0"):
            self.assertEqual(canonical_username(raw), "alice", raw)
        self.assertEqual(canonical_username("Straße@Example.COM"), "strasse@example.com")

    def test_bad_names(self) -> None:
        """Empty names, inner whitespace, control or format characters and overlong names are refused."""
        for raw in ("", "   ", "al ice", "al\u3000ice", "al\x00ice", "al\nice", "al\u200bice", "a" * 255):
            with self.assertRaises(ValueError, msg=repr(raw)):
                canonical_username(raw)
        self.assertEqual(canonical_username("a" * 254), "a" * 254)

    def test_senders(self) -> None:
        """Sender entries are trimmed and their domain lowercased; the local part keeps its case."""
        self.assertEqual(canonical_sender(" Alice@Example.COM "), "Alice@example.com")
        self.assertEqual(canonical_sender("@Example.com"), "@example.com")

    def test_bad_senders(self) -> None:
        """Entries that are no address or domain are refused with a message naming them."""
        for raw in ("", "alice", "alice@", "a@b@c", "@", "@.example", "a b@example.com", "<a@example.com>",
                    "a@exa mple.com", "a@-example.com"):
            with self.assertRaises(ValueError, msg=repr(raw)):
                canonical_sender(raw)
        with self.assertRaises(ValueError) as caught:
            canonical_sender("alice")
        self.assertIn("'alice'", str(caught.exception))


class PasswordTests(SynchronousTestCase):
    """L{gomail.auth.passwords}."""

    def test_hash_and_verify(self) -> None:
        """A bcrypt hash with the rounds asked for verifies its password and nothing else."""
        hashed = passwords.hash_password("correct horse", rounds=ROUNDS)
        self.assertTrue(hashed.startswith(b"$2b$04$"))
        self.assertTrue(passwords.verify_password("correct horse", hashed))
        self.assertFalse(passwords.verify_password("correct horsE", hashed))

    def test_refused(self) -> None:
        """Empty passwords, NUL and more than 72 UTF-8 bytes (bcrypt would ignore the rest) are refused."""
        for bad in ("", "a\0b", "a" * 73, "é" * 37, "\udcff"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                passwords.hash_password(bad, rounds=ROUNDS)
        passwords.hash_password("a" * 72, rounds=ROUNDS)

    def test_verify_never_raises(self) -> None:
        """A damaged hash or an impossible password is simply not a match."""
        hashed = passwords.hash_password("pw", rounds=ROUNDS)
        self.assertFalse(passwords.verify_password("pw", b"garbage"))
        self.assertFalse(passwords.verify_password("a" * 100, hashed))
        self.assertFalse(passwords.verify_password("", hashed))

    def test_bcrypt_cost(self) -> None:
        """The cost is read from a bcrypt hash; anything else has none."""
        self.assertEqual(passwords.bcrypt_cost(passwords.hash_password("pw", rounds=ROUNDS)), ROUNDS)
        self.assertEqual(passwords.bcrypt_cost(b"$2b$12$" + b"y" * 53), 12)
        for other in (b"", b"garbage", b"$2b$xx$abc", b"$$$"):
            self.assertIsNone(passwords.bcrypt_cost(other), other)

    def test_dummy_hash(self) -> None:
        """The dummy hash is a valid bcrypt hash with the rounds asked for, made once."""
        dummy = passwords.dummy_hash(ROUNDS)
        self.assertIs(passwords.dummy_hash(ROUNDS), dummy)
        self.assertEqual(bcrypt.checkpw(b"guess", dummy), False)
        self.assertTrue(dummy.startswith(b"$2b$04$"))

    def test_app_passwords(self) -> None:
        """App passwords are four groups of four letters/digits, different each time; the digest is hex SHA-256."""
        generated = {passwords.new_app_password() for _ in range(20)}
        self.assertEqual(len(generated), 20)
        for password in generated:
            groups = password.split("-")
            self.assertEqual([len(g) for g in groups], [4, 4, 4, 4])
            self.assertTrue(all(c.isascii() and (c.islower() or c.isdigit()) for c in "".join(groups)))
        self.assertEqual(passwords.app_password_digest("abc"),
                         "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")

    def test_totp_secret(self) -> None:
        """TOTP secrets are 32 base32 characters (160 bits)."""
        secret = passwords.new_totp_secret()
        self.assertEqual(len(secret), 32)
        self.assertTrue(set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"))


class UserTests(DatabaseTestCase):
    """Users."""

    def test_add_and_get(self) -> None:
        """A new user is enabled, without TOTP, with version 1 and the times and senders given."""
        name = self.db(userdb.add_user, "Alice", HASH, NOW, ["alice@Example.com", "@example.org"])
        self.assertEqual(name, "alice")
        user = self.db(userdb.get_user, "alice")
        self.assertEqual((user.name, user.password_hash, user.enabled, user.totp_enabled, user.totp_secret),
                         ("alice", HASH, True, False, None))
        self.assertEqual(user.allowed_senders, ("alice@example.com", "@example.org"))
        self.assertEqual((user.credential_version, user.created, user.updated, user.backend), (1, NOW, NOW, None))
        self.assertEqual(user.app_passwords, ())
        self.assertIsNone(self.db(userdb.get_user, "bob"))

    def test_one_user_per_canonical_name(self) -> None:
        """'Alice', ' alice ' and fullwidth 'ＡＬＩＣＥ' find the same user, and none of them can be added twice."""
        self.db(userdb.add_user, "Alice", HASH, NOW)
        for variant in ("alice", " alice ", "ＡＬＩＣＥ"):
            self.assertEqual(self.db(userdb.get_user, variant).name, "alice")
            self.assertRaises(userdb.UserExists, self.db, userdb.add_user, variant, HASH, NOW)
        self.assertEqual(len(self.db(userdb.list_users)), 1)

    def test_bad_input(self) -> None:
        """A bad name or sender raises ValueError and stores nothing."""
        self.assertRaises(ValueError, self.db, userdb.add_user, "al ice", HASH, NOW)
        self.assertRaises(ValueError, self.db, userdb.add_user, "bob", HASH, NOW, ["nobody"])
        self.assertRaises(TypeError, self.db, userdb.add_user, "bob", HASH, NOW, "bob@example.com")
        self.assertEqual(self.db(userdb.list_users), [])

    def test_list(self) -> None:
        """Every user, by name, each with its own app passwords."""
        for name in ("carol", "alice", "bob"):
            self.db(userdb.add_user, name, HASH, NOW)
        self.db(userdb.add_app_password, "bob", "phone", DIGEST, NOW)
        users = self.db(userdb.list_users)
        self.assertEqual([u.name for u in users], ["alice", "bob", "carol"])
        self.assertEqual([len(u.app_passwords) for u in users], [0, 1, 0])

    def test_upgrade_password_hash(self) -> None:
        """The hash is replaced only while it is still the one the login verified; the version is kept."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        newer = b"$2b$04$" + b"z" * 53
        self.assertTrue(self.db(userdb.upgrade_password_hash, "Alice", HASH, newer))
        self.assertEqual((self.db(userdb.get_user, "alice").password_hash, self.version()), (newer, 1))
        # an operator changed the password meanwhile: the late upgrade must not undo it
        self.assertFalse(self.db(userdb.upgrade_password_hash, "alice", HASH, b"$2b$04$" + b"w" * 53))
        self.assertEqual(self.db(userdb.get_user, "alice").password_hash, newer)

    def test_credential_changes_bump_version(self) -> None:
        """Password, enabled flag, TOTP and app password revocation each bump the credential version."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        self.db(userdb.set_password, "ALICE", b"$2b$04$" + b"y" * 53, NOW + 1)
        self.assertEqual(self.version(), 2)
        self.db(userdb.set_enabled, "alice", False, NOW + 2)
        self.assertEqual(self.version(), 3)
        self.assertFalse(self.db(userdb.get_user, "alice").enabled)
        self.db(userdb.set_totp, "alice", "JBSWY3DPEHPK3PXP", True, NOW + 3)
        self.assertEqual(self.version(), 4)
        self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW + 4)
        self.assertEqual(self.version(), 4)  # a new app password invalidates nothing
        self.db(userdb.revoke_app_password, "alice", "phone", NOW + 5)
        user = self.db(userdb.get_user, "alice")
        self.assertEqual((user.credential_version, user.updated), (5, NOW + 5))
        self.assertEqual((user.password_hash, user.totp_secret, user.totp_enabled),
                         (b"$2b$04$" + b"y" * 53, "JBSWY3DPEHPK3PXP", True))

    def test_other_changes_keep_version(self) -> None:
        """Allowed senders and the backend are no credentials: the version stays, the update time moves."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        self.db(userdb.set_allowed_senders, "alice", ["@Example.com", "@example.com"], NOW + 1)
        self.db(userdb.set_backend, "alice", "10.0.0.2:143", NOW + 2)
        user = self.db(userdb.get_user, "alice")
        self.assertEqual((user.allowed_senders, user.backend), (("@example.com",), "10.0.0.2:143"))
        self.assertEqual((user.credential_version, user.updated), (1, NOW + 2))
        self.db(userdb.set_backend, "alice", None, NOW + 3)
        self.assertIsNone(self.db(userdb.get_user, "alice").backend)

    def test_totp_off(self) -> None:
        """Turning TOTP off forgets the secret; it cannot be turned on without one."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        self.db(userdb.set_totp, "alice", "JBSWY3DPEHPK3PXP", True, NOW)
        self.db(userdb.set_totp, "alice", None, False, NOW)
        user = self.db(userdb.get_user, "alice")
        self.assertEqual((user.totp_secret, user.totp_enabled), (None, False))
        self.assertRaises(ValueError, self.db, userdb.set_totp, "alice", None, True, NOW)

    def test_unknown_user(self) -> None:
        """Every change to a user who does not exist raises NoSuchUser."""
        for fn, args in ((userdb.set_password, (HASH, NOW)), (userdb.set_enabled, (True, NOW)),
                         (userdb.delete_user, ()), (userdb.set_totp, (None, False, NOW)),
                         (userdb.set_allowed_senders, ((), NOW)), (userdb.set_backend, (None, NOW)),
                         (userdb.add_app_password, ("phone", DIGEST, NOW)),
                         (userdb.revoke_app_password, ("phone",))):
            self.assertRaises(userdb.NoSuchUser, self.db, fn, "nobody", *args)

    def test_delete(self) -> None:
        """Deleting a user deletes its app passwords too."""
        self.db(userdb.add_user, "alice", HASH, NOW)
        self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW)
        self.db(userdb.delete_user, " Alice")
        self.assertIsNone(self.db(userdb.get_user, "alice"))
        self.assertEqual(self.conn.execute("SELECT COUNT(*) FROM app_passwords").fetchone()[0], 0)


class AppPasswordTests(DatabaseTestCase):
    """App passwords."""

    def setUp(self) -> None:
        super().setUp()
        self.db(userdb.add_user, "alice", HASH, NOW)

    def test_add_list_touch(self) -> None:
        """Added app passwords come with the user, by label; touching one records its last use."""
        phone = self.db(userdb.add_app_password, "Alice", " phone ", DIGEST, NOW)
        laptop = self.db(userdb.add_app_password, "alice", "laptop", "cd" * 32, NOW + 1)
        self.db(userdb.touch_app_password, phone, NOW + 10)
        self.assertEqual(self.db(userdb.get_user, "alice").app_passwords, (
            AppPassword(laptop, "laptop", "cd" * 32, NOW + 1, None),
            AppPassword(phone, "phone", DIGEST, NOW, NOW + 10),
        ))

    def test_label_unique_per_user(self) -> None:
        """A label is used once per user; another user may use it too."""
        self.db(userdb.add_user, "bob", HASH, NOW)
        self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW)
        self.assertRaises(userdb.AppPasswordExists, self.db, userdb.add_app_password, "alice", "phone",
                          DIGEST, NOW)
        self.db(userdb.add_app_password, "bob", "phone", DIGEST, NOW)

    def test_bad_input(self) -> None:
        """Empty or control-character labels and digests that are not hex SHA-256 are refused."""
        for label, digest in (("", DIGEST), ("a\nb", DIGEST), ("x" * 65, DIGEST), ("phone", "secret"),
                              ("phone", DIGEST.upper())):
            self.assertRaises(ValueError, self.db, userdb.add_app_password, "alice", label, digest, NOW)

    def test_revoke(self) -> None:
        """A revoked app password is gone; revoking an unknown label raises NoSuchAppPassword."""
        self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW)
        self.db(userdb.revoke_app_password, "alice", "phone")
        self.assertEqual(self.db(userdb.get_user, "alice").app_passwords, ())
        self.assertRaises(userdb.NoSuchAppPassword, self.db, userdb.revoke_app_password, "alice", "phone")
        self.assertEqual(self.version(), 2)  # the failed revocation changed nothing

    def test_ids_not_reused(self) -> None:
        """A new app password never gets the id of a revoked one, so a late touch cannot stamp it."""
        old = self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW)
        self.db(userdb.revoke_app_password, "alice", "phone")
        new = self.db(userdb.add_app_password, "alice", "phone", DIGEST, NOW)
        self.assertNotEqual(old, new)
        self.db(userdb.touch_app_password, old, NOW + 5)
        self.assertIsNone(self.db(userdb.get_user, "alice").app_passwords[0].last_used)


class BlacklistTests(DatabaseTestCase):
    """The client IP blacklist."""

    def test_add_and_list(self) -> None:
        """Entries are stored as canonical networks and listed by network."""
        self.assertEqual(self.db(userdb.add_blacklist, "192.0.2.77/24", None, "scanner", NOW), "192.0.2.0/24")
        self.assertEqual(self.db(userdb.add_blacklist, " 2001:DB8::1 ", NOW + 60, "", NOW), "2001:db8::1/128")
        self.assertEqual(self.db(userdb.list_blacklist, NOW), [
            BlacklistEntry("192.0.2.0/24", None, "scanner", NOW),
            BlacklistEntry("2001:db8::1/128", NOW + 60, "", NOW),
        ])

    def test_upsert(self) -> None:
        """Adding a network again replaces its expiry and reason."""
        self.db(userdb.add_blacklist, "192.0.2.1", NOW + 60, "first", NOW)
        self.db(userdb.add_blacklist, "192.0.2.1/32", None, "second", NOW + 1)
        self.assertEqual(self.db(userdb.list_blacklist, NOW + 100),
                         [BlacklistEntry("192.0.2.1/32", None, "second", NOW + 1)])

    def test_expiry(self) -> None:
        """Expired entries are not listed; purging deletes them and only them."""
        self.db(userdb.add_blacklist, "192.0.2.1", NOW + 60, "", NOW)
        self.db(userdb.add_blacklist, "192.0.2.2", None, "", NOW)
        self.assertEqual(len(self.db(userdb.list_blacklist, NOW + 59)), 2)
        self.assertEqual([e.network for e in self.db(userdb.list_blacklist, NOW + 60)], ["192.0.2.2/32"])
        self.assertEqual(self.db(userdb.purge_blacklist, NOW + 60), 1)
        self.assertEqual(self.conn.execute("SELECT network FROM blacklist").fetchall(), [("192.0.2.2/32",)])

    def test_remove(self) -> None:
        """Removing says whether there was an entry for the (canonical) network."""
        self.db(userdb.add_blacklist, "192.0.2.0/24", None, "", NOW)
        self.assertTrue(self.db(userdb.remove_blacklist, "192.0.2.9/24"))
        self.assertFalse(self.db(userdb.remove_blacklist, "192.0.2.0/24"))

    def test_bad_network(self) -> None:
        """Something that is not an IP network raises ValueError."""
        for bad in ("", "example.com", "192.0.2.0/33", "300.1.1.1"):
            self.assertRaises(ValueError, self.db, userdb.add_blacklist, bad, None, "", NOW)


class MetaTests(DatabaseTestCase):
    """The meta table."""

    def test_get_set(self) -> None:
        """Values (text or bytes) are stored, replaced and read back; unknown keys are None."""
        self.assertIsNone(self.db(userdb.get_meta, "secret"))
        self.db(userdb.set_meta, "secret", b"\x00\x01")
        self.db(userdb.set_meta, "secret", b"\x02")
        self.db(userdb.set_meta, "name", "value")
        self.assertEqual((self.db(userdb.get_meta, "secret"), self.db(userdb.get_meta, "name")),
                         (b"\x02", "value"))


class TransactTests(DatabaseTestCase):
    """L{userdb.transact}."""

    def test_rollback(self) -> None:
        """An exception rolls the whole interaction back."""
        def interaction(cursor: sqlite3.Cursor) -> None:
            userdb.add_user(cursor, "alice", HASH, NOW)
            raise RuntimeError("boom")
        self.assertRaises(RuntimeError, self.db, interaction)
        self.assertIsNone(self.db(userdb.get_user, "alice"))
