# -*- test-case-name: tests.test_relay_client -*-
"""What a relay connection is given (a L{Transaction}) and how it fails (L{ConnectionFailure})."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from gomail.delivery.content import ContentSource

Reply = tuple[int, str]


class ConnectionFailure(Exception):
    """
    The connection (not one recipient) failed: every recipient of the transaction is deferred or failed.

    @ivar possible_duplicate: the final dot was sent and its reply never came
        (timeout, connection lost): the smarthost may have delivered the
        message, which is nevertheless retried (at least once, never lost).
    @ivar expired: the attempt's own bound (C{processingTimeout}) ended it,
        not a fault of the smarthost.
    """

    def __init__(self, code: int, text: str, possible_duplicate: bool = False, expired: bool = False) -> None:
        super().__init__(code, text)
        self.code, self.text = code, text
        self.possible_duplicate = possible_duplicate
        self.expired = expired

    @property
    def reply(self) -> Reply:
        """The reply to record for each recipient (4xx unless the server said 5xx)."""
        if 400 <= self.code < 600:
            return self.code, self.text
        return 451, f"4.4.0 {self.text}"


@dataclass
class Transaction:
    """One MAIL/RCPT/DATA exchange; C{done} fires with {recipient: (code, text)}."""

    sender: str
    recipients: list[str]
    open_content: Callable[[], ContentSource]
    done: Deferred = field(default_factory=Deferred)


def reply_text(resp: Any) -> str:
    """A reply's text on one line (bytes decoded, whitespace runs made one space)."""
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())
