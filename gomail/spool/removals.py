# -*- test-case-name: tests.test_spool -*-
"""
Removals of delivered messages, one writer job at a time: those asked for
while one is in the writer go together in the next (a relay batch ends
twenty messages in one reactor turn; one job each cost the writer process
twenty round trips). Then the files they freed are offered as spares, one
publish job at a time carrying every spare made meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gomail.interfaces import ISpoolWriter
from gomail.spool.jobs import queuejobs


class Removals:
    """
    @param writer: the writer removals go to now (it may change: a test or
        the composition root sets the spool's removal writer after it is made).
    @param removed: called with how many messages a finished job removed.
    """

    log = Logger()

    def __init__(self, writer: Callable[[], ISpoolWriter], removed: Callable[[int], None]) -> None:
        self.writer = writer
        self.removed = removed
        self._waiting: list[tuple[str, bool, Deferred]] = []
        self._removing = False
        self._unpublished: list[str] = []
        self._publishing = False

    def remove(self, queue_id: str, durable: bool) -> Deferred:
        """Fires once the message's removal is done; fails with the job's failure (nothing is retried here)."""
        done: Deferred = Deferred()
        self._waiting.append((queue_id, durable, done))
        if not self._removing:
            self._send_waiting()
        return done

    def _send_waiting(self) -> None:
        batch, self._waiting = self._waiting, []
        self._removing = True
        writer = self.writer()
        d = writer.run(queuejobs.remove_messages, queue_ids=[queue_id for queue_id, _, _ in batch],
                       durable=any(durable for _, durable, _ in batch))

        def answered(result: Any) -> None:
            self._removing = False
            if isinstance(result, Failure):
                for _, _, done in batch:
                    done.errback(result)
            else:
                if result:
                    self._publish_spares(writer, result)
                self.removed(len(batch))
                for _, _, done in batch:
                    done.callback(None)
            if self._waiting and not self._removing:
                self._send_waiting()
        d.addBoth(answered)

    def _publish_spares(self, writer: ISpoolWriter, spares: list[str]) -> None:
        """Offer removed files to the next commits where they are made (in the writer's own process)."""
        self._unpublished += spares
        if self._publishing:
            return
        self._publishing = True
        batch, self._unpublished = self._unpublished, []

        def published(_: Any) -> None:
            self._publishing = False
            if self._unpublished:
                self._publish_spares(writer, [])
        d = writer.run(queuejobs.publish_spares, spares=batch)
        d.addErrback(lambda f: self.log.failure("could not offer spare files", f)).addBoth(published)
