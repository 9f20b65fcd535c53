# -*- test-case-name: tests.test_admin_dashboard -*-
"""
The dashboard's mail figures (C{GET /api/dashboard}): messages received,
delivered, deferred and failed, and the queue depth. They live in the running
server's memory (SMTP's and the delivery queue's counters), not in the
database, so L{ServerSampler} reads them every L{SAMPLE_SECONDS} into a
bounded ring buffer: a day at one sample a minute (L{CAPACITY} samples, the
oldest forgotten first). Each sample holds what the counters grew by since
the one before, and the queue depth then.

A server started less than a day ago has no figures before its start: those
steps are None, as are the figures of parts that are not there (no SMTP
listener, no delivery queue, as in tests).
"""

from __future__ import annotations

import collections
from typing import Any, NamedTuple

from gomail.admin.stats import Window
from gomail.servicekit import PeriodicService

SAMPLE_SECONDS = 60.0
#: A day of samples, one a minute.
CAPACITY = 1440
#: The counters, in a sample's order (the series names are C{messages_<name>}).
COUNTERS = ("received", "delivered", "deferred", "failed")
#: Where L{sampler_of} keeps the sampler (in C{AdminContext.extra}).
SAMPLER_KEY = "dashboard.sampler"


class Reading(NamedTuple):
    """The counters (since the server started) and the queue depth at one time; None: no such part."""

    received: int | None
    delivered: int | None
    deferred: int | None
    failed: int | None
    depth: int | None


class Sample(NamedTuple):
    """What each counter grew by since the sample before (C{growth}, in L{COUNTERS} order), at C{time}."""

    time: float
    growth: tuple[int | None, ...]
    depth: int | None


def read(server: Any) -> Reading:
    """The counters of C{server} (L{gomail.admin.service.ServerParts}; any part may be None) now."""
    smtp = getattr(getattr(server, "metrics", None), "smtp", None)
    delivery = getattr(server, "delivery", None)
    received = smtp.received_messages if smtp is not None else None
    if delivery is None:
        return Reading(received, None, None, None, None)
    stats = delivery.stats
    return Reading(received, stats.delivered_messages, stats.deferred_messages, stats.failed_messages,
                   delivery.depth)


def _growth(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    # A counter that went down was started again (a new part after a reload): all of it is new.
    return after - before if after >= before else after


class ServerSampler:
    """
    Samples the server's counters (L{sample}, every L{SAMPLE_SECONDS} by
    L{service}) and turns the samples into the dashboard's series (L{series}).
    """

    def __init__(self, server: Any, clock: Any, capacity: int = CAPACITY) -> None:
        self.server, self.clock = server, clock
        self.samples: collections.deque[Sample] = collections.deque(maxlen=capacity)
        self._last: Reading | None = None

    def _since_last(self, now: Reading) -> tuple[int | None, ...]:
        if self._last is None:
            # The first reading is the baseline: what came before it is not known to be recent.
            return (None,) * len(COUNTERS)
        return tuple(_growth(b, a) for b, a in zip(self._last[:4], now[:4], strict=True))

    def sample(self) -> None:
        """Take one sample now."""
        now = read(self.server)
        self.samples.append(Sample(self.clock.seconds(), self._since_last(now), now.depth))
        self._last = now

    def service(self) -> PeriodicService:
        """The service taking a sample every L{SAMPLE_SECONDS} (the first at its start)."""
        return PeriodicService("admin dashboard sampling", SAMPLE_SECONDS, self.sample, self.clock)

    def series(self, win: Window) -> dict[str, Any]:
        """
        The C{messages_*} series (what the counters grew by in each step) and
        C{queue_depth} (the last depth seen in each step) of C{win}, with the
        growth since the last sample in the step in progress; and their
        C{totals} over the window (the queue depth: now).
        """
        live = read(self.server)
        samples = [*self.samples, Sample(win.now, self._since_last(live), live.depth)]
        grown: list[list[int | None]] = [[None] * win.points for _ in COUNTERS]
        depth: list[int | None] = [None] * win.points
        for sample in samples:
            index = win.index(sample.time)
            if index is None:
                continue
            for values, growth in zip(grown, sample.growth, strict=True):
                if growth is not None:
                    values[index] = (values[index] or 0) + growth
            if sample.depth is not None:
                depth[index] = sample.depth
        series: dict[str, Any] = {f"messages_{name}": values for name, values in zip(COUNTERS, grown, strict=True)}
        series["queue_depth"] = depth
        totals: dict[str, Any] = {
            f"messages_{name}": None if all(v is None for v in values) else sum(v or 0 for v in values)
            for name, values in zip(COUNTERS, grown, strict=True)}
        totals["queue_depth"] = live.depth
        return {"series": series, "totals": totals}


def sampler_of(ctx: Any) -> ServerSampler:
    """The admin context's sampler (made on first use: then it only knows the counters' growth since)."""
    sampler: ServerSampler | None = ctx.extra.get(SAMPLER_KEY)
    if sampler is None:
        sampler = ctx.extra[SAMPLER_KEY] = ServerSampler(ctx.server, ctx.clock)
    return sampler


__all__ = ["CAPACITY", "COUNTERS", "SAMPLER_KEY", "SAMPLE_SECONDS", "Reading", "Sample", "ServerSampler", "read",
           "sampler_of"]
