"""
Test helpers for the admin app: the real app and resource tree (peer guard,
security headers, every route) over a real SQLite user database, run
synchronously (L{SyncDB}: each interaction in one transaction, as the
pool's thread would), a memory state store and a L{Clock}, asked through
treq's StubTreq (L{tests.webtesting.Browser}).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

import pyotp
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, LogLevelFilterPredicate

from gomail.admin import store
from gomail.admin.app import AdminApp, SecureHeaders
from gomail.admin.context import AdminContext, LoginRateLimit, Sessions
from gomail.admin.login import AdminLogin
from gomail.admin.service import ServerParts
from gomail.admin.sysconfig import SystemConfig
from gomail.auth import passwords, userdb
from gomail.configschema import AdminSettings, Config
from gomail.state.memory import MemoryStateStore
from gomail.web.guard import HostNames
from gomail.web.http import Guarded, PeerAccess
from tests.webtesting import Answer, Browser

ROUNDS = 4
#: The start of every test's clock: a time TOTP codes can be made for.
START = 1_800_000_000.0


class Transaction:
    """
    What adbapi's pool hands an interaction: a cursor's methods through
    C{__getattr__}, so, like adbapi's C{Transaction}, not iterable (code that
    iterates a cursor works on sqlite3's but fails under the real pool).
    """

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class SyncDB:
    """C{runInteraction} on one real SQLite connection, at once: C{fn(cursor, *args)} in one transaction."""

    def __init__(self, path: str) -> None:
        self.conn = userdb.open_connection(path)
        userdb.transact(self.conn, userdb.migrate)

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return maybeDeferred(userdb.transact, self.conn, lambda cursor, *a, **k: fn(Transaction(cursor), *a, **k),
                             *args, **kwargs)

    runInteraction = __call__

    def run(self, fn: Any, *args: Any) -> Any:
        """Run C{fn} now and return its result (for tests' own setup and checks)."""
        return userdb.transact(self.conn, fn, *args)


class SyncUsers:
    """What the admin side uses of the user store: its pool, and forgetting cached records."""

    def __init__(self, db: SyncDB) -> None:
        self.pool = db
        self.forgotten = 0

    def forget(self) -> None:
        self.forgotten += 1


@dataclass
class FakeAuth:
    """The auth parts the admin side uses: the CPU pool (run at once) and the state store."""

    state: Any
    cpu: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class SyncCPU:
    def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return maybeDeferred(fn, *args, **kwargs)


class AdminHarness:
    """
    One admin app for one test: C{clock}, C{db} (a L{SyncDB}), C{state}, the
    C{app}, and a C{browser} over the whole resource tree.

    @param server: overrides of the L{ServerParts} fields (spool, delivery,
        queue, metrics, audit...), all None by default.
    """

    def __init__(self, test: Any, settings: AdminSettings | None = None, peer: str | None = None,
                 config: Config | None = None, **server: Any) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(START)
        directory = test.mktemp()
        os.makedirs(directory)
        self.db = SyncDB(os.path.join(directory, "users.db"))
        test.addCleanup(self.db.conn.close)
        self.state = MemoryStateStore(self.clock)
        config = config or Config()
        self.config = replace(config, admin=settings or config.admin)
        self.users = SyncUsers(self.db)
        parts = {"users": self.users, "auth": FakeAuth(self.state, SyncCPU()), "spool": None, "delivery": None,
                 "queue": None, "metrics": None, "audit": None,
                 "log_levels": LogLevelFilterPredicate(defaultLogLevel=LogLevel.info), **server}
        self.server = ServerParts(**parts)
        self.sysconfig = SystemConfig(self.config, self.db, self.clock, self.server)
        self.login = AdminLogin(self.db, self.server.auth.cpu.run, self.state, self.clock,
                                self.sysconfig.lock_policy, ROUNDS)
        self.ctx = AdminContext(self.config, self.clock, self.db, Sessions(self.db, self.clock, self.config.admin),
                                self.login, self.sysconfig, self.server,
                                LoginRateLimit(self.clock, self.config.admin.loginRateLimit))
        access = PeerAccess(self.config.admin.allowFrom, "", self.config.admin.trustedProxies)
        self.app = AdminApp(self.ctx, access)
        self.resource = SecureHeaders(Guarded(self.app.resource(), access, HostNames(self.config.admin.hostnames),
                                              require_request_header=False, origins=self.config.admin.corsOrigins),
                                      self.config.admin.corsOrigins)
        self.browser = Browser(self.resource, peer)

    # -- setup -------------------------------------------------------------------

    def add_admin(self, name: str, role: str = "superadmin", password: str = "correct horse",
                  totp: bool = False) -> str | None:
        """Add an admin (as the command line does); returns its TOTP secret when C{totp}."""
        self.db.run(store.add_admin, name, passwords.hash_password(password, ROUNDS), role, self.clock.seconds())
        if not totp:
            return None
        secret = passwords.new_totp_secret()
        self.db.run(store.set_totp, name, secret, self.clock.seconds())
        return secret

    def code(self, secret: str, offset: float = 0.0) -> str:
        """The TOTP code of C{secret} now (plus C{offset} seconds)."""
        return pyotp.TOTP(secret).at(self.clock.seconds() + offset)

    def token(self, name: str, role: str = "superadmin", password: str = "correct horse") -> str:
        """Add an admin of C{role} and log it in: its bearer token."""
        self.add_admin(name, role, password)
        answer = self.call("POST", "/api/login", body={"username": name, "password": password})
        assert answer.code == 200, answer.body
        return str(self.json(answer)["token"])

    # -- requests ----------------------------------------------------------------

    def call(self, method: str, path: str, token: str | None = None, body: Any = None, raw: bytes | None = None,
             headers: dict[str, Any] | None = None) -> Answer:
        """One request to the admin app (a bearer C{token}, a JSON C{body} or C{raw} bytes)."""
        sent: dict[str, Any] = {"Host": ["127.0.0.1:8089"], **(headers or {})}
        if token is not None:
            sent["Authorization"] = [f"Bearer {token}"]
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            sent.setdefault("Content-Type", ["application/json"])
        return self.browser.request(method, f"http://127.0.0.1:8089{path}", headers=sent, data=data)

    @staticmethod
    def json(answer: Answer) -> Any:
        return json.loads(answer.body)




