# -*- test-case-name: tests.test_spool -*-
"""The JSON envelope stored beside every queued message."""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass, field, fields
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


@dataclass(slots=True)
class Recipient:
    """One recipient of a message and where its delivery stands."""

    address: str
    status: str = PENDING
    reply: str | None = None

    def __post_init__(self) -> None:
        self.address = _shared(self.address)
        self.status = _shared(self.status)


@dataclass(slots=True)
class Envelope:
    """
    Everything about a queued message except its content. (Slots, not a
    C{__dict__}: the delivery queue holds one per queued message, and a
    hundred thousand of them must fit in well under 100 MB.)
    """

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
    #: The content's digest, C{sha256:<hex>} (or C{blake2b:<hex>} when older) (L{gomail.spool.integrity}); None in
    #: envelopes written before digests were recorded (those are checked on size alone).
    digest: str | None = None
    #: The content can go out as SMTP DATA unchanged: CRLF line endings only and no line
    #: starting with a dot (RFC 5321 4.5.2), as seen while it was received; False when not
    #: known (older envelopes): then it is dot-stuffed and its line endings checked as it is sent.
    transparent: bool = False
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    #: Further facts (DSNs sent...). Replaced, never changed in place: most
    #: envelopes share one empty mapping, which refuses changes.
    extra: dict[str, Any] = field(default_factory=dict)
    #: Not stored: committed by this process and not yet attempted. Its bytes
    #: were hashed as they were written a moment ago, so its first attempt
    #: checks the file's size only (L{gomail.spool.integrity}); every later
    #: one (and every attempt after a restart) checks size and digest.
    fresh: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A queue holds many envelopes from the same clients and senders: one copy of each such string.
        self.sender = _shared(self.sender)
        self.client_address = _shared(self.client_address)
        self.client_helo = _shared(self.client_helo)
        if not self.extra:
            self.extra = NO_EXTRA

    def pending(self) -> list[Recipient]:
        """The recipients still to be delivered."""
        return [r for r in self.recipients if r.status == PENDING]

    def to_json(self) -> bytes:
        """Serialise for the spool (UTF-8 JSON, one object)."""
        # Built by hand: dataclasses.asdict deep-copies, and this runs for every message.
        data = {name: getattr(self, name) for name in _STORED}
        data["recipients"] = [{"address": r.address, "status": r.status, "reply": r.reply}
                              for r in self.recipients]
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


#: The envelope's fields written to its file (all but C{fresh}).
_STORED = tuple(f.name for f in fields(Envelope) if f.name != "fresh")


def _shared(value: Any) -> Any:
    """C{value}, one copy of it for all envelopes when it is a string (a queue holds many read from disk)."""
    return sys.intern(value) if type(value) is str else value


class _EmptyExtra(dict):
    """The empty C{extra} most envelopes share (64 bytes each otherwise): any change in place is a bug."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Envelope.extra is shared when empty: assign a new dict instead of changing it")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]


NO_EXTRA: dict[str, Any] = _EmptyExtra()
