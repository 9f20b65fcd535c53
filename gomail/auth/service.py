# -*- test-case-name: tests.test_service -*-
"""
Builds the authentication side from the configuration: user database, state
store, CPU pool for bcrypt, blacklist, checker, portal and rate limiter.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.cred.portal import Portal
from twisted.logger import Logger

from gomail.auth.blacklist import Blacklist
from gomail.auth.checker import LoginChecker, ThreadPoolVerifier, make_portal
from gomail.auth.passwords import hash_password
from gomail.auth.sources import AuthSources
from gomail.auth.tickets import LoginTickets, TicketChecker
from gomail.auth.users import SQLiteUserStore
from gomail.configschema import Config
from gomail.deferreds import deferred_coroutine
from gomail.limits.rate import RateLimiter
from gomail.servicekit import PeriodicService, ThreadPoolService
from gomail.state.factory import make_state_store

SECRET_BYTES = 32


def load_or_create_secret(path: str) -> bytes:
    """
    The per-install key of the auth cache's HMAC: read from C{path}, or made
    and written there (mode 0600) on first start. Read once at start-up, before
    the reactor runs.
    """
    try:
        with open(path, "rb") as f:
            secret = f.read()
        if len(secret) >= 16:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
        f.flush()
        os.fsync(f.fileno())
    return secret


@dataclass
class AuthParts:
    """What the protocols need from the authentication side."""

    users: SQLiteUserStore
    state: Any
    authenticator: LoginChecker
    portal: Portal
    rate_limiter: RateLimiter
    cpu: ThreadPoolService
    #: nginx's login tickets for gomail's own IMAP/POP3 listeners (L{gomail.auth.tickets}).
    tickets: LoginTickets | None = None


class AuthService(Service):
    """
    Opens (and migrates) the user database at start, creates the Go relay's
    C{defaultUsername} when it does not exist yet, and closes the database and
    the state store at stop.
    """

    log = Logger()

    def __init__(self, parts: AuthParts, config: Config, clock: Any) -> None:
        self.parts = parts
        self.config = config
        self.clock = clock

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        super().startService()
        users = self.parts.users
        await users.start()
        name, password = self.config.defaultUsername, self.config.defaultPassword
        if name and await users.get_user(name) is None:
            hashed = await self.parts.cpu.run(hash_password, password, self.config.auth.bcryptRounds)
            await users.add_user(name, hashed, self.clock.seconds())
            self.log.info("created the default user from defaultUsername")
        user = await users.get_user(name) if name else None
        if user is not None and not user.allowed_senders and self.config.auth.enforceSenderAddress:
            self.log.warn("the default user {user} (defaultUsername) may send as any address, as the Go relay "
                          "let it; restrict it with: gomail user sender set {user} ADDRESS...", user=user.name)
        try:
            await self.parts.state.ping()
        except Exception as e:  # noqa: BLE001 - any store failure: logged, not fatal
            # Not fatal: intake and delivery work without it; logins answer
            # temporary failures until the store is back.
            self.log.warn("state store not reachable at start: {error}", error=str(e))

    @deferred_coroutine
    async def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        self.parts.users.close()
        close = getattr(self.parts.state, "disconnect", None)
        if close is not None:
            with contextlib.suppress(Exception):  # stopping: a store that fails to close is gone anyway
                await close()


def bcrypt_threads(configured: int, cores: int | None) -> int:
    """
    The size of the bcrypt pool: as configured, or (0) one thread fewer than
    the CPU C{cores} gomail may use, at least one and at most 64, so that the
    event loop always has a core while logins queue for bcrypt (measured:
    /health p99 1.5-2.5 ms with one bcrypt thread on two cores, 6 ms with two).
    """
    return configured or min(64, max(1, (cores or 1) - 1))


def usable_cpus() -> int:
    """
    The CPUs this process may run on: its affinity mask, bounded by a cgroup
    v2 CPU quota (a container's C{--cpus}), not the host's core count.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def build_auth(config: Config, reactor: Any, sources: list[tuple[str, Any]] | None = None,
               runner: Any = None) -> tuple[AuthParts, list[Service]]:
    """
    The authentication parts, and their services in start order: the CPU
    pool, the user database, then the watch for other processes' changes to
    it. (The blacklist needs no timer: a check reloads entries older than
    C{auth.blacklistRefresh}, so an operator's change applies at the first
    check after that, and an idle server asks nothing.)
    """
    cpu = ThreadPoolService(reactor, "gomail-cpu", bcrypt_threads(config.auth.cpuThreads, usable_cpus()))
    users = SQLiteUserStore(config.auth.database, reactor=reactor, refresh=config.auth.userRefresh)
    state = make_state_store(config.redis, reactor)
    blacklist = Blacklist(users, reactor, config.auth.blacklistRefresh)
    secret = load_or_create_secret(config.auth.secretFile)
    authenticator = LoginChecker(users, state, blacklist, ThreadPoolVerifier(reactor, cpu.pool), reactor,
                                  secret, config.auth,
                                  sources=AuthSources(sources, runner) if sources and runner else None)
    tickets = LoginTickets(secret, state, reactor)
    ticket_checker = TicketChecker(tickets, users, authenticator.sources, authenticator.stats)
    parts = AuthParts(users, state, authenticator, make_portal(authenticator, ticket_checker),
                      RateLimiter(state, config.rateLimits), cpu, tickets)
    services: list[Service] = [cpu, AuthService(parts, config, reactor)]
    if users.refresh > 0:
        services.append(PeriodicService("user database watch", users.refresh, users.look_for_changes, reactor))
    return parts, services
