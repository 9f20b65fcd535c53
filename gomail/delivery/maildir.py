"""Local delivery into one Maildir per recipient under ``<spool>/mailbox/``."""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient
from gomail.spool.fs import FileSystem

_UNSAFE = re.compile(r"[^a-z0-9@._+=-]|^\.")


def mailbox_name(address: str) -> str:
    """The directory name for an address: lower-cased, anything unsafe %-escaped."""
    return _UNSAFE.sub(lambda m: "%{:02X}".format(ord(m.group())), address.lower())


@implementer(IDeliveryAgent)
class MaildirDelivery:
    """
    Writes each recipient's copy to ``mailbox/<address>/new/`` the Maildir way:
    into ``tmp/``, fsynced, renamed into ``new/``, directory fsynced. The file
    name is derived from the queue id, so a copy delivered before a crash is
    recognised and not delivered twice.
    """

    name = "mailbox"

    def __init__(self, directory: str, hostname: str, run: Callable[..., Deferred],
                 fs: FileSystem | None = None) -> None:
        self.directory = directory
        self.hostname = hostname.replace("/", "_").replace(":", "_")
        self.run = run
        self.fs = fs or FileSystem()

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        # The index in the envelope (not in this call's list) names the file, so a
        # retry of a copy that was delivered before a crash finds it again.
        positions = {r.address: i for i, r in enumerate(envelope.recipients)}
        targets = [(positions.get(r.address, 0), r.address) for r in recipients]
        return self.run(self._deliver_all, envelope, message_path, targets)

    def _deliver_all(self, envelope: Envelope, message_path: str, targets: list[tuple[int, str]]) -> dict[str, Any]:
        results = {}
        for index, address in targets:
            try:
                self._deliver_one(envelope, message_path, address, index)
                results[address] = (250, "2.0.0 Delivered to mailbox")
            except OSError as e:
                results[address] = (451, f"4.3.0 Mailbox write failed: {e.strerror}")
        return results

    def _deliver_one(self, envelope: Envelope, message_path: str, address: str, index: int) -> None:
        box = os.path.join(self.directory, mailbox_name(address))
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(box, sub), mode=0o700, exist_ok=True)
        name = f"{int(envelope.received)}.{envelope.id}_{index}.{self.hostname}"
        final = os.path.join(box, "new", name)
        if os.path.exists(final) or any(n.startswith(name) for n in os.listdir(os.path.join(box, "cur"))):
            return
        tmp = os.path.join(box, "tmp", name)
        self.fs.unlink(tmp)
        fd = self.fs.create(tmp)
        try:
            with open(message_path, "rb") as source:
                # Maildir files use LF line endings.
                for line in source:
                    if line.endswith(b"\r\n"):
                        line = line[:-2] + b"\n"
                    self.fs.write(fd, [line])
            self.fs.fsync(fd)
        finally:
            self.fs.close(fd)
        self.fs.rename(tmp, final)
        self.fs.fsync_directory(os.path.join(box, "new"))
