# -*- test-case-name: tests.test_delivery_local -*-
"""Local delivery into one Maildir per recipient under ``<spool>/mailbox/``."""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient
from gomail.spool.fs import FileSystem
from gomail.spool.integrity import check_file

DELIVERED_REPLY = (250, "2.0.0 Delivered to mailbox")
_UNSAFE = re.compile(r"[^a-z0-9@._+=-]|^\.")


def mailbox_name(address: str) -> str:
    """The directory name for an address: lower-cased, anything unsafe %-escaped."""
    return _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", address.lower())


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
    """

    name = "mailbox"
    #: The name a writer process knows this delivery by (see L{gomail.spool.process}).
    job_target = "mailbox"
    #: A repeated delivery of the same copy is recognised (see _write_copy).
    idempotent = True
    #: The content is checked in the job itself (see _deliver_all), right before it is linked.
    checks_content = True

    def __init__(self, directory: str, hostname: str, writer: Any, fs: FileSystem | None = None) -> None:
        self.directory = directory
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.writer = writer
        self.fs = fs or FileSystem()
        self._boxes: set[str] = set()  # Maildirs known to exist (touched only by the writer thread)

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        # The index in the envelope (not in this call's list) names the file, so a
        # retry of a copy that was delivered before a crash finds it again.
        positions = {r.address: i for i, r in enumerate(envelope.recipients)}
        targets = [(positions.get(r.address, 0), r.address) for r in recipients]
        return self.writer.call(self, "_deliver_all", envelope, message_path, targets)

    def _deliver_all(self, envelope: Envelope, message_path: str, targets: list[tuple[int, str]]) -> Any:
        """
        (writer, generator) Link every copy into its Maildir's new/ (or write
        it into tmp/), yield the descriptors of written copies for the writer
        to fsync, then rename those into new/; ends with the results and the
        new/ directories to fsync.
        """
        results: dict[str, tuple[int, str]] = {}
        try:
            check_file(envelope.id, message_path, envelope.size, None if envelope.fresh else envelope.digest)
        except OSError as e:
            # Unreadable (gone, I/O error): temporary, as a failed copy is. (No early return:
            # this is a generator job, it must reach its yield.)
            results = {address: (451, f"4.3.0 Mailbox write failed: {e.strerror}") for _, address in targets}
            targets = []
        copies: list[tuple[str, str, str, int]] = []  # written copies: address, tmp, final, fd
        touched = []
        try:
            for index, address in targets:
                try:
                    copy = self._write_copy(envelope, message_path, address, index)
                except OSError as e:
                    results[address] = (451, f"4.3.0 Mailbox write failed: {e.strerror}")
                    continue
                if isinstance(copy, str):
                    results[address] = DELIVERED_REPLY  # linked into new/ (now, or by an earlier attempt)
                    touched.append(copy)
                else:
                    copies.append(copy)
            try:
                yield [fd for _, _, _, fd in copies]
                synced = True
            except OSError as e:
                synced, error = False, e
        finally:
            for _, _, _, fd in copies:
                self.fs.close(fd)
        for address, tmp, final, _ in copies:
            try:
                if not synced:
                    raise error
                self.fs.rename(tmp, final)
                touched.append(os.path.dirname(final))
                results[address] = DELIVERED_REPLY
            except OSError as e:
                self.fs.unlink(tmp)
                results[address] = (451, f"4.3.0 Mailbox write failed: {e.strerror}")
        return results, touched

    def _write_copy(self, envelope: Envelope, message_path: str, address: str,
                    index: int) -> tuple[str, str, str, int] | str:
        """
        Link one copy into new/ and return that directory (also when an earlier
        attempt put it there), or write it into tmp/ (not yet fsynced) and
        return (address, tmp, final, descriptor).
        """
        box = os.path.join(self.directory, mailbox_name(address))
        if box not in self._boxes:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(box, sub), mode=0o700, exist_ok=True)
            self._boxes.add(box)
        name = f"{int(envelope.received)}.{envelope.id}_{index}.{self.hostname}"
        new = os.path.join(box, "new")
        final = os.path.join(new, name)
        try:
            self.fs.link(message_path, final)
            return new
        except FileExistsError:
            # Delivered before a crash: still in new/ unless a mail reader already
            # moved it to cur/ (then it is delivered again: at least once).
            return new
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        if os.path.exists(final):
            return new
        tmp = os.path.join(box, "tmp", name)
        self.fs.unlink(tmp)
        fd = self.fs.create(tmp)
        try:
            with open(message_path, "rb") as source:
                while data := source.read(1 << 20):
                    self.fs.write(fd, [data])
        except BaseException:
            self.fs.close(fd)
            self.fs.unlink(tmp)
            raise
        return address, tmp, final, fd
