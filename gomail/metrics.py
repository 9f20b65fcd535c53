# -*- test-case-name: tests.test_web_monitor -*-
"""
One Prometheus registry for the whole server, and the Go relay's JSON views.

Counters live where the work happens (L{DeliveryStats}, L{SMTPServer},
L{AuthStats}, L{RateLimiter}); a collector reads them at scrape time, so the hot
paths only add to plain integers. Latencies go to real histograms through the
observer hooks those objects offer. No label ever carries a user name, an
address or a password: labels are protocols, results, reasons and states.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import gomail

DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
AUTH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """
    The registry and its sources. Any source may be None (a part that is not
    configured); C{failed_count} is refreshed by the HTTP views before they read
    it, since counting the failed store touches the disk.
    """

    def __init__(self, smtp: Any = None, delivery: Any = None, auth: Any = None, rate_limiter: Any = None,
                 writer_process: Any = None) -> None:
        self.smtp, self.delivery, self.auth, self.rate_limiter = smtp, delivery, auth, rate_limiter
        self.writer_process = writer_process
        self.failed_count = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.delivery_latency = Histogram(
            "gomail_delivery_attempt_seconds", "Wall time of one delivery attempt",
            buckets=DELIVERY_BUCKETS, registry=self.registry)
        self.auth_latency = Histogram(
            "gomail_auth_check_seconds", "Time to answer one authentication attempt",
            ["protocol"], buckets=AUTH_BUCKETS, registry=self.registry)
        self._auth_children: dict[str, Any] = {}
        if delivery is not None:
            delivery.stats.attempt_observers.append(self.delivery_latency.observe)
        if auth is not None:
            auth.stats.observers.append(self._observe_auth)
        self.registry.register(_Collector(self))

    def _observe_auth(self, protocol: str, result: str, reason: str, seconds: float) -> None:
        # labels() takes a lock and builds a key at every call: keep each protocol's child
        child = self._auth_children.get(protocol)
        if child is None:
            child = self._auth_children[protocol] = self.auth_latency.labels(protocol)
        child.observe(seconds)

    # -- the Go relay's JSON ------------------------------------------------------

    def seed_metrics(self) -> dict[str, Any]:
        """The Go relay's C{/metrics} JSON."""
        stats = self.delivery.stats if self.delivery is not None else None
        delivered = stats.delivered_messages if stats else 0
        failed = stats.failed_messages if stats else 0
        return {
            "total_emails": self.smtp.received_messages if self.smtp is not None else 0,
            "successful_emails": delivered,
            "failed_emails": failed,
            "total_recipients": self.smtp.received_recipients if self.smtp is not None else 0,
            "avg_processing_time_ms": round(stats.average_attempt_ms, 1) if stats else 0.0,
        }

    def corrupt_total(self) -> int:
        """Queue entries the spool moved to corrupt/ since start (damaged, incomplete, unreadable)."""
        spool = getattr(self.delivery, "spool", None)
        return getattr(spool, "corrupt_total", 0)

    def success_rate(self) -> float:
        """Percentage of finished messages that were delivered (100 when none finished yet)."""
        stats = self.delivery.stats if self.delivery is not None else None
        if stats is None:
            return 100.0
        finished = stats.delivered_messages + stats.failed_messages
        return round(100.0 * stats.delivered_messages / finished, 2) if finished else 100.0


class _Collector:
    """Reads the live counters at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list:
        return []  # families are only known at collect time

    def collect(self) -> Any:
        m = self.metrics
        info = GaugeMetricFamily("gomail_build_info", "gomail version", labels=["version"])
        info.add_metric([gomail.__version__], 1)
        yield info
        if m.smtp is not None:
            yield from self._smtp(m.smtp)
        if m.delivery is not None:
            yield from self._delivery(m.delivery)
        yield CounterMetricFamily("gomail_spool_corrupt",
                                  "Queue entries moved to corrupt/ (damaged content, incomplete or unreadable)",
                                  value=m.corrupt_total())
        failed = GaugeMetricFamily("gomail_failed_store_messages", "Messages in the failed store")
        failed.add_metric([], m.failed_count)
        yield failed
        if m.rate_limiter is not None:
            yield CounterMetricFamily("gomail_rate_limit_hits", "Messages refused by rate limits",
                                      value=m.rate_limiter.hits)
            yield CounterMetricFamily("gomail_rate_limit_store_failures",
                                      "Rate-limit checks the state store could not answer",
                                      value=m.rate_limiter.store_failures)
        if m.auth is not None:
            yield from self._auth(m.auth.stats)
        if m.writer_process is not None:
            up = GaugeMetricFamily("gomail_spool_writer_up", "Whether the spool writer process is running (1) or not (0)")
            up.add_metric([], 1 if m.writer_process.pid is not None else 0)
            yield up
            yield CounterMetricFamily("gomail_spool_writer_restarts", "Spool writer processes replaced after dying",
                                      value=m.writer_process.restarts)

    def _smtp(self, smtp: Any) -> Any:
        yield CounterMetricFamily("gomail_messages_received", "Messages accepted (250) by SMTP",
                                  value=smtp.received_messages)
        yield CounterMetricFamily("gomail_recipients_received", "Recipients of accepted messages",
                                  value=smtp.received_recipients)
        yield CounterMetricFamily("gomail_smtp_sessions", "SMTP sessions (connections refused, or whose client sent "
                                  "something)", value=smtp.sessions_total)
        yield CounterMetricFamily("gomail_smtp_probes", "SMTP connections closed without a byte from the client "
                                  "(TCP health checks)", value=smtp.probes_total)
        open_ = GaugeMetricFamily("gomail_smtp_sessions_open", "SMTP sessions open now")
        open_.add_metric([], len(smtp.sessions))
        yield open_
        rejections = CounterMetricFamily("gomail_smtp_rejections", "SMTP refusals by reason", labels=["reason"])
        for reason, count in sorted(smtp.rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections

    def _delivery(self, delivery: Any) -> Any:
        stats = delivery.stats
        messages = CounterMetricFamily("gomail_messages", "Messages by delivery outcome", labels=["outcome"])
        recipients = CounterMetricFamily("gomail_recipients", "Recipients by delivery outcome", labels=["outcome"])
        for outcome, m_count, r_count in (
                ("delivered", stats.delivered_messages, stats.delivered_recipients),
                ("deferred", stats.deferred_messages, stats.deferred_recipients),
                ("failed", stats.failed_messages, stats.failed_recipients)):
            messages.add_metric([outcome], m_count)
            recipients.add_metric([outcome], r_count)
        messages.add_metric(["bounced"], stats.bounces)
        messages.add_metric(["delay_warned"], stats.delay_warnings)
        yield messages
        yield recipients
        summary = delivery.summary()
        depth = GaugeMetricFamily("gomail_queue_messages", "Queued messages by state", labels=["state"])
        for state in ("new", "active", "deferred"):
            depth.add_metric([state], summary[state])
        yield depth
        unrecorded = GaugeMetricFamily("gomail_queue_unrecorded_messages",
                                       "Finished messages whose outcome the spool writer failed to write, kept "
                                       "in the queue until it does (nothing is sent again)")
        unrecorded.add_metric([], getattr(delivery, "unrecorded", 0))
        yield unrecorded
        oldest = GaugeMetricFamily("gomail_queue_oldest_message_age_seconds", "Age of the oldest queued message")
        oldest.add_metric([], summary["oldest_age_seconds"])
        yield oldest
        relay = getattr(getattr(delivery, "router", None), "relay", None)
        if relay is not None:
            yield CounterMetricFamily("gomail_relay_possible_duplicates",
                                      "Final dots sent to a smarthost whose reply never came (the message may have "
                                      "been delivered, and was retried)", value=relay.possible_duplicates)
            sessions = CounterMetricFamily("gomail_relay_sessions", "Outgoing SMTP sessions opened, by TLS state",
                                           labels=["tls"])
            for state in ("verified", "unverified", "none"):
                sessions.add_metric([state], dict(getattr(relay, "tls_sessions", {})).get(state, 0))
            yield sessions

    def _auth(self, stats: Any) -> Any:
        attempts = CounterMetricFamily("gomail_auth_attempts", "Authentication attempts",
                                       labels=["protocol", "result"])
        for (protocol, result), count in sorted(stats.attempts.items()):
            attempts.add_metric([protocol, result], count)
        yield attempts
        reasons = CounterMetricFamily("gomail_auth_outcomes", "Authentication outcomes by reason", labels=["reason"])
        for reason, count in sorted(stats.reasons.items()):
            reasons.add_metric([reason], count)
        yield reasons
        lockouts = CounterMetricFamily("gomail_auth_lockouts", "Lockouts started", labels=["kind"])
        for kind, count in sorted(stats.lockouts.items()):
            lockouts.add_metric([kind.replace("client IP", "ip")], count)
        yield lockouts
        yield CounterMetricFamily("gomail_auth_cache_hits", "Password checks answered by the auth cache",
                                  value=stats.cache_hits)
        yield CounterMetricFamily("gomail_auth_cache_misses", "Password checks that ran bcrypt",
                                  value=stats.cache_misses)
        total = stats.cache_hits + stats.cache_misses
        ratio = GaugeMetricFamily("gomail_auth_cache_hit_ratio", "Share of password checks served by the cache")
        ratio.add_metric([], stats.cache_hits / total if total else 0.0)
        yield ratio
