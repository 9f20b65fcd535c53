# -*- test-case-name: tests.test_service -*-
"""The spool's start-up: prepare and recover before anything listens."""

from __future__ import annotations

from twisted.application.service import Service

from gomail.deferreds import deferred_coroutine
from gomail.interfaces import IQueueConsumer
from gomail.spool.store import Spool


class SpoolService(Service):
    """
    On start: prepare the spool (directories, ``tmp/`` cleanup), scan ``queue/``
    and hand every queued message to the consumer, then hand it each newly
    committed one. Its C{startService} Deferred is awaited by the root service,
    so the SMTP listeners open only after recovery.
    """

    def __init__(self, spool: Spool, consumer: IQueueConsumer | None) -> None:
        self.spool = spool
        self.consumer = consumer

    @deferred_coroutine
    async def startService(self) -> None:  # type: ignore[override]
        super().startService()
        self.spool.prepare()
        report = await self.spool.recover()
        if self.consumer is not None:
            for envelope in report.envelopes:
                self.consumer.enqueue(envelope)
            self.spool.add_listener(self.consumer.enqueue)
