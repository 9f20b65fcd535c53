# -*- test-case-name: tests.test_web_monitor -*-
"""
The monitoring and admin routes (Klein): C{/health}, C{/metrics},
C{POST /admin/retry-failed} and C{GET /admin/queue}.

C{/health} keeps the Go relay's JSON shape and makes C{status} honest:
C{fail} (HTTP 503) when the spool cannot take mail, C{degraded} when something
mail depends on is impaired (state store down, smarthosts failing, low disk,
queue near full, entries in the spool's corrupt/), C{ok} otherwise; C{checks} says which check said what.
"""

from __future__ import annotations

import datetime
import os
import uuid
from typing import Any

from klein import Klein
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound

from gomail.metrics import Metrics
from gomail.web.http import json_body

CHECK_TIMEOUT = 5.0
#: How long a disk probe's outcome (free space, the spool's write test) is reused.
PROBE_SECONDS = 1.0
#: The type of what L{generate_latest} writes, as prometheus_client's own
#: C{choose_encoder} labels it. (Its CONTENT_TYPE_LATEST says version=1.0.0
#: since 0.22, a format a scraper asking for 0.0.4 did not ask for.)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MonitorApp:
    """
    The routes, holding their dependencies.

    @param spool: the L{gomail.spool.store.Spool}.
    @param failed: the L{gomail.delivery.failed.FailedStore}.
    @param delivery: the L{gomail.delivery.queue.DeliveryQueue}.
    @param state: the state store (pinged by the health check), or None.
    @param relay: the L{gomail.delivery.relay.RelayAgent} when relaying, or None.
    """

    app = Klein()
    log = Logger()

    def __init__(self, metrics: Metrics, spool: Any, failed: Any, delivery: Any, clock: Any,
                 state: Any = None, relay: Any = None, backends: Any = None,
                 queue_size: int = 1000, low_disk_mb: int = 1024, writer_process: Any = None) -> None:
        self.metrics, self.spool, self.failed, self.delivery = metrics, spool, failed, delivery
        self.clock, self.state, self.relay, self.backends = clock, state, relay, backends
        self.writer_process = writer_process
        self.queue_size, self.low_disk_mb = queue_size, low_disk_mb
        self._probes: dict[str, tuple[float, tuple[bool, Any]]] = {}  # name: (when, (ok, result or error))

    def resource(self) -> Any:
        return self.app.resource()

    # -- health -----------------------------------------------------------------

    @app.route("/health", methods=["GET", "HEAD"])
    async def health(self, request: Any) -> bytes:
        checks: dict[str, dict[str, Any]] = {}
        free_mb = await self._check_disk(checks)
        await self._check_spool(checks)
        await self._check_corrupt(checks)
        self._check_writer(checks)
        await self._check_state(checks)
        self._check_queue(checks)
        self._check_relay(checks)
        self._check_backends(checks)
        failed = await self._failed_count()
        states = [c["status"] for c in checks.values()]
        status = "fail" if "fail" in states else "degraded" if "degraded" in states else "ok"
        stats = self.delivery.stats
        body = {
            "status": status,
            "timestamp": self._timestamp(),
            "details": {
                "disk_space_available_mb": free_mb,
                "queued_emails": self.spool.queued,
                "failed_emails": failed,
                "total_emails_processed": stats.delivered_messages + stats.failed_messages,
                "success_rate": self.metrics.success_rate(),
            },
            "checks": checks,
            "failed_checks": sorted(name for name, c in checks.items() if c["status"] != "ok"),
        }
        return json_body(request, body, 503 if status == "fail" else 200)

    async def _fresh(self, name: str, probe: Any, *args: Any) -> Any:
        """
        C{probe(*args)} run in the spool's I/O pool, its outcome (result or
        error) reused for L{PROBE_SECONDS}: a monitor asking often, or many
        at once, costs the disk one probe a second, not one per request.
        """
        now = self.clock.seconds()
        cached = self._probes.get(name)
        if cached is None or now - cached[0] >= PROBE_SECONDS:
            try:
                outcome: tuple[bool, Any] = (True, await self._timed(self.spool.run(probe, *args)))
            except Exception as e:  # noqa: BLE001 - whatever it is, the check reports it
                outcome = (False, e)
            cached = self._probes[name] = (now, outcome)
        ok, value = cached[1]
        if not ok:
            raise value
        return value

    async def _check_disk(self, checks: dict) -> int | None:
        try:
            free = await self._fresh("disk", _free_bytes, self.spool.path("queue"))
        except Exception as e:  # noqa: BLE001 - whatever it is, the check reports it
            checks["disk"] = {"status": "fail", "error": _describe(e)}
            return None
        free_mb = free // (1024 * 1024)
        if self.spool.min_free_bytes and free < self.spool.min_free_bytes:
            checks["disk"] = {"status": "fail", "free_mb": free_mb, "error": "below spool.minFreeSpaceMB: intake refuses mail"}
        elif free_mb < self.low_disk_mb:
            checks["disk"] = {"status": "degraded", "free_mb": free_mb, "error": "below monitor.lowDiskSpaceMB"}
        else:
            checks["disk"] = {"status": "ok", "free_mb": free_mb}
        return free_mb

    async def _check_spool(self, checks: dict) -> None:
        try:
            await self._fresh("spool", _probe_write, self.spool.path("tmp"))
            checks["spool"] = {"status": "ok"}
        except Exception as e:  # noqa: BLE001 - whatever it is, the check reports it
            checks["spool"] = {"status": "fail", "error": f"spool not writable: {_describe(e)}"}

    async def _check_corrupt(self, checks: dict) -> None:
        """Degraded while corrupt/ holds entries: mail set aside that a human must look at."""
        try:
            count = await self._fresh("corrupt", _count_entries, self.spool.path("corrupt"))
        except Exception as e:  # noqa: BLE001 - whatever it is, the check reports it
            checks["corrupt"] = {"status": "degraded", "error": f"corrupt/ not readable: {_describe(e)}"}
            return
        check: dict[str, Any] = {"status": "degraded" if count else "ok", "entries": count,
                                 "moved_since_start": getattr(self.spool, "corrupt_total", 0)}
        if count:
            check["error"] = (f"{count} queue entries in {self.spool.path('corrupt')} (damaged, incomplete or "
                              "unreadable; not delivered): see the log")
        checks["corrupt"] = check

    def _check_writer(self, checks: dict) -> None:
        process = self.writer_process
        if process is None:
            return
        pid = process.pid
        check = {"status": "ok" if pid is not None else "fail", "pid": pid, "restarts": process.restarts}
        if pid is None:
            check["error"] = "spool writer process not running: intake answers 451 until it is back"
        checks["spool_writer"] = check

    async def _check_state(self, checks: dict) -> None:
        if self.state is None:
            return
        try:
            await self._timed(self.state.ping())
            checks["state_store"] = {"status": "ok"}
        except Exception as e:  # noqa: BLE001 - whatever it is, the check reports it
            checks["state_store"] = {"status": "degraded", "error": _describe(e)}

    def _check_queue(self, checks: dict) -> None:
        queued = self.spool.queued
        status = "degraded" if queued >= 0.9 * self.queue_size else "ok"
        checks["queue"] = {"status": status, "queued": queued, "limit": self.queue_size, **self.delivery.summary()}

    def _check_relay(self, checks: dict) -> None:
        if self.relay is None:
            return
        failing = self.relay.failing()
        checks["smarthost"] = {"status": "degraded" if failing else "ok", "failing": failing}

    def _check_backends(self, checks: dict) -> None:
        if self.backends is None or not self.backends.pools:
            return
        status = self.backends.status()
        down = [b["backend"] for b in status if not b["up"]]
        checks["nginx_backends"] = {"status": "degraded" if down else "ok", "down": down}

    # -- metrics ------------------------------------------------------------------

    @app.route("/metrics", methods=["GET", "HEAD"])
    async def metrics_view(self, request: Any) -> bytes:
        self.metrics.failed_count = await self._failed_count()
        wanted = (request.args.get(b"format") or [b""])[0].decode("ascii", "replace").lower()
        accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()  # bytes name: bytes value
        if wanted == "openmetrics" or (not wanted and "application/openmetrics-text" in accept):
            request.setHeader(b"Content-Type", OPENMETRICS_TYPE.encode())
            return generate_openmetrics(self.metrics.registry)
        if wanted == "prometheus" or (not wanted and "text/plain" in accept):
            request.setHeader(b"Content-Type", PROMETHEUS_TYPE.encode())
            return generate_latest(self.metrics.registry)
        if wanted not in ("", "json"):
            return json_body(request, {"error": "format must be json, prometheus or openmetrics"}, 400)
        return json_body(request, self.metrics.seed_metrics())

    # -- admin --------------------------------------------------------------------

    @app.route("/admin/retry-failed", methods=["POST"])
    async def retry_failed(self, request: Any) -> bytes:
        ids = request.args.get(b"id")
        queue_id = None
        if ids:
            if len(ids) > 1:
                return json_body(request, {"error": "give at most one id"}, 400)
            queue_id = ids[0].decode("ascii", "replace")
            if not _valid_id(queue_id):
                return json_body(request, {"error": "not a queue id"}, 400)
            if not await self.spool.run(os.path.exists, self.failed.path(queue_id)):
                return json_body(request, {"error": "no such failed message", "id": queue_id}, 404)
        # The failed store hands each requeued message to the delivery queue itself.
        count = await self.failed.retry(queue_id)
        self.log.info("admin retry-failed: {count} messages requeued", count=count)
        return json_body(request, {"requeued": count, **({"id": queue_id} if queue_id else {})})

    @app.route("/admin/queue", methods=["GET", "HEAD"])
    async def queue(self, request: Any) -> bytes:
        return json_body(request, {"queued": self.spool.queued, "failed": await self._failed_count(),
                                   **self.delivery.summary()})

    # -- errors -----------------------------------------------------------------------

    @app.handle_errors(NotFound)
    def not_found(self, request: Any, failure: Any) -> bytes:
        return json_body(request, {"error": "not found"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def wrong_method(self, request: Any, failure: Any) -> bytes:
        allowed = ", ".join(getattr(failure.value, "valid_methods", None) or [])
        if allowed:
            request.setHeader(b"Allow", allowed.encode())
        return json_body(request, {"error": "method not allowed", "allowed": allowed}, 405)

    @app.handle_errors(Exception)
    def crashed(self, request: Any, failure: Any) -> bytes:
        self.log.failure("monitor request failed", failure)
        return json_body(request, {"error": "internal error"}, 500)

    # -- helpers -------------------------------------------------------------------------

    async def _failed_count(self) -> int:
        return await self.spool.run(lambda: len(self.failed.ids()))

    def _timed(self, d: Deferred) -> Deferred:
        return d.addTimeout(CHECK_TIMEOUT, self.clock)

    def _timestamp(self) -> str:
        moment = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_bytes(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _count_entries(directory: str) -> int:
    """Queue entries in C{directory} (an id's .eml and .json count once)."""
    return len({os.path.splitext(name)[0] for name in os.listdir(directory)})


def _probe_write(directory: str) -> None:
    """Create, fsync and remove a small file: proves the spool takes writes now."""
    path = os.path.join(directory, f".health-{uuid.uuid4().hex}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def _valid_id(queue_id: str) -> bool:
    return 0 < len(queue_id) <= 64 and all(c.isalnum() or c in "-_." for c in queue_id) and ".." not in queue_id


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__
