# -*- test-case-name: tests.test_control -*-
"""
The server's side of the control channel: the AMP commands of
L{gomail.control.commands}, applied in the server's own delivery queue and
failed store (L{QueueControl}), served on C{<spool>/control.sock}
(L{ControlService}).
"""

from __future__ import annotations

import os
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

import gomail
from gomail.control import SocketPath
from gomail.control.commands import (
    MAX_IDS,
    BadRequest,
    Delete,
    Flush,
    Retry,
    Status,
    UnknownMessages,
    cut,
    valid_id,
)
from gomail.deferreds import deferred_coroutine
from gomail.delivery.failed import FailedStore, MessageBusy
from gomail.delivery.queue import DeliveryQueue
from gomail.spool.envelope import EnvelopeError
from gomail.spool.integrity import CorruptContent
from gomail.spool.store import Spool

#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT = 300.0
#: How long a starting server waits for an answer on a control socket it finds.
PROBE_TIMEOUT = 5.0


class QueueControl:
    """What the control commands do, in the server's own queue and failed store."""

    log = Logger()

    def __init__(self, spool: Spool, delivery: DeliveryQueue, failed: FailedStore) -> None:
        self.spool, self.delivery, self.failed = spool, delivery, failed
        #: Set when the server stops: a long retry or delete ends between two messages.
        self.stopping = False

    async def status(self) -> dict[str, Any]:
        """The server's pid and version, and its queue by state."""
        summary = self.delivery.summary()
        failed = await self.spool.run(self.failed.ids)
        return {"pid": os.getpid(), "version": gomail.__version__, "spool": os.path.abspath(self.spool.directory),
                "queued": self.delivery.depth, "active": summary["active"], "deferred": summary["deferred"],
                "failed": len(failed)}

    def flush(self) -> dict[str, Any]:
        """Every queued message due now (L{DeliveryQueue.flush})."""
        flushed, active = self.delivery.flush()
        self.log.info("control: flush: {flushed} messages due now ({active} being delivered)",
                      flushed=flushed, active=active)
        return {"flushed": flushed, "active": active}

    async def retry(self, ids: list[str], all: bool) -> dict[str, Any]:
        """Failed messages back into the queue (L{FailedStore.requeue}); unknown ids change nothing."""
        _check(ids, all)
        if all:
            ids = await self.spool.run(self.failed.ids)
        else:
            present = await self.spool.run(self._in_failed, ids)
            _require([i for i in ids if i not in present], "failed/")
        requeued, problems = 0, []
        for queue_id in dict.fromkeys(ids):
            if self.stopping:
                problems.append(f"{queue_id}: not requeued: the server is stopping")
                continue
            try:
                await self.failed.requeue(queue_id)
            except FileNotFoundError:
                continue  # requeued or deleted meanwhile
            except MessageBusy:
                problems.append(f"{queue_id}: being moved right now: try again")
                continue
            except (OSError, ValueError, EnvelopeError, CorruptContent) as e:
                self.log.error("control: could not requeue failed message {queue_id}: {error}",
                               queue_id=queue_id, error=e)
                problems.append(f"could not requeue failed message {queue_id}: {e}")
                continue
            requeued += 1
        self.log.info("control: retry: {count} failed messages requeued", count=requeued)
        return {"requeued": requeued, "problems": cut(problems)}

    async def delete(self, ids: list[str], all_failed: bool, all: bool) -> dict[str, Any]:
        """Messages deleted from the queue (L{DeliveryQueue.delete}) or failed/; unknown ids change nothing."""
        _check(ids, all_failed, all)
        if all or all_failed:
            ids = (self.delivery.queued_ids() if all else []) + await self.spool.run(self.failed.ids)
        else:
            queued = set(self.delivery.queued_ids())
            present = await self.spool.run(self._in_failed, ids)
            _require([i for i in ids if i not in queued and i not in present], "queue/ or failed/")
        deleted, busy = 0, []
        for queue_id in dict.fromkeys(ids):
            if self.stopping:
                busy.append(queue_id)
                continue
            found = False
            try:
                for remove in (self.delivery.delete, self.failed.delete):
                    try:
                        await remove(queue_id)
                        found = True
                    except KeyError:
                        pass  # not there (a crash can leave a message in both places)
            except MessageBusy:
                busy.append(queue_id)
                continue
            deleted += found
        self.log.info("control: delete: {count} messages deleted, {busy} busy", count=deleted, busy=len(busy))
        return {"deleted": deleted, "busy": cut(busy)}

    def _in_failed(self, ids: list[str]) -> set[str]:
        return {i for i in ids if os.path.exists(self.failed.path(i))}


def _check(ids: list[str], *everything: bool) -> None:
    if sum(map(bool, everything)) + bool(ids) != 1:
        raise BadRequest("name message ids or ask for all of them (one of the two)")
    if len(ids) > MAX_IDS:
        raise BadRequest(f"at most {MAX_IDS} ids at once")
    bad = [i for i in ids if not valid_id(i)]
    if bad:
        raise BadRequest(f"not a queue id: {bad[0]!r}")


def _require(missing: list[str], where: str) -> None:
    if missing:
        raise UnknownMessages(f"not in {where}: {', '.join(missing)}")


class ControlProtocol(amp.AMP, TimeoutMixin):
    """One connection of the control channel; closed after C{idle_timeout} seconds of silence."""

    factory: ControlFactory

    def __init__(self, control: QueueControl, clock: Any, idle_timeout: float = IDLE_TIMEOUT) -> None:
        super().__init__()
        self.control = control
        self.callLater = clock.callLater  # type: ignore[method-assign] # TimeoutMixin's timer, on the injected clock
        self.idle_timeout = idle_timeout

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)
        self.setTimeout(self.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        self.factory.connections.discard(self)
        super().connectionLost(reason)

    @Status.responder
    def status(self) -> Deferred:
        return Deferred.fromCoroutine(self.control.status())

    @Flush.responder
    def flush(self) -> dict[str, Any]:
        return self.control.flush()

    @Retry.responder
    def retry(self, ids: list[str], all: bool) -> Deferred:
        return Deferred.fromCoroutine(self.control.retry(ids, all))

    @Delete.responder
    def delete(self, ids: list[str], all_failed: bool, all: bool) -> Deferred:
        return Deferred.fromCoroutine(self.control.delete(ids, all_failed, all))


class ControlFactory(Factory):
    """Builds a L{ControlProtocol} per connection and keeps them, to close them at stop."""

    noisy = False

    def __init__(self, control: QueueControl, clock: Any) -> None:
        self.control, self.clock = control, clock
        self.connections: set[ControlProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlProtocol:  # type: ignore[override]
        protocol = ControlProtocol(self.control, self.clock)
        protocol.factory = self
        return protocol


class ControlSocketError(Exception):
    """The control socket cannot be served (the text says why)."""


class ControlService(Service):
    """
    Serves the control channel on C{<spool>/control.sock}, mode 0600 (the
    server's user only). Started after the spool is recovered and the
    delivery queue runs; stopped before them. A socket file left by a server
    that died is removed only if nothing answers on it.
    """

    log = Logger()

    def __init__(self, reactor: Any, control: QueueControl) -> None:
        self.reactor = reactor
        self.control = control
        self.factory = ControlFactory(control, reactor)
        self._path: SocketPath | None = None
        self._port: Any = None

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        super().startService()
        self.control.stopping = False
        path = self._path = SocketPath(self.control.spool.directory)
        try:
            mode = os.lstat(path.real).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise ControlSocketError(f"{path.real} exists and is not a socket: move it away")
            if await self._answers(path.address):
                raise ControlSocketError(f"another process answers on {path.real} "
                                         f"(is another gomail running on this spool?)")
            os.unlink(path.address)
            self.log.info("removed a stale control socket {path} (nothing answered on it)", path=path.real)
        self._port = self.reactor.listenUNIX(path.address, self.factory, mode=0o600)
        self.log.info("control channel on {path}", path=path.real)

    async def _answers(self, address: str) -> bool:
        endpoint = UNIXClientEndpoint(self.reactor, address, timeout=PROBE_TIMEOUT)
        try:
            protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        except ConnectionRefusedError:
            return False
        except TimeoutError:
            return True  # a listener whose backlog is full: alive
        except ConnectError as e:
            raise ControlSocketError(f"cannot tell whether anything answers on {self._real()}: {e}") from None
        protocol.transport.abortConnection()
        return True

    def _real(self) -> str:
        return self._path.real if self._path is not None else self.control.spool.directory

    @deferred_coroutine
    async def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        self.control.stopping = True
        port, self._port = self._port, None
        for connection in list(self.factory.connections):
            connection.transport.abortConnection()  # type: ignore[union-attr]
        if port is not None:
            await port.stopListening()  # removes the socket file
        if self._path is not None:
            self._path.close()
            self._path = None


__all__ = ["ControlFactory", "ControlProtocol", "ControlService", "ControlSocketError", "QueueControl"]
