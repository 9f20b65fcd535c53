# -*- test-case-name: tests.test_delivery_queue -*-
"""
The failed store: ``<spool>/failed/<id>.json``, one JSON document per message
given up on, with its full metadata and content (the Go relay's promise), and
the way back into the queue.

Moving is done in two durable steps, each in the spool writer: first the new
copy is written and its directory fsynced, then the old copy is removed. A
crash in between leaves the message in both places (it may be tried once more),
never in neither.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gomail.spool.envelope import FAILED, PENDING, Envelope, EnvelopeError
from gomail.spool.integrity import CorruptContent, check_bytes, digest_text, new_digest
from gomail.spool.store import Spool


def encode_content(content: bytes) -> tuple[str, str]:
    """Content as JSON text: (text, "utf-8") when it decodes, else (base64, "base64")."""
    try:
        return content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(content).decode("ascii"), "base64"


def decode_content(text: str, encoding: str) -> bytes:
    """The inverse of L{encode_content}."""
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


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
    #: The name a writer process knows this store by (see L{gomail.spool.process}).
    job_target = "failed"

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
            await self.spool.writer.call(self, "_write_record", envelope, reason, now)
            await self.spool.remove(envelope.id)
        finally:
            self._moving.discard(envelope.id)
        self.log.warn("{queue_id} moved to failed/: {reason}", queue_id=envelope.id, reason=reason)

    def _write_record(self, envelope: Envelope, reason: str, now: float) -> Any:
        with open(self.spool.message_path(envelope.id), "rb") as f:
            content, encoding = encode_content(f.read())
        record = json.loads(envelope.to_json())
        record.update(reason=reason, failed_at=now, content=content, content_encoding=encoding)
        tmp = self.spool.path("tmp", envelope.id + ".failed")
        fs = self.spool.fs
        fs.unlink(tmp)
        fd = fs.create(tmp)
        try:
            fs.write(fd, [json.dumps(record, sort_keys=True).encode("utf-8")])
            yield [fd]
        finally:
            fs.close(fd)
        fs.rename(tmp, self.path(envelope.id))
        return None, [self.spool.path("failed")]

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
            envelope = await self.spool.writer.call(self, "_requeue", queue_id, self.clock.seconds())
            try:
                await self.spool.writer.call(self, "_forget", queue_id)
            finally:
                self.spool.committed(envelope)  # in queue/ now, whatever became of the record
        finally:
            self._moving.discard(queue_id)

    def _requeue(self, queue_id: str, now: float) -> Any:
        record = self.load(queue_id)
        content = decode_content(record.pop("content"), record.pop("content_encoding", "utf-8"))
        for key in ("reason", "failed_at"):
            record.pop(key, None)
        envelope = Envelope.from_json(json.dumps(record).encode())
        if envelope.digest is not None:
            # Damaged in failed/: left there (the caller logs why), never queued.
            check_bytes(queue_id, content, envelope.size, envelope.digest)
        else:
            # A record from before digests: its content is what was read from the queue file.
            digest = new_digest()
            digest.update(content)
            envelope.size, envelope.digest = len(content), digest_text(digest)
        for recipient in envelope.recipients:
            if recipient.status == FAILED:
                recipient.status, recipient.reply = PENDING, None
        envelope.attempts, envelope.received, envelope.next_attempt, envelope.last_error = 0, now, now, None
        fs, spool = self.spool.fs, self.spool
        fds = []
        try:
            for name, data in ((queue_id + ".eml", content), (queue_id + ".json", envelope.to_json())):
                fs.unlink(spool.path("tmp", name))
                fds.append(fs.create(spool.path("tmp", name)))
                fs.write(fds[-1], [data])
            yield fds
        finally:
            for fd in fds:
                fs.close(fd)
        fs.rename(spool.path("tmp", queue_id + ".eml"), spool.path("queue", queue_id + ".eml"))
        fs.rename(spool.path("tmp", queue_id + ".json"), spool.path("queue", queue_id + ".json"))
        return envelope, [spool.path("queue")]

    def _forget(self, queue_id: str) -> tuple[None, list[str]]:
        self.spool.fs.unlink(self.path(queue_id))
        return None, [self.spool.path("failed")]

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
            await self.spool.writer.call(self, "_forget", queue_id)
        finally:
            self._moving.discard(queue_id)
