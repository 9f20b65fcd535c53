# -*- test-case-name: tests.test_admin_api -*-
"""What the admin routes work on: the running server's parts, and the admin side's own stores."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from gomail.admin import sessions as session_rows
from gomail.admin.login import AdminLogin
from gomail.admin.sessions import NewSession, Session
from gomail.admin.sysconfig import SystemConfig
from gomail.configschema import AdminSettings, Config


class Sessions:
    """The session rows (L{gomail.admin.sessions}) through the database thread, with the clock and TTLs."""

    def __init__(self, db: Any, clock: Any, settings: AdminSettings) -> None:
        self.db, self.clock, self.settings = db, clock, settings

    def find(self, token: str) -> Any:
        """@return: Deferred[Session | None]"""
        return self.db(session_rows.find_session, token, self.clock.seconds())

    def open(self, admin: Any, kind: str, client_ip: str) -> Any:
        """@return: Deferred[NewSession]"""
        return self.db(session_rows.create_session, admin, kind, client_ip, self.clock.seconds(),
                       self.settings.sessionTTL, self.settings.refreshTTL)

    def refresh(self, refresh_token: str, client_ip: str) -> Any:
        """@return: Deferred[NewSession | None]"""
        return self.db(session_rows.refresh_session, refresh_token, client_ip, self.clock.seconds(),
                       self.settings.sessionTTL, self.settings.refreshTTL)

    def end(self, session: Session) -> Any:
        return self.db(session_rows.end_session, session.token_hash)

    def purge(self) -> Any:
        return self.db(session_rows.purge_sessions, self.clock.seconds())


class LoginRateLimit:
    """
    At most C{per_minute} login requests per client IP in any 60 s (a sliding
    window in memory; at most C{MAX_CLIENTS} addresses are tracked, the
    oldest forgotten first).
    """

    MAX_CLIENTS = 10_000
    WINDOW = 60.0

    def __init__(self, clock: Any, per_minute: int) -> None:
        self.clock, self.per_minute = clock, per_minute
        self._hits: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def allow(self, ip: str) -> float:
        """0 when C{ip} may try now (and counts the try), else the seconds to wait."""
        now = self.clock.seconds()
        hits = self._hits.pop(ip, None) or collections.deque()
        while hits and hits[0] <= now - self.WINDOW:
            hits.popleft()
        self._hits[ip] = hits
        if len(self._hits) > self.MAX_CLIENTS:
            self._hits.popitem(last=False)
        if len(hits) >= self.per_minute:
            return max(1.0, hits[0] + self.WINDOW - now)
        hits.append(now)
        return 0.0


@dataclass
class AdminContext:
    """
    Everything the routes use. C{db} runs C{fn(cursor, ...)} in the user
    database's thread; C{server} is the running server's parts (spool,
    delivery, auth, metrics, audit log...: L{gomail.admin.service.ServerParts}).
    """

    config: Config
    clock: Any
    db: Any
    sessions: Sessions
    login: AdminLogin
    sysconfig: SystemConfig
    server: Any
    rate_limit: LoginRateLimit
    extra: dict[str, Any] = field(default_factory=dict)

    async def write(self, fn: Any, *args: Any) -> Any:
        """
        Run a change to the user database (C{fn(cursor, ...)}, in one
        transaction) and make the server forget the user records it cached,
        before and after: the store notices other processes' commits, not its
        own connection's.
        """
        users = self.server.users
        users.forget()
        try:
            return await self.db(fn, *args)
        finally:
            users.forget()


__all__ = ["AdminContext", "LoginRateLimit", "NewSession", "Sessions"]
