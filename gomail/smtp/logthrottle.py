# -*- test-case-name: tests.test_smtp_protocol -*-
"""Bounded logging of repeated refusals: a flood of clients must not flood the log."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class LogThrottle:
    """At most C{per_second} log lines a second; says how many were left out."""

    def __init__(self, clock: IReactorTime, per_second: int) -> None:
        self.clock = clock
        self.per_second = per_second
        self._second = -1
        self._logged = 0
        self._skipped = 0

    def allow(self) -> int | None:
        """None: do not log this one; else log it, with the number left out since the last line."""
        second = int(self.clock.seconds())
        if second != self._second:
            self._second, self._logged = second, 0
        if self._logged >= self.per_second:
            self._skipped += 1
            return None
        self._logged += 1
        skipped, self._skipped = self._skipped, 0
        return skipped
