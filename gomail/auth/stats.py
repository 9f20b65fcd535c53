# -*- test-case-name: tests.test_auth_checker -*-
"""Authentication counters, read by the metrics endpoint (no label holds a user name)."""

from __future__ import annotations

from collections import Counter


class AuthStats:
    """Attempts by protocol and result, reasons, lockouts, cache hits and latency sums."""

    def __init__(self) -> None:
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.reasons: Counter[str] = Counter()
        self.lockouts: Counter[str] = Counter()
        self.cache_hits = 0
        self.cache_misses = 0
        self.latency_sum = 0.0
        self.observers: list = []  # callables(protocol, result, reason, seconds), e.g. a histogram

    def attempt(self, protocol: str, result: str, reason: str, seconds: float) -> None:
        self.attempts[(protocol, result)] += 1
        self.reasons[reason] += 1
        self.latency_sum += seconds
        for observer in self.observers:
            observer(protocol, result, reason, seconds)

    def lockout(self, what: str) -> None:
        self.lockouts[what] += 1

    def cache(self, hit: bool) -> None:
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1
