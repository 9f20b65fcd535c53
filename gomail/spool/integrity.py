# -*- test-case-name: tests.test_spool_integrity -*-
"""
What a queued message's content must be, and the check before it is trusted.

The envelope records the content's size and a SHA-256 digest, computed while
the message streams in (L{gomail.spool.incoming}): on bytes already in hand,
so the cost is the hash alone (about 0.6 us per KiB here, where the CPU has
SHA instructions: 2.6 times BLAKE2b's speed, which mattered for large mail,
hashed once on the way in and once on every way out). Envelopes written
with a BLAKE2b digest (C{blake2b:<hex>}, before 2026-12-04) are checked
with BLAKE2b: the kind is read from the recorded digest. Before any delivery
attempt and at recovery the file is compared with them; a mismatch is a
L{CorruptContent}, and the entry goes to ``corrupt/`` instead of anywhere
else (L{gomail.spool.store.Spool.set_aside}).

Envelopes written before digests were recorded carry only the size (recorded
since the first version): those are checked on their size alone.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

#: The digest kind of new envelopes, as written before the hex digits.
DIGEST_KIND = "sha256"
#: Every kind a recorded digest may be of, and how to make its hash object.
_KINDS: dict[str, Any] = {"sha256": hashlib.sha256, "blake2b": lambda: hashlib.blake2b(digest_size=32)}
#: Bytes read per call when checking a file.
READ_SIZE = 1024 * 1024


class CorruptContent(Exception):
    """A queued message whose content is not what its envelope records."""

    def __init__(self, queue_id: str, problem: str) -> None:
        # Both in args: the exception is copied (one failure per job, see gomail.spool.writer.own_failure).
        super().__init__(queue_id, problem)
        self.queue_id = queue_id
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.queue_id}: {self.problem}"


def new_digest(recorded: str | None = None) -> Any:
    """
    A hash object for a message's content (fed in order, as it arrives): of
    the kind of the C{recorded} digest it will be compared with, or for a new
    envelope (None, or a kind not known here: then the comparison says so).
    """
    kind = DIGEST_KIND if recorded is None else recorded.partition(":")[0]
    return _KINDS.get(kind, _KINDS[DIGEST_KIND])()


def digest_text(digest: Any) -> str:
    """How the envelope records a finished digest: C{sha256:<64 hex digits>} (or C{blake2b:...})."""
    return f"{digest.name}:{digest.hexdigest()}"


def size_problem(actual: int, recorded: int) -> str | None:
    """The complaint when C{actual} bytes are found where the envelope records C{recorded}, or None."""
    if actual == recorded:
        return None
    if actual == 0:
        return f"content is empty (0 bytes), its envelope records {recorded}"
    if actual < recorded:
        return f"content is {actual} bytes, its envelope records {recorded} (truncated)"
    return f"content is {actual} bytes, its envelope records {recorded} (grown)"


def check_file(queue_id: str, path: str, size: int, digest: str | None, keep: int = 0) -> bytes | None:
    """
    (blocking) Compare the file at C{path} with the envelope's C{size} and
    C{digest}: the size from the open descriptor first (no read for a file
    cut short or emptied), then the digest over one read of the whole file.
    With C{digest} None (an envelope from before digests, or the first
    attempt of a message this process has just written) only the size is
    checked, by one C{stat}, and nothing read.

    @param keep: the file's bytes are returned when it is at most this long
        (so that a caller can send exactly the bytes it checked), else None.
    @raise CorruptContent: naming what is wrong.
    @raise OSError: when the file cannot be read (missing, I/O error).
    """
    if digest is None:
        problem = size_problem(os.stat(path).st_size, size)
        if problem is not None:
            raise CorruptContent(queue_id, problem)
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        problem = size_problem(os.fstat(fd).st_size, size)
        if problem is not None:
            raise CorruptContent(queue_id, problem)
        hasher = new_digest(digest)
        parts: list[bytes] = []
        total = 0
        while data := os.read(fd, READ_SIZE if total or size > READ_SIZE else size + 1):
            hasher.update(data)
            total += len(data)
            if total <= keep:
                parts.append(data)
    finally:
        os.close(fd)
    problem = size_problem(total, size) or digest_problem(digest_text(hasher), digest, size)
    if problem is not None:
        raise CorruptContent(queue_id, problem)
    return b"".join(parts) if total <= keep else None


def digest_problem(actual: str, recorded: str, size: int) -> str | None:
    """The complaint when the content's digest C{actual} differs from the C{recorded} one, or None."""
    if actual == recorded:
        return None
    if recorded.partition(":")[0] not in _KINDS:
        return f"its envelope records a digest of an unknown kind ({recorded.partition(':')[0]!r})"
    return f"content digest differs from its envelope's (same size, {size} bytes: the bytes were changed)"


def check_bytes(queue_id: str, content: bytes, size: int, digest: str | None) -> None:
    """
    Compare content in memory with the envelope's C{size} and C{digest}.

    @raise CorruptContent: naming what is wrong.
    """
    problem = size_problem(len(content), size)
    if problem is None and digest is not None:
        hasher = new_digest(digest)
        hasher.update(content)
        problem = digest_problem(digest_text(hasher), digest, size)
    if problem is not None:
        raise CorruptContent(queue_id, problem)
