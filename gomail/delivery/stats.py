# -*- test-case-name: tests.test_delivery_queue -*-
"""The delivery queue's counters, read by the monitoring endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeliveryStats:
    """Counters for the monitoring endpoints."""

    delivered_messages: int = 0
    deferred_messages: int = 0
    failed_messages: int = 0
    delivered_recipients: int = 0
    deferred_recipients: int = 0
    failed_recipients: int = 0
    bounces: int = 0
    delay_warnings: int = 0
    attempt_seconds_total: float = 0.0
    #: outcomes of finished messages written again after the spool writer failed them
    unrecorded_retries: int = 0
    attempts: int = 0
    #: callables(seconds) told the wall time of each attempt (a latency histogram)
    attempt_observers: list = field(default_factory=list)

    @property
    def average_attempt_ms(self) -> float:
        """Mean wall time of one delivery attempt, in milliseconds (the seed's avg_processing_time_ms)."""
        return 1000.0 * self.attempt_seconds_total / self.attempts if self.attempts else 0.0


__all__ = ["DeliveryStats"]
