# -*- test-case-name: tests.test_backoff -*-
"""When to try a deferred message again: exponential backoff with jitter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """
    The retry schedule (the configuration's C{delivery} section).

    @ivar initial: seconds before the first retry.
    @ivar factor: growth per further attempt.
    @ivar maximum: the longest wait between attempts.
    @ivar jitter: fraction of spread around each delay (0.2: +/-20%), so that
        messages deferred together do not all come back together.
    @ivar max_age: seconds after reception when a message is given up.
    """

    initial: float = 300.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.2
    max_age: float = 5 * 24 * 3600.0


def retry_delay(policy: RetryPolicy, attempts: int, random: Callable[[], float]) -> float:
    """
    Seconds to wait after the C{attempts}-th failed attempt (1 for the first):
    C{initial * factor ** (attempts - 1)}, capped at C{maximum}, spread by
    C{jitter} using C{random()} in [0, 1), and never above C{maximum}.
    """
    # The exponent is bounded: past 64 doublings any sane policy is at its cap.
    base = min(policy.maximum, policy.initial * policy.factor ** min(64, max(0, attempts - 1)))
    spread = 1.0 + policy.jitter * (2.0 * random() - 1.0)
    return min(policy.maximum, base * spread)
