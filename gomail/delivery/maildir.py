# -*- test-case-name: tests.test_delivery_local -*-
"""Local delivery into one Maildir per recipient under ``<spool>/mailbox/``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gomail.interfaces import IDeliveryAgent, ISpoolWriter
from gomail.mailaccess.notify import MailboxNotices
from gomail.mailaccess.quota import MailboxQuota
from gomail.spool.envelope import Envelope, Recipient
from gomail.spool.jobs import maildirjobs
from gomail.spool.jobs.maildirjobs import DELIVERED_REPLY, mailbox_name, safe_hostname

#: A recipient whose Maildir the message would take over its quota: kept in the queue and retried
#: (RFC 3463 X.2.2, a full mailbox, is temporary), bounced after delivery.maxQueueAge like any deferral.
MAILBOX_FULL_REPLY = (452, "4.2.2 Mailbox full")

__all__ = ["DELIVERED_REPLY", "MAILBOX_FULL_REPLY", "MaildirDelivery", "mailbox_name"]


@implementer(IDeliveryAgent)
class MaildirDelivery:
    """
    Gives each recipient the message in ``mailbox/<address>/new/``; the writer
    fsyncs ``new/`` once for its whole batch before the result is reported.

    The copy is a hard link to the queued file, which is already on disk (it was
    fsynced before its 250): only a directory entry changes, so delivery costs no
    data write and no file fsync, and N recipients share one inode. The link goes
    straight into ``new/``: the Maildir rule of writing in ``tmp/`` first is
    there so that readers never see a half-written file, and a link to a
    complete file is one atomic step (Postfix's local(8) also ends with a
    link() into ``new/``). Where a link is impossible (the mailbox on another
    file system) the content is copied into ``tmp/``, fsynced and renamed into
    ``new/``. Either way the message is stored exactly as queued, with CRLF
    line endings (Maildir readers such as Dovecot accept them). The file name
    is derived from the queue id, so a copy delivered before a crash is
    recognised and not delivered twice.

    A link gives the mailbox whatever the queued file holds now, so the job
    first checks it against the envelope's size and digest (one read of the
    file, in the writer: no extra hand-off); a mismatch fails the job with
    L{gomail.spool.integrity.CorruptContent} before any copy. The first
    attempt of a message this process has just committed (C{envelope.fresh})
    checks the size only (one C{stat}): its bytes were hashed as they were
    written, and reading every message back doubled the job's cost for a
    300 KB message (see README, "Damaged files").

    With a C{quota} (L{MailboxQuota}, C{imap.quotaMB}), a recipient whose
    Maildir the message would take over it gets L{MAILBOX_FULL_REPLY} and no
    copy; the others' deliveries are added to the cached counts.

    With C{notices} (L{MailboxNotices}, shared with the IMAP server), each
    recipient whose copy is stored is announced, once the copies are
    durable, so its IDLE sessions report the message at once.
    """

    name = "mailbox"
    #: A repeated delivery of the same copy is recognised (see _write_copy).
    idempotent = True
    #: The content is checked in the job itself (link_into_maildirs), right before it is linked.
    checks_content = True

    def __init__(self, directory: str, hostname: str, writer: ISpoolWriter, quota: MailboxQuota | None = None,
                 notices: MailboxNotices | None = None) -> None:
        self.directory = directory
        self.hostname = safe_hostname(hostname)
        self.writer = writer
        self.quota = quota
        self.notices = notices

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        if self.quota is not None and self.quota.limit:
            d = Deferred.fromCoroutine(self._deliver_within_quota(self.quota, envelope, message_path, recipients))
        else:
            d = self._link(envelope, message_path, recipients)
        if self.notices is not None:
            d.addCallback(self._announce, self.notices)
        return d

    @staticmethod
    def _announce(results: dict[str, Any], notices: MailboxNotices) -> dict[str, Any]:
        for address, reply in results.items():
            if reply[0] // 100 == 2:
                notices.notify(address)
        return results

    async def _deliver_within_quota(self, quota: MailboxQuota, envelope: Envelope, message_path: str,
                                    recipients: list[Recipient]) -> dict[str, Any]:
        results: dict[str, Any] = {}
        room = []
        for recipient in recipients:
            if await quota.reserve(recipient.address, envelope.size):
                room.append(recipient)
            else:
                results[recipient.address] = MAILBOX_FULL_REPLY
        if room:
            try:
                results.update(await self._link(envelope, message_path, room))
            finally:
                for recipient in room:
                    stored = results.get(recipient.address, (0, ""))[0] // 100 == 2
                    quota.release(recipient.address, envelope.size, stored)
        return results

    def _link(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        # The index in the envelope (not in this call's list) names the file, so a
        # retry of a copy that was delivered before a crash finds it again.
        positions = {r.address: i for i, r in enumerate(envelope.recipients)}
        targets = [(positions.get(r.address, 0), r.address) for r in recipients]
        return self.writer.run(maildirjobs.link_into_maildirs, queue_id=envelope.id, message_path=message_path,
                               mailbox_directory=self.directory, hostname=self.hostname,
                               received=int(envelope.received), size=envelope.size,
                               digest=None if envelope.fresh else envelope.digest, targets=targets)
