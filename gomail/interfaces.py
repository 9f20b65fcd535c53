# -*- test-case-name: tests.test_delivery_queue -*-
"""The contracts between gomail's parts (and for plugins)."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IDeliveryAgent(Interface):
    """Something that can deliver a queued message to some of its recipients."""

    name = Attribute("A short name for logs and metrics, such as 'mailbox' or 'relay'.")

    def deliver(envelope, message_path, recipients):
        """
        Deliver the message whose content is at C{message_path} to C{recipients}
        (a list of L{gomail.spool.envelope.Recipient}, all pending).

        @return: a Deferred firing with a dict mapping each recipient address to
            C{(code, text)}: 2xx delivered, 4xx try again later, 5xx permanent
            failure. It fails only for a fault of the agent itself, which counts
            as a temporary failure of every recipient.
        """


class IQueueConsumer(Interface):
    """Something that takes queued messages and sees them delivered."""

    def enqueue(envelope):
        """
        A committed message is waiting (newly received, or found at start-up).
        Must be idempotent: the same id may be offered twice.
        """
