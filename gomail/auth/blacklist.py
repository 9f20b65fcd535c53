# -*- test-case-name: tests.test_auth_checker -*-
"""The client IP blacklist, read from the user database and kept in memory for a few seconds."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gomail.netaddr import parse_ip


class Blacklist:
    """
    Answers "is this client IP blacklisted?" from the entries in the user
    database (C{gomail blacklist add}), reloading them at most every
    C{refresh} seconds so a check costs no database query; an entry's expiry
    is honoured to the second even between reloads.
    """

    def __init__(self, users: Any, clock: IReactorTime, refresh: float) -> None:
        self.users = users
        self.clock = clock
        self.refresh = refresh
        self._entries: list[tuple[Any, float | None]] = []
        self._loaded_at: float | None = None

    def contains(self, ip: str) -> Deferred:
        """@return: Deferred[bool]; fails when the entries cannot be loaded."""
        return Deferred.fromCoroutine(self.check(ip))

    async def check(self, ip: str) -> bool:
        """L{contains} as a coroutine (no Deferred when the entries are fresh)."""
        now = self.clock.seconds()
        if self._loaded_at is None or now - self._loaded_at >= self.refresh:
            await self.reload()
        address = parse_ip(ip)
        if address is None or not self._entries:
            return False
        return any(address in network and (expires is None or expires > now)
                   for network, expires in self._entries)

    async def reload(self) -> None:
        """Read the entries again (also after an operator change, to apply it at once)."""
        now = self.clock.seconds()
        entries = await self.users.list_blacklist(now)
        self._entries = [(ipaddress.ip_network(e.network, strict=False), e.expires) for e in entries]
        self._loaded_at = now
