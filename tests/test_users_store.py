"""
Tests for L{gomail.auth.users.SQLiteUserStore}: the user database functions
run through C{adbapi.ConnectionPool} in a database thread, returning Deferreds.

The pool's thread reports back through the reactor, so these tests return
Deferreds for trial to wait on (with the real reactor, never C{reactor.run}).
"""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from gomail.auth import userdb
from gomail.auth.records import BlacklistEntry
from gomail.auth.users import IUserStore, SQLiteUserStore
from gomail.servicekit import PeriodicService

NOW = 1714564800.0
HASH = b"$2b$04$" + b"x" * 53
DIGEST = "ab" * 32


class SQLiteUserStoreTests(TestCase):
    """The store in a new directory, started."""

    async def start(self) -> SQLiteUserStore:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "data", "gomail.db")
        store = SQLiteUserStore(self.path)
        self.addCleanup(store.close)
        self.assertEqual(await store.start(), userdb.SCHEMA_VERSION)
        return store

    async def test_interface(self) -> None:
        """The store provides IUserStore."""
        store = await self.start()
        self.assertTrue(verifyObject(IUserStore, store))

    async def test_start_creates_file(self) -> None:
        """start() creates the directory (0700) and the file (0600) with the schema."""
        await self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        conn = userdb.open_connection(self.path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA user_version").fetchone()[0], userdb.SCHEMA_VERSION)

    async def test_restart(self) -> None:
        """A second store on the same file (a restart) starts and sees the data of the first."""
        store = await self.start()
        await store.add_user("alice", HASH, NOW)
        store.close()
        again = SQLiteUserStore(self.path)
        self.addCleanup(again.close)
        await again.start()
        self.assertEqual((await again.get_user("ALICE")).name, "alice")

    async def test_start_fails_on_bad_path(self) -> None:
        """start() fails its Deferred (it does not raise) when the directory cannot be made."""
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        store = SQLiteUserStore(os.path.join(blocker, "gomail.db"))
        self.addCleanup(store.close)
        with self.assertRaises(OSError):
            await store.start()

    async def test_users(self) -> None:
        """Users added through the store are found by any form of their name, with every change applied."""
        store = await self.start()
        self.assertEqual(await store.add_user("Alice", HASH, NOW, ["@example.com"]), "alice")
        await store.set_password("alice", b"$2b$04$" + b"y" * 53, NOW + 1)
        await store.set_totp("alice", "JBSWY3DPEHPK3PXP", True, NOW + 2)
        await store.set_allowed_senders("alice", ["alice@example.com"], NOW + 3)
        await store.set_backend("alice", "10.0.0.2:143", NOW + 4)
        user = await store.get_user("ＡＬＩＣＥ")
        self.assertEqual((user.name, user.totp_enabled, user.allowed_senders, user.backend,
                          user.credential_version), ("alice", True, ("alice@example.com",), "10.0.0.2:143", 3))
        await store.set_enabled("alice", False, NOW + 5)
        self.assertEqual([u.enabled for u in await store.list_users()], [False])
        await store.delete_user("alice")
        self.assertIsNone(await store.get_user("alice"))

    async def test_upgrade_password_hash(self) -> None:
        """An upgraded hash is what the next lookup returns (the cached user forgotten); a stale one is not applied."""
        store = await self.start()
        await store.add_user("alice", HASH, NOW)
        await store.get_user("alice")
        newer = b"$2b$04$" + b"z" * 53
        self.assertTrue(await store.upgrade_password_hash("alice", HASH, newer))
        self.assertEqual((await store.get_user("alice")).password_hash, newer)
        self.assertFalse(await store.upgrade_password_hash("alice", HASH, b"$2b$04$" + b"w" * 53))

    async def test_errors(self) -> None:
        """The database's errors fail the Deferreds: UserExists, NoSuchUser, ValueError for a bad name."""
        store = await self.start()
        await store.add_user("alice", HASH, NOW)
        with self.assertRaises(userdb.UserExists):
            await store.add_user(" ALICE ", HASH, NOW)
        with self.assertRaises(userdb.NoSuchUser):
            await store.set_enabled("bob", True, NOW)
        with self.assertRaises(ValueError):
            await store.get_user("")

    async def test_app_passwords(self) -> None:
        """App passwords are added, touched and revoked through the store."""
        store = await self.start()
        await store.add_user("alice", HASH, NOW)
        app_id = await store.add_app_password("alice", "phone", DIGEST, NOW)
        await store.touch_app_password(app_id, NOW + 7)
        (app,) = (await store.get_user("alice")).app_passwords
        self.assertEqual((app.id, app.label, app.digest, app.last_used), (app_id, "phone", DIGEST, NOW + 7))
        await store.revoke_app_password("alice", "phone", NOW + 8)
        with self.assertRaises(userdb.NoSuchAppPassword):
            await store.revoke_app_password("alice", "phone")
        user = await store.get_user("alice")
        self.assertEqual((user.app_passwords, user.credential_version), ((), 2))

    async def test_blacklist(self) -> None:
        """Blacklist entries are added, listed until they expire, purged and removed through the store."""
        store = await self.start()
        self.assertEqual(await store.add_blacklist("192.0.2.9/24", NOW + 60, "scan", NOW), "192.0.2.0/24")
        await store.add_blacklist("198.51.100.1", None, "", NOW)
        self.assertEqual(await store.list_blacklist(NOW + 60), [BlacklistEntry("198.51.100.1/32", None, "", NOW)])
        self.assertEqual(await store.purge_blacklist(NOW + 60), 1)
        self.assertTrue(await store.remove_blacklist("198.51.100.1"))
        self.assertEqual(await store.list_blacklist(NOW), [])

    async def test_meta(self) -> None:
        """Meta values are stored and read back through the store."""
        store = await self.start()
        await store.set_meta("secret", b"\x01\x02")
        self.assertEqual(await store.get_meta("secret"), b"\x01\x02")
        self.assertIsNone(await store.get_meta("other"))

    async def test_cli_and_server_share_the_file(self) -> None:
        """A change made by the command's direct connection is seen by the running store at once."""
        store = await self.start()
        conn = userdb.open_connection(self.path)
        self.addCleanup(conn.close)
        userdb.transact(conn, userdb.add_user, "bob", HASH, NOW)
        self.assertEqual((await store.get_user("bob")).name, "bob")
        userdb.transact(conn, userdb.set_enabled, "bob", False, NOW)
        self.assertFalse((await store.get_user("bob")).enabled)


class UserRecordCacheTests(TestCase):
    """
    The store with its record cache on (C{refresh} given): the watch for other
    processes' changes runs on a L{Clock}; the database thread is real.
    """

    async def start(self) -> SQLiteUserStore:
        self.clock = Clock()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "gomail.db")
        store = SQLiteUserStore(self.path, refresh=1.0, clock=self.clock)
        self.addCleanup(store.close)
        await store.start()
        # The server's watch (gomail.auth.service.build_auth): a PeriodicService on the clock.
        watch = PeriodicService("user database watch", store.refresh, store.look_for_changes, self.clock)
        watch.startService()
        self.addCleanup(watch.stopService)
        await store.add_user("alice", HASH, NOW)
        self.conn = userdb.open_connection(self.path)
        self.addCleanup(self.conn.close)
        return store

    async def look(self, store: SQLiteUserStore) -> None:
        """Let the watch look for changes once, and wait for its answer."""
        self.clock.advance(1.0)
        await store.look_for_changes()  # the same look the timer just started; waits for an answer

    async def test_answers_from_memory_only_after_a_look(self) -> None:
        """Before the first look for changes has answered, lookups read the database."""
        store = await self.start()
        store._confirmed_at = None
        await store.get_user("alice")
        self.assertEqual(store._cache, {})

    async def test_second_lookup_from_memory(self) -> None:
        """A looked-up user is answered from memory the next time: the Deferred has already fired."""
        store = await self.start()
        first = await store.get_user("alice")
        self.assertIs(self.successResultOf(store.get_user("alice")), first)

    async def test_own_change_forgets_at_once(self) -> None:
        """A change made through the store itself is seen by the very next lookup."""
        store = await self.start()
        await store.get_user("alice")
        await store.set_enabled("alice", False, NOW + 1)
        self.assertFalse((await store.get_user("alice")).enabled)

    async def test_other_process_change_seen_after_refresh(self) -> None:
        """A change committed by another connection (the gomail command) is seen after the next look."""
        store = await self.start()
        await self.look(store)
        await store.get_user("alice")
        userdb.transact(self.conn, userdb.set_password, "alice", b"$2b$04$" + b"z" * 53, NOW + 1)
        self.assertEqual((await store.get_user("alice")).credential_version, 1)  # until the next look
        await self.look(store)
        self.assertEqual((await store.get_user("alice")).credential_version, 2)

    async def test_unknown_names_kept_until_a_change(self) -> None:
        """An unknown name is answered from memory too (same timing as a known one) until a change is seen."""
        store = await self.start()
        await self.look(store)
        self.assertIsNone(await store.get_user("bob"))
        self.assertIsNone(self.successResultOf(store.get_user("bob")))
        userdb.transact(self.conn, userdb.add_user, "bob", HASH, NOW)
        await self.look(store)
        self.assertEqual((await store.get_user("bob")).name, "bob")

    async def test_stuck_watch_stops_the_cache(self) -> None:
        """When the look for changes has not answered for twice the refresh, every lookup reads the database."""
        store = await self.start()
        await self.look(store)
        await store.get_user("alice")
        held: list = []
        store._run = _hold_data_version(store._run, held)  # the database thread is busy for a long time
        # The watch's stop waits for the look in progress: let it answer at the end.
        self.addCleanup(lambda: [d.callback(0) for d in held if not d.called])
        userdb.transact(self.conn, userdb.set_enabled, "alice", False, NOW + 1)
        self.clock.advance(1.0)
        self.assertTrue(self.successResultOf(store.get_user("alice")).enabled)  # within the refresh: from memory
        self.clock.advance(1.5)
        self.assertFalse((await store.get_user("alice")).enabled)

    async def test_closed_store_does_not_cache(self) -> None:
        """After close nothing is answered from memory, even right after a look."""
        store = await self.start()
        await self.look(store)
        store.close()
        self.assertFalse(store._serving())


def _hold_data_version(run, held_looks):
    """A store's _run whose looks for changes do not answer (put in C{held_looks}; the other calls go through)."""
    from twisted.internet.defer import Deferred

    def held(fn, *args):
        if fn is userdb.data_version:
            held_looks.append(Deferred())
            return held_looks[-1]
        return run(fn, *args)
    return held
