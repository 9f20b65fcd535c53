# -*- test-case-name: tests.test_plugins -*-
"""Delivery events for L{gomail.interfaces.IDeliveryObserver} plugins: told, never waited for."""

from __future__ import annotations

from typing import Any

from gomail.extension.runner import HookFailed, HookRunner
from gomail.plugin import DeliveryEvent
from gomail.spool.envelope import Envelope, Recipient

#: Recipient states (gomail.delivery.queue) and the event each outcome is.
_KINDS = {"delivered": "delivered", "failed": "failed"}


class DeliveryEvents:
    """Hands each event to every observer through the L{HookRunner}; a failing observer is only counted and logged."""

    def __init__(self, runner: HookRunner, observers: list[tuple[str, Any]], clock: Any) -> None:
        self.runner, self.observers, self.clock = runner, observers, clock

    def emit(self, kind: str, envelope: Envelope, recipient: Recipient | None = None) -> None:
        """Tell every observer that C{kind} happened to C{envelope} (or to one of its recipients)."""
        event = DeliveryEvent(kind, envelope.id, envelope.sender, tuple(r.address for r in envelope.recipients),
                              self.clock.seconds(), recipient.address if recipient else None,
                              recipient.reply if recipient else None)
        for name, observer in self.observers:
            self.runner.call(name, observer.delivery_event, event).addErrback(lambda f: f.trap(HookFailed))

    def queued(self, envelope: Envelope) -> None:
        """A message was committed to the queue."""
        self.emit("queued", envelope)

    def recipient(self, envelope: Envelope, recipient: Recipient) -> None:
        """An attempt's outcome for one recipient: delivered, deferred or failed."""
        self.emit(_KINDS.get(recipient.status, "deferred"), envelope, recipient)

    def bounced(self, envelope: Envelope, recipients: list[Recipient]) -> None:
        """A failure notice (DSN) was queued to the sender about C{recipients}."""
        for recipient in recipients:
            self.emit("bounced", envelope, recipient)
