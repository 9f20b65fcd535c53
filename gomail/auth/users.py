# -*- test-case-name: tests.test_users_store -*-
"""
The user store the server reads credentials from: the contract
(L{IUserStore}) and the embedded SQLite implementation (L{SQLiteUserStore}).

L{SQLiteUserStore} runs the functions of L{gomail.auth.userdb} in its own
database thread through C{adbapi.ConnectionPool.runInteraction}: the same
functions the C{gomail user} command runs directly, so both always agree on
the schema and on canonical names.

User records (and unknown names, so that timing does not tell them apart)
are also kept in memory, so that a login (nginx asks once per login,
thousands of times a second) costs no trip to the database thread: every
change made through the store forgets them at once, and a change made by
another process (the C{gomail user} command) is noticed within C{refresh}
seconds through SQLite's C{PRAGMA data_version}, which moves when another
connection commits. When that look has not succeeded for twice C{refresh}
(the database slow or stuck), the memory is not used until it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from gomail.auth import userdb


class IUserStore(Interface):
    """
    Users, app passwords and the client IP blacklist. Names are canonicalised
    by the store. Every method returns a Deferred; a store that cannot answer
    fails it with some exception other than the L{userdb.UserDBError} ones, and
    the checker turns that into a temporary failure.
    """

    def get_user(name):
        """
        @return: Deferred firing with the L{gomail.auth.records.UserRecord}
            (app passwords included) or None for an unknown user; fails with
            ValueError for a name that has no canonical form.
        """

    def upgrade_password_hash(name, old_hash, new_hash):
        """
        Replace the user's hash C{old_hash} by C{new_hash} (the same password at
        the configured bcrypt cost) unless it changed meanwhile.
        @return: Deferred[bool], whether it was replaced.
        """

    def touch_app_password(app_id, now):
        """Record the use of app password C{app_id} at C{now}. @return: Deferred[None]"""

    def list_blacklist(now):
        """@return: Deferred[list[L{gomail.auth.records.BlacklistEntry}]], the entries not expired at C{now}."""


@implementer(IUserStore)
class SQLiteUserStore:
    """
    The users in an SQLite file (created 0600, its directory 0700), accessed
    through one connection in one database thread: SQLite has one writer at a
    time anyway, and the C{gomail} command may be the other one (WAL mode and a
    5 s busy timeout make them wait for each other instead of failing).

    Call L{start} (and wait for it) before anything else, L{close} at the end.

    @param refresh: seconds between looks for changes made by other processes
        (L{look_for_changes}, called that often by the server); the user
        record cache is only used when this is given, with a clock.
    @param clock: what the looks' age is measured on (default: C{reactor}).
    """

    log = Logger()
    #: Past this many cached records the cache starts over (bounded memory).
    MAX_CACHED = 50_000
    _UNKNOWN = object()  # a name the database does not have, in the cache

    def __init__(self, path: str, reactor: Any = None, refresh: float = 0.0, clock: Any = None) -> None:
        self.path = os.path.abspath(path)
        # check_same_thread=False: the pool may close the connection from the reactor thread.
        self.pool = adbapi.ConnectionPool("sqlite3", self.path, check_same_thread=False, cp_min=1, cp_max=1,
                                          cp_openfun=userdb.connection_setup, cp_reactor=reactor)
        self._closed = False
        self._cache: dict[str, Any] = {}
        self._generation = 0  # moves at every change: a lookup started before one is not cached
        self._data_version: int | None = None
        self._confirmed_at: float | None = None  # when the last successful look for changes started
        self._clock = clock if clock is not None else reactor
        #: Seconds between looks for other processes' changes (L{look_for_changes}); 0: no record cache.
        self.refresh = refresh if self._clock is not None else 0.0

    def start(self) -> Deferred:
        """
        Create the file if needed and bring the schema up to date.

        @return: Deferred firing with the schema version; fails with
            L{userdb.UserDBError} for a database made by a newer gomail, with
            OSError or C{sqlite3.Error} for an unusable file.
        """
        try:
            # Before the pool's first connect, so SQLite never creates the file itself (with the umask).
            userdb.ensure_database_file(self.path)
        except OSError:
            return fail()
        self.pool.start()  # idempotent; the pool starts itself only once the reactor runs
        return self.pool.runInteraction(userdb.migrate)

    def close(self) -> None:
        """Close the connection and stop the database thread (again: nothing happens)."""
        if not self._closed:
            self._closed = True
            self.pool.close()

    def _run(self, fn: Any, *args: Any) -> Deferred:
        return self.pool.runInteraction(fn, *args)

    def _write(self, fn: Any, *args: Any) -> Deferred:
        """Run a change, forgetting the cached records before and after it."""
        self._forget()
        return self._run(fn, *args).addBoth(self._forget)

    # -- the record cache ---------------------------------------------------------

    def forget(self) -> None:
        """Forget the cached records: a change was made through the pool directly (the admin API)."""
        self._forget()

    def _forget(self, result: Any = None) -> Any:
        self._cache.clear()
        self._generation += 1
        return result

    def _serving(self) -> bool:
        """Whether the cache may answer: open, and a look for changes answered lately."""
        return (self.refresh > 0 and not self._closed and self._confirmed_at is not None
                and self._clock.seconds() - self._confirmed_at <= 2 * self.refresh)

    def look_for_changes(self) -> Deferred:
        """
        Ask the database whether anything changed since the last look (by any
        process: the C{gomail} command writes directly) and forget the cached
        records if so. The server calls it every C{refresh} seconds (a
        L{gomail.servicekit.PeriodicService}); while no look has answered for
        twice that, lookups read the database.
        """
        started = self._clock.seconds()

        def compare(version: int) -> None:
            if version != self._data_version:
                self._data_version = version
                self._forget()
            self._confirmed_at = started

        def failed(failure: Any) -> None:
            # Cannot tell whether anything changed: serve from the database until it answers again.
            self.log.warn("user database not answering: {error}", error=failure.getErrorMessage())
            self._forget()

        return self._run(userdb.data_version).addCallbacks(compare, failed)

    # -- users --------------------------------------------------------------------

    def get_user(self, name: str) -> Deferred:
        """@return: Deferred[UserRecord | None]"""
        if not self._serving():
            return self._run(userdb.get_user, name)
        cached = self._cache.get(name)
        if cached is not None:
            return succeed(None if cached is self._UNKNOWN else cached)
        generation = self._generation

        def keep(user: Any) -> Any:
            if generation == self._generation and self._serving():
                if len(self._cache) >= self.MAX_CACHED:  # made-up names cannot grow it without bound
                    self._cache.clear()
                self._cache[name] = self._UNKNOWN if user is None else user
            return user

        return self._run(userdb.get_user, name).addCallback(keep)

    def list_users(self) -> Deferred:
        """@return: Deferred[list[UserRecord]], by name."""
        return self._run(userdb.list_users)

    def add_user(self, name: str, password_hash: bytes, now: float, allowed_senders: Iterable[str] = ()) -> Deferred:
        """@return: Deferred[str], the canonical name; fails with L{userdb.UserExists}."""
        return self._write(userdb.add_user, name, password_hash, now, tuple(allowed_senders))

    def set_password(self, name: str, password_hash: bytes, now: float) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser}."""
        return self._write(userdb.set_password, name, password_hash, now)

    def upgrade_password_hash(self, name: str, old_hash: bytes, new_hash: bytes) -> Deferred:
        """@return: Deferred[bool], whether the hash was still C{old_hash} and was replaced."""
        return self._write(userdb.upgrade_password_hash, name, old_hash, new_hash)

    def set_enabled(self, name: str, enabled: bool, now: float) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser}."""
        return self._write(userdb.set_enabled, name, enabled, now)

    def delete_user(self, name: str) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser}."""
        return self._write(userdb.delete_user, name)

    def set_totp(self, name: str, secret: str | None, enabled: bool, now: float) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser}."""
        return self._write(userdb.set_totp, name, secret, enabled, now)

    def set_allowed_senders(self, name: str, senders: Iterable[str], now: float) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser} or ValueError."""
        return self._write(userdb.set_allowed_senders, name, tuple(senders), now)

    def set_backend(self, name: str, backend: str | None, now: float) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser}."""
        return self._write(userdb.set_backend, name, backend, now)

    # -- app passwords ------------------------------------------------------------

    def add_app_password(self, name: str, label: str, digest: str, now: float) -> Deferred:
        """@return: Deferred[int], the id; fails with L{userdb.NoSuchUser} or L{userdb.AppPasswordExists}."""
        return self._write(userdb.add_app_password, name, label, digest, now)

    def revoke_app_password(self, name: str, label: str, now: float | None = None) -> Deferred:
        """@return: Deferred[None]; fails with L{userdb.NoSuchUser} or L{userdb.NoSuchAppPassword}."""
        return self._write(userdb.revoke_app_password, name, label, now)

    def touch_app_password(self, app_id: int, now: float) -> Deferred:
        """@return: Deferred[None]"""
        return self._run(userdb.touch_app_password, app_id, now)

    # -- blacklist ----------------------------------------------------------------

    def add_blacklist(self, network: str, expires: float | None, reason: str, now: float) -> Deferred:
        """@return: Deferred[str], the canonical network; fails with ValueError for a bad one."""
        return self._run(userdb.add_blacklist, network, expires, reason, now)

    def remove_blacklist(self, network: str) -> Deferred:
        """@return: Deferred[bool], whether there was an entry."""
        return self._run(userdb.remove_blacklist, network)

    def list_blacklist(self, now: float) -> Deferred:
        """@return: Deferred[list[BlacklistEntry]], the entries not expired at C{now}."""
        return self._run(userdb.list_blacklist, now)

    def purge_blacklist(self, now: float) -> Deferred:
        """@return: Deferred[int], how many expired entries were deleted."""
        return self._run(userdb.purge_blacklist, now)

    # -- meta ---------------------------------------------------------------------

    def get_meta(self, key: str) -> Deferred:
        """@return: Deferred[str | bytes | None]"""
        return self._run(userdb.get_meta, key)

    def set_meta(self, key: str, value: str | bytes) -> Deferred:
        """@return: Deferred[None]"""
        return self._run(userdb.set_meta, key, value)


__all__ = ["IUserStore", "SQLiteUserStore"]
