# -*- test-case-name: tests.test_delivery_queue -*-
"""
The failed store: ``<spool>/failed/<id>.json``, one JSON document per message
given up on, with its full metadata and content (the Go relay's promise), and
the way back into the queue.

Moving is done in two durable steps, each a job of the spool writer
(L{gomail.spool.jobs.failedjobs}): first the new copy is written and its
directory fsynced, then the old copy is removed. A
crash in between leaves the message in both places (it may be tried once more),
never in neither.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gomail.spool.envelope import Envelope, EnvelopeError
from gomail.spool.integrity import CorruptContent
from gomail.spool.jobs import failedjobs
from gomail.spool.jobs.failedjobs import decode_content, encode_content
from gomail.spool.store import Spool

__all__ = ["FailedStore", "MessageBusy", "decode_content", "encode_content"]


class MessageBusy(Exception):
    """The message is being delivered or moved right now: an operator's change must wait."""


class FailedStore:
    """
    Messages given up on, kept as JSON until retried or deleted by an operator.
    One move at a time per message: while a message is moved in or out, a
    retry or delete of it fails with L{MessageBusy} (two requeues of one
    message would write its queue files twice, the second time under a
    delivery already under way).
    """

    log = Logger()

    def __init__(self, spool: Spool, clock: IReactorTime) -> None:
        self.spool = spool
        self.clock = clock
        self._moving: set[str] = set()

    def _claim(self, queue_id: str) -> None:
        if queue_id in self._moving:
            raise MessageBusy(queue_id)
        self._moving.add(queue_id)

    def path(self, queue_id: str) -> str:
        return self.spool.path("failed", queue_id + ".json")

    def ids(self) -> list[str]:
        """(blocking) The ids in the failed store, oldest first."""
        return sorted(name[:-5] for name in os.listdir(self.spool.path("failed")) if name.endswith(".json"))

    def load(self, queue_id: str) -> dict[str, Any]:
        """(blocking) One failed record as stored."""
        with open(self.path(queue_id), "rb") as f:
            return json.loads(f.read())

    # -- giving up -----------------------------------------------------------

    async def give_up(self, envelope: Envelope, reason: str) -> None:
        """Move a queued message to the failed store (durably), then out of the queue."""
        now = self.clock.seconds()
        self._moving.add(envelope.id)
        try:
            await self.spool.writer.run(failedjobs.write_failed_record, queue_id=envelope.id,
                                        envelope=envelope.to_json(), reason=reason, now=now)
            await self.spool.remove(envelope.id)
        finally:
            self._moving.discard(envelope.id)
        self.log.warn("{queue_id} moved to failed/: {reason}", queue_id=envelope.id, reason=reason)

    # -- retrying ------------------------------------------------------------

    async def retry(self, queue_id: str | None = None) -> int:
        """
        Put failed mail (one id, or all) back in the queue with fresh attempt
        counters (L{requeue}); messages that cannot be requeued are logged and
        stay, as do those being moved right now. Returns how many messages
        were requeued.

        @raise KeyError: for an id that is not in the failed store.
        """
        ids = [queue_id] if queue_id is not None else await self.spool.run(self.ids)
        if queue_id is not None and not os.path.exists(self.path(queue_id)):
            raise KeyError(queue_id)
        count = 0
        for one in ids:
            try:
                await self.requeue(one)
            except (OSError, ValueError, EnvelopeError, CorruptContent) as e:
                self.log.error("could not requeue failed message {queue_id}: {error}", queue_id=one, error=e)
                continue
            except MessageBusy:
                continue
            count += 1
        if count:
            self.log.info("requeued {count} failed messages", count=count)
        return count

    async def requeue(self, queue_id: str) -> None:
        """
        Put one failed message back in the queue with fresh attempt counters:
        its failed recipients pending again, its age starting now. Its content
        is checked against the record's digest first.

        @raise MessageBusy: while the message is moved by someone else.
        @raise FileNotFoundError: when it is not in the failed store.
        @raise CorruptContent: (and L{EnvelopeError}, C{ValueError}, C{OSError})
            when it cannot be requeued; it stays in the failed store.
        """
        self._claim(queue_id)
        try:
            data = await self.spool.writer.run(failedjobs.requeue_failed, queue_id=queue_id, now=self.clock.seconds())
            envelope = Envelope.from_json(data)
            try:
                await self.spool.writer.run(failedjobs.forget_failed, queue_id=queue_id)
            finally:
                self.spool.committed(envelope)  # in queue/ now, whatever became of the record
        finally:
            self._moving.discard(queue_id)

    async def delete(self, queue_id: str) -> None:
        """
        Remove a failed message for good.

        @raise KeyError: when it is not in the failed store.
        @raise MessageBusy: while it is moved in or out.
        """
        if not os.path.exists(self.path(queue_id)):
            raise KeyError(queue_id)
        self._claim(queue_id)
        try:
            await self.spool.writer.run(failedjobs.forget_failed, queue_id=queue_id)
        finally:
            self._moving.discard(queue_id)
