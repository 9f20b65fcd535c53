# -*- test-case-name: tests.test_smtp_auth -*-
"""
The Go relay's rate limits, done properly: sliding windows in the state store.

Per sender (the authenticated user when there is one, else the envelope
sender) C{rateLimits.maxPerHour} and C{maxPerDay}; for the whole system
C{globalMaxPerHour} and C{globalMaxPerDay}. A message is checked at MAIL FROM
and counted when it is accepted (after the 250), so a refused or abandoned
transaction costs nothing. Two sessions checking at the same moment may both
pass and overshoot a limit by the messages in flight; limits are a brake, not
an exact quota.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gomail.configschema import RateLimits
from gomail.state.interface import IStateStore, StateStoreError

HOUR = 3600
DAY = 86400


class RateLimitUnavailable(Exception):
    """The state store could not answer and C{rateLimits.failurePolicy} is "refuse"."""


class RateLimiter:
    """Checks and counts messages against the configured limits."""

    log = Logger()

    def __init__(self, state: IStateStore, settings: RateLimits) -> None:
        self.state = state
        self.settings = settings
        self.hits = 0  # refusals, for the metrics endpoint
        self.store_failures = 0

    def _windows(self, sender_key: str) -> list[tuple[str, int, int]]:
        subject = hashlib.sha256(sender_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        s = self.settings
        return [
            (f"rate:sender:{subject}:hour", HOUR, s.maxPerHour),
            (f"rate:sender:{subject}:day", DAY, s.maxPerDay),
            ("rate:global:hour", HOUR, s.globalMaxPerHour),
            ("rate:global:day", DAY, s.globalMaxPerDay),
        ]

    def allows(self, sender_key: str) -> Deferred:
        """
        Whether one more message from C{sender_key} is within every limit.

        @return: Deferred[bool]; fails with L{RateLimitUnavailable} when the
            store is down and the policy is to refuse.
        """
        return Deferred.fromCoroutine(self._allows(sender_key))

    async def _allows(self, sender_key: str) -> bool:
        if not self.settings.enabled:
            return True
        try:
            for key, window, limit in self._windows(sender_key):
                if await self.state.window_count(key, window) >= limit:
                    self.hits += 1
                    self.log.warn("rate limit exceeded: {limit} messages per {window}",
                                  limit=limit, window="hour" if window == HOUR else "day")
                    return False
        except StateStoreError as e:
            return self._store_failed(e)
        return True

    def count(self, sender_key: str) -> Deferred:
        """Count one accepted message; never fails (a store error is logged)."""
        return Deferred.fromCoroutine(self._count(sender_key))

    async def _count(self, sender_key: str) -> None:
        if not self.settings.enabled:
            return
        try:
            for key, window, _ in self._windows(sender_key):
                await self.state.window_add(key, window)
        except StateStoreError as e:
            self.store_failures += 1
            self.log.warn("could not count a message for rate limits: {error}", error=str(e))

    def _store_failed(self, error: Exception) -> Any:
        self.store_failures += 1
        if self.settings.failurePolicy == "refuse":
            self.log.warn("rate limits unavailable, refusing mail: {error}", error=str(error))
            raise RateLimitUnavailable(str(error))
        self.log.warn("rate limits unavailable, accepting mail unchecked: {error}", error=str(error))
        return True
