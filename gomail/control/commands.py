# -*- test-case-name: tests.test_control -*-
"""
The AMP commands of the control channel (L{gomail.control}).

Each command is one change the server makes in its own queue, or a read of
its state. Lists in answers are cut to L{MAX_LISTED} entries (an AMP value is
at most 64 KiB); the counts are always whole.
"""

from __future__ import annotations

import re
from typing import ClassVar

from twisted.protocols import amp

#: The most ids a request may name (about 23 KiB).
MAX_IDS = 1000
#: The most lines an answer lists (at most about 40 KiB).
MAX_LISTED = 200


_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")


def valid_id(queue_id: str) -> bool:
    """Whether C{queue_id} can name a spool file (never a path elsewhere)."""
    return _ID.fullmatch(queue_id) is not None


class UnknownMessages(Exception):
    """Some ids are not where the command looks for them; nothing was changed (the text names them)."""


class BadRequest(Exception):
    """A request the server will not act on (a malformed id, too many ids); nothing was changed."""


_ERRORS: dict[type[Exception], bytes] = {UnknownMessages: b"UNKNOWN_MESSAGES", BadRequest: b"BAD_REQUEST"}


class Status(amp.Command):
    """The running server and its queue (changes nothing)."""

    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"pid", amp.Integer()), (b"version", amp.Unicode()), (b"spool", amp.Unicode()),
                (b"queued", amp.Integer()), (b"active", amp.Integer()), (b"deferred", amp.Integer()),
                (b"failed", amp.Integer())]


class Flush(amp.Command):
    """
    Every queued message due now (C{postqueue -f}). C{flushed}: the messages
    made due; C{active}: those being delivered at this moment (left alone).
    """

    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"flushed", amp.Integer()), (b"active", amp.Integer())]


class Retry(amp.Command):
    """
    Messages of ``failed/`` (C{ids}, or C{all}) back into the queue with fresh
    counters. C{problems}: one line per message that stays in ``failed/``.
    """

    arguments: ClassVar[list] = [(b"ids", amp.ListOf(amp.Unicode())), (b"all", amp.Boolean())]
    response: ClassVar[list] = [(b"requeued", amp.Integer()), (b"problems", amp.ListOf(amp.Unicode()))]
    errors = _ERRORS


class Delete(amp.Command):
    """
    Messages deleted for good: C{ids} from ``queue/`` or ``failed/``, or
    everything in ``failed/`` (C{all_failed}), or everything in both (C{all}).
    C{busy}: ids being delivered or moved at this moment, not deleted.
    """

    arguments: ClassVar[list] = [(b"ids", amp.ListOf(amp.Unicode())), (b"all_failed", amp.Boolean()),
                                 (b"all", amp.Boolean())]
    response: ClassVar[list] = [(b"deleted", amp.Integer()), (b"busy", amp.ListOf(amp.Unicode()))]
    errors = _ERRORS


def cut(lines: list[str]) -> list[str]:
    """C{lines}, at most L{MAX_LISTED} of them (the last saying how many were left out)."""
    if len(lines) <= MAX_LISTED:
        return lines
    return lines[:MAX_LISTED - 1] + [f"... and {len(lines) - MAX_LISTED + 1} more"]


__all__ = ["MAX_IDS", "MAX_LISTED", "BadRequest", "Delete", "Flush", "Retry", "Status", "UnknownMessages", "cut",
           "valid_id"]
