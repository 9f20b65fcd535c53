# -*- test-case-name: tests.test_delivery_queue -*-
"""
The failed store's jobs: a record written into C{failed/}, requeued from it,
forgotten (see L{gomail.delivery.failed} for the store, and
L{gomail.spool.jobs} for what a job is).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gomail.spool.envelope import FAILED, PENDING, Envelope
from gomail.spool.integrity import check_bytes, digest_text, new_digest
from gomail.spool.jobs import SpoolFiles


def encode_content(content: bytes) -> tuple[str, str]:
    """Content as JSON text: (text, "utf-8") when it decodes, else (base64, "base64")."""
    try:
        return content.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(content).decode("ascii"), "base64"


def decode_content(text: str, encoding: str) -> bytes:
    """The inverse of L{encode_content}."""
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


def failed_path(files: SpoolFiles, queue_id: str) -> str:
    """Where a failed record is."""
    return files.path("failed", queue_id + ".json")


def write_failed_record(files: SpoolFiles, queue_id: str, envelope: bytes, reason: str, now: float) -> Any:
    """
    (generator) Write C{failed/<id>.json}: the envelope's fields, the
    C{reason}, the time C{now}, and the content of C{queue/<id>.eml}. The
    queued files are left as they are (the caller removes them next: a crash
    in between leaves the message in both places, never in neither).
    """
    with open(files.path("queue", queue_id + ".eml"), "rb") as f:
        content, encoding = encode_content(f.read())
    record = json.loads(envelope)
    record.update(reason=reason, failed_at=now, content=content, content_encoding=encoding)
    tmp = files.path("tmp", queue_id + ".failed")
    fs = files.fs
    fs.unlink(tmp)
    fd = fs.create(tmp)
    try:
        fs.write(fd, [json.dumps(record, sort_keys=True).encode("utf-8")])
        yield [fd]
    finally:
        fs.close(fd)
    fs.rename(tmp, failed_path(files, queue_id))
    return None, [files.path("failed")]


def requeue_failed(files: SpoolFiles, queue_id: str, now: float) -> Any:
    """
    (generator) Put a failed record back in C{queue/} with fresh attempt
    counters: its failed recipients pending again, its age starting C{now}.
    Its content is checked against the record's digest first. Returns the
    new envelope's JSON; the record stays (remove it with L{forget_failed}).

    @raise gomail.spool.integrity.CorruptContent: (and
        L{gomail.spool.envelope.EnvelopeError}, C{ValueError}, C{OSError})
        when it cannot be requeued.
    """
    with open(failed_path(files, queue_id), "rb") as f:
        record = json.loads(f.read())
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
    data = envelope.to_json()
    fs = files.fs
    fds = []
    try:
        for name, payload in ((queue_id + ".eml", content), (queue_id + ".json", data)):
            fs.unlink(files.path("tmp", name))
            fds.append(fs.create(files.path("tmp", name)))
            fs.write(fds[-1], [payload])
        yield fds
    finally:
        for fd in fds:
            fs.close(fd)
    fs.rename(files.path("tmp", queue_id + ".eml"), files.path("queue", queue_id + ".eml"))
    fs.rename(files.path("tmp", queue_id + ".json"), files.path("queue", queue_id + ".json"))
    return data, [files.path("queue")]


def forget_failed(files: SpoolFiles, queue_id: str) -> tuple[None, list[str]]:
    """Remove a failed record."""
    files.fs.unlink(failed_path(files, queue_id))
    return None, [files.path("failed")]
