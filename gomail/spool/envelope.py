# -*- test-case-name: tests.test_spool -*-
"""The JSON envelope stored beside every queued message."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
FORMAT_VERSION = 1


class EnvelopeError(ValueError):
    """An envelope file that cannot be understood."""


def new_queue_id(now: float) -> str:
    """
    A unique, roughly time-ordered queue id: 13 hex digits of microseconds
    since the epoch and 8 random hex digits (ids sort by arrival in listings).
    """
    return f"{int(now * 1_000_000):013x}{secrets.token_hex(4)}"


@dataclass
class Recipient:
    """One recipient of a message and where its delivery stands."""

    address: str
    status: str = PENDING
    reply: str | None = None


@dataclass
class Envelope:
    """Everything about a queued message except its content."""

    id: str
    sender: str
    recipients: list[Recipient]
    received: float
    client_address: str = ""
    client_helo: str = ""
    tls: bool = False
    auth_user: str | None = None
    body_type: str | None = None
    #: The content's length in bytes (recorded since the first version).
    size: int = 0
    #: The content's digest, C{blake2b:<hex>} (L{gomail.spool.integrity}); None in
    #: envelopes written before digests were recorded (those are checked on size alone).
    digest: str | None = None
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Not stored: committed by this process and not yet attempted. Its bytes
    #: were hashed as they were written a moment ago, so its first attempt
    #: checks the file's size only (L{gomail.spool.integrity}); every later
    #: one (and every attempt after a restart) checks size and digest.
    fresh: bool = field(default=False, compare=False, repr=False)

    def pending(self) -> list[Recipient]:
        """The recipients still to be delivered."""
        return [r for r in self.recipients if r.status == PENDING]

    def to_json(self) -> bytes:
        """Serialise for the spool (UTF-8 JSON, one object)."""
        # Built by hand: dataclasses.asdict deep-copies, and this runs for every message.
        data = dict(self.__dict__)
        del data["fresh"]
        data["recipients"] = [r.__dict__ for r in self.recipients]
        data["version"] = FORMAT_VERSION
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """
        Parse a spool envelope.

        @raise EnvelopeError: when it is not a complete envelope of a known version.
        """
        try:
            data = json.loads(raw)
            if data.pop("version") != FORMAT_VERSION:
                raise EnvelopeError("unknown envelope version")
            data["recipients"] = [Recipient(**r) for r in data["recipients"]]
            envelope = cls(**data)
        except EnvelopeError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise EnvelopeError(f"unreadable envelope: {e}") from None
        if not envelope.id or not envelope.recipients:
            raise EnvelopeError("envelope without id or recipients")
        return envelope
