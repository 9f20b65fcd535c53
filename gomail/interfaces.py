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


class ISpoolWriter(Interface):
    """
    Runs the spool's durable jobs (L{gomail.spool.jobs}) in batches, each
    batch's files and directories fsynced before any of its jobs is reported.
    Implementations: L{gomail.spool.writer.BatchWriter} (a thread of this
    process), a lane of L{gomail.spool.process.WriterProcess} (the writer's
    child process, over AMP), L{gomail.spool.writer.ImmediateWriter} (at
    once, for tests and tools).
    """

    in_process = Attribute(
        "True when jobs run in this process: then (only) a job may be handed a file descriptor of it.")

    def run(job, **arguments):
        """
        Run C{job(files, **arguments)} (one of the functions of
        L{gomail.spool.jobs}; C{files} is the writer's
        L{gomail.spool.jobs.SpoolFiles}).

        @return: a Deferred firing with the job's result once the job's
            changes are durable. It fails with the job's own exception
            (C{OSError} and its subclasses with their errno,
            L{gomail.spool.integrity.CorruptContent},
            L{gomail.spool.envelope.EnvelopeError}, C{ValueError},
            C{KeyError}), with C{OSError} when the batch's directory fsync
            failed (the change may not be durable), or with
            L{gomail.spool.process.WriterGone} when a writer process exited
            before it answered (the job may or may not have been done).
        """
