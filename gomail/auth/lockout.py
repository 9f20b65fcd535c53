# -*- test-case-name: tests.test_auth_lockout -*-
"""
Who is locked out, and who is slowed down, after failed logins.

The model (README, "Users and authentication"):

- B{(user, client IP)}: C{auth.maxFailAttempts} failures of one user from one
  client IP within C{auth.failTTL} seconds lock that pair for C{auth.lockTTL}
  seconds (MailGateway's policy, applied to the pair instead of the user).
- B{client IP}: C{auth.maxFailAttemptsPerIP} failures from one client IP, for
  any users, within C{auth.failTTL} seconds lock that IP for C{auth.lockTTL}.
- B{user, across IPs}: C{auth.userSlowdownAttempts} failures of one user from
  any IPs within C{auth.userSlowdownWindow} seconds put that user in a
  slowdown: each further failure is answered only after
  C{auth.userSlowdownDelay} seconds. A slowdown never refuses a login.

Why: a lock keyed on the user alone let anyone lock a user out everywhere
with a few wrong passwords. Keyed on the pair, the guesser locks out only
itself; the IP lock stops one address from guessing many users; and a
guesser spread over many addresses is slowed for that one user, while the
user's own right password (and app passwords) keep working.

Keys hold only hashes of user names and addresses. The pair keys start with
the user's hash (C{auth:lock:pair:<user>:<ip>}) so that C{gomail user unlock}
can find every pair of one user (L{pair_pattern}).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from twisted.logger import Logger

from gomail.auth.stats import AuthStats
from gomail.configschema import AuthSettings
from gomail.netaddr import ip_text
from gomail.state.interface import IStateStore, StateStoreError

#: The kinds of keys this module writes (C{auth:<kind>:...}).
LOCK_PAIR, FAIL_PAIR = "lock:pair", "fail:pair"
LOCK_IP, FAIL_IP = "lock:ip", "fail:ip"
FAIL_USER = "fail:user"


def _digest(subject: str) -> str:
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@functools.lru_cache(maxsize=8192)  # the same users and client IPs at every login
def state_key(kind: str, subject: str) -> str:
    """The state store key of C{kind} for C{subject} (a user name, an IP): hashed, never in clear."""
    return f"auth:{kind}:{_digest(subject)}"


@functools.lru_cache(maxsize=8192)
def pair_key(kind: str, name: str, ip: str) -> str:
    """The key of C{kind} for the pair (user C{name}, client C{ip})."""
    return f"auth:{kind}:{_digest(name)}:{_digest(ip)}"


def pair_pattern(kind: str, name: str) -> str:
    """A glob matching every L{pair_key} of C{kind} for user C{name} (hex digests: no glob characters)."""
    return f"auth:{kind}:{_digest(name)}:*"


def client_ip(ip: str | None) -> str:
    """The form a client address is keyed under: canonical for an IP, as given otherwise, '' for none."""
    return ip_text(ip) or ip or ""


class Lockout:
    """The locks and counters of the model above, in an L{IStateStore}."""

    log = Logger()

    def __init__(self, state: IStateStore, settings: AuthSettings, stats: AuthStats) -> None:
        self.state: Any = state  # an IStateStore (Any: mypy reads zope interfaces' methods wrongly)
        self.settings = settings
        self.stats = stats

    async def locked(self, name: str, ip: str) -> bool:
        """
        Whether the client IP, or the pair (user C{name}, C{ip}), is locked.
        @raise StateStoreError: the store cannot answer.
        """
        if ip and await self.state.get(state_key(LOCK_IP, ip)) is not None:
            return True
        return await self.state.get(pair_key(LOCK_PAIR, name, ip)) is not None

    async def failed(self, name: str | None, ip: str) -> float:
        """
        Count a failed login of user C{name} (None: no valid user name) from
        C{ip}, locking what reached its limit.

        @return: the seconds to wait before answering the failure (the
            user's slowdown), 0 for none. Never raises: a failure that cannot
            be counted stays a failure (logged).
        """
        settings = self.settings
        try:
            if ip:
                failures = await self.state.incr(state_key(FAIL_IP, ip), settings.failTTL)
                if failures >= settings.maxFailAttemptsPerIP:
                    await self._lock(state_key(LOCK_IP, ip), "client IP", ip)
            if name is None:
                return 0.0
            failures = await self.state.incr(pair_key(FAIL_PAIR, name, ip), settings.failTTL)
            if failures >= settings.maxFailAttempts:
                await self._lock(pair_key(LOCK_PAIR, name, ip), "user-ip", ip)
            failures = await self.state.incr(state_key(FAIL_USER, name), settings.userSlowdownWindow)
        except StateStoreError as e:
            self.log.warn("could not count a failed login: {error}", error=str(e))
            return 0.0
        if failures < settings.userSlowdownAttempts or not settings.userSlowdownDelay:
            return 0.0
        if failures == settings.userSlowdownAttempts:
            self.stats.lockout("user-slowdown")
            self.log.warn("user slowed down: {count} failed logins from any clients within {window} s, "
                          "failures now answered after {delay} s", count=failures,
                          window=settings.userSlowdownWindow, delay=settings.userSlowdownDelay)
        return float(settings.userSlowdownDelay)

    async def succeeded(self, name: str, ip: str) -> None:
        """
        A login of C{name} from C{ip} succeeded: that pair's failures are
        forgotten. The user's count across IPs is not: one right password says
        nothing about the guesses made from elsewhere.
        @raise StateStoreError: the store cannot answer.
        """
        await self.state.delete(pair_key(FAIL_PAIR, name, ip))

    async def _lock(self, key: str, what: str, ip: str) -> None:
        if await self.state.add(key, b"1", self.settings.lockTTL):
            self.stats.lockout(what)
            if what == "user-ip":
                self.log.warn("user locked out for {ttl} s on client IP {ip} after repeated failed logins",
                              ttl=self.settings.lockTTL, ip=ip or "(none)")
            else:
                self.log.warn("client IP {ip} locked out for {ttl} s after repeated failed logins",
                              ip=ip, ttl=self.settings.lockTTL)


def unlock_keys(name: str, ip: str | None) -> tuple[list[str], list[str]]:
    """
    What C{gomail user unlock} removes for user C{name}: the keys, and the
    globs of keys to find first. With C{ip}, that pair's lock and failures;
    without, every pair of the user. Both clear the user's count across IPs
    (the slowdown). The client IP's own lock is not touched: it guards every
    user against that address.
    """
    keys = [state_key(FAIL_USER, name)]
    if ip is not None:
        address = client_ip(ip)
        return keys + [pair_key(LOCK_PAIR, name, address), pair_key(FAIL_PAIR, name, address)], []
    return keys, [pair_pattern(LOCK_PAIR, name), pair_pattern(FAIL_PAIR, name)]


__all__ = ["Lockout", "client_ip", "pair_key", "pair_pattern", "state_key", "unlock_keys"]
