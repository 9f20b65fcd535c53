# -*- test-case-name: tests.test_state -*-
"""
An in-process L{IStateStore}: for a single gomail process, and for tests.

Time is read from the clock given to the store (a L{task.Clock} in tests), so
expiry can be driven without waiting. Expired entries are purged when they are
touched, and every L{MemoryStateStore.SWEEP_EVERY} operations a sweep drops the
ones nobody touches again, so keys seen once (a scanner's IP) do not pile up.
"""

from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from gomail.state.interface import IStateStore, StateStoreError


def whole_seconds(ttl: int) -> int:
    """C{ttl} as a positive whole number of seconds; L{ValueError} otherwise (a caller's bug)."""
    seconds = int(ttl)
    if seconds != ttl or seconds < 1:
        raise ValueError(f"a TTL is a whole number of seconds >= 1, not {ttl!r}")
    return seconds


def positive_window(window: float) -> float:
    """C{window} in seconds, which must be positive; L{ValueError} otherwise."""
    if not window > 0:
        raise ValueError(f"a window is a positive number of seconds, not {window!r}")
    return float(window)


@implementer(IStateStore)
class MemoryStateStore:
    """
    Counters, TTL values and sliding-window logs in dictionaries.

    @ivar SWEEP_EVERY: how many operations pass between two sweeps of expired entries.
    """

    SWEEP_EVERY = 1000

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        # key -> (value, expiry time)
        self._values: dict[str, tuple[bytes, float]] = {}
        # key -> (event times, oldest first; expiry time)
        self._logs: dict[str, tuple[deque[float], float]] = {}
        self._operations = 0

    def __len__(self) -> int:
        """How many keys are held, expired ones not yet purged included."""
        return len(self._values) + len(self._logs)

    def _now(self) -> float:
        """The current time; counts an operation and sweeps when it is time to."""
        now = self.clock.seconds()
        self._operations += 1
        if self._operations >= self.SWEEP_EVERY:
            self._operations = 0
            self.sweep(now)
        return now

    def sweep(self, now: float | None = None) -> None:
        """Drop every expired value and log."""
        if now is None:
            now = self.clock.seconds()
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]
        for key in [k for k, (_, expires) in self._logs.items() if expires <= now]:
            del self._logs[key]

    def _value(self, key: str, now: float) -> tuple[bytes, float] | None:
        entry = self._values.get(key)
        if entry is not None and entry[1] <= now:
            del self._values[key]
            return None
        return entry

    def incr(self, key: str, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)
        now = self._now()
        entry = self._value(key, now)
        if entry is None:
            count, expires = 1, now + seconds
        else:
            try:
                count = int(entry[0]) + 1
            except ValueError:
                return defer.fail(StateStoreError("incr: the key does not hold a counter"))
            expires = entry[1]
        self._values[key] = (b"%d" % count, expires)
        return defer.succeed(count)

    def get(self, key: str) -> defer.Deferred:
        entry = self._value(key, self._now())
        return defer.succeed(None if entry is None else entry[0])

    def set(self, key: str, value: bytes, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)
        self._values[key] = (bytes(value), self._now() + seconds)
        return defer.succeed(None)

    def add(self, key: str, value: bytes, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)
        now = self._now()
        if self._value(key, now) is not None:
            return defer.succeed(False)
        self._values[key] = (bytes(value), now + seconds)
        return defer.succeed(True)

    def advance(self, key: str, value: int, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)
        now = self._now()
        entry = self._value(key, now)
        if entry is not None:
            try:
                current = int(entry[0])
            except ValueError:
                return defer.fail(StateStoreError("advance: the key does not hold a number"))
            if current >= value:
                return defer.succeed(False)
        self._values[key] = (b"%d" % value, now + seconds)
        return defer.succeed(True)

    def delete(self, *keys: str) -> defer.Deferred:
        self._now()
        for key in keys:
            self._values.pop(key, None)
            self._logs.pop(key, None)
        return defer.succeed(None)

    def _log(self, key: str, window: float, now: float) -> deque[float] | None:
        """The events of C{key} newer than C{now - window}, or None when there are none."""
        entry = self._logs.get(key)
        if entry is None:
            return None
        events, expires = entry
        cutoff = now - window
        while events and events[0] <= cutoff:
            events.popleft()
        if not events or expires <= now:
            del self._logs[key]
            return None
        return events

    def window_count(self, key: str, window: float) -> defer.Deferred:
        window = positive_window(window)
        events = self._log(key, window, self._now())
        return defer.succeed(0 if events is None else len(events))

    def window_add(self, key: str, window: float) -> defer.Deferred:
        window = positive_window(window)
        now = self._now()
        events = self._log(key, window, now)
        if events is None:
            events = deque()
        events.append(now)
        self._logs[key] = (events, now + window)
        return defer.succeed(len(events))

    def ping(self) -> defer.Deferred:
        return defer.succeed(None)

    def disconnect(self) -> defer.Deferred:
        """Nothing to close; here so both stores stop the same way."""
        return defer.succeed(None)


__all__ = ["MemoryStateStore", "positive_window", "whole_seconds"]
