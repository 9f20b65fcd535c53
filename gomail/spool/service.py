# -*- test-case-name: tests.test_service -*-
"""The spool's start-up: prepare and list ``queue/`` before anything listens, recover while it runs."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gomail.deferreds import deferred_coroutine
from gomail.interfaces import IQueueConsumer
from gomail.spool.store import RECOVERY_STEP, Spool


class SpoolService(Service):
    """
    On start: prepare the spool (directories, ``tmp/`` cleanup, the count of
    ``queue/`` that C{queueSize} is checked against) and take one listing of
    ``queue/``; from then on every newly committed message goes to the
    consumer. Its C{startService} Deferred is awaited by the root service, so
    the SMTP listeners open once that is done (seconds even for a million
    queued messages). The listed messages are then read, checked and handed
    to the consumer in the background (L{Spool.recover_entries}): a restart
    with a large queue accepts mail again at once, and delivers what was
    queued as it is read. Stopping waits for the step in progress.
    """

    log = Logger()

    def __init__(self, spool: Spool, consumer: IQueueConsumer | None, recovery_step: int = RECOVERY_STEP) -> None:
        self.spool = spool
        self.consumer = consumer
        #: Queue entries read per hand-off to the I/O pool by the background recovery.
        self.recovery_step = recovery_step
        #: Fires once the background recovery has read every listed entry (or stopped).
        self.recovered: Deferred = succeed(None)
        self._stopping = False

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        super().startService()
        self._stopping = False
        self.spool.prepare()
        entries = await self.spool.list_queue()
        # Without a consumer (no delivery configured) the entries are still checked and set aside if damaged.
        enqueue = self.consumer.enqueue if self.consumer is not None else (lambda envelope: None)
        if self.consumer is not None:
            self.spool.add_listener(self.consumer.enqueue)
        if len(entries) > 1000:
            self.log.info("reading {count} queue entries in the background; accepting mail meanwhile",
                          count=len(entries))
        self.recovered = Deferred.fromCoroutine(self.spool.recover_entries(
            entries, enqueue, self.recovery_step, stopping=lambda: self._stopping))
        self.recovered.addErrback(lambda failure: self.log.failure("spool recovery failed", failure))

    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        return self.recovered
