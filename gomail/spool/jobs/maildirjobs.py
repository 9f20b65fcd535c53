# -*- test-case-name: tests.test_delivery_local -*-
"""
Local delivery's job: a queued message linked (or copied) into one Maildir
per recipient (see L{gomail.delivery.maildir} for the design, and
L{gomail.spool.jobs} for what a job is).
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from gomail.spool.integrity import check_file
from gomail.spool.jobs import SpoolFiles

DELIVERED_REPLY = (250, "2.0.0 Delivered to mailbox")
_UNSAFE = re.compile(r"[^a-z0-9@._+=-]|^\.")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    # Two hex digits below 0x100 (the names made so far); above, "%u" and six: a
    # variable width ("%1234" for both "ģ4" and "ሴ") gave two users one Maildir.
    return f"%{code:02X}" if code < 0x100 else f"%u{code:06X}"


def mailbox_name(address: str) -> str:
    """
    The directory name for an address: lower-cased, anything unsafe
    %-escaped, one name per address ("%" itself is escaped, and "u" is no hex
    digit, so the two escape forms cannot be confused).
    """
    return _UNSAFE.sub(_escape, address.lower())


def safe_hostname(hostname: str) -> str:
    """The host name as it may appear in a Maildir file name (no C{/}, no C{:})."""
    return hostname.replace("/", "_").replace(":", "_")


def link_into_maildirs(files: SpoolFiles, queue_id: str, message_path: str, mailbox_directory: str,
                       hostname: str, received: int, size: int, digest: str | None,
                       targets: list[tuple[int, str]]) -> Any:
    """
    (generator) Give every C{(index, address)} of C{targets} the message at
    C{message_path} in C{<mailbox_directory>/<address>/new/}: first check the
    file against C{size} and C{digest} (None: the size only), then link each
    copy (or write it into C{tmp/}), yield the descriptors of written copies
    for the writer to fsync, then rename those into C{new/}. Returns
    C{{address: (code, text)}}, and the C{new/} directories to fsync. The
    file name comes from the queue id, C{received} and the recipient's
    C{index} in the envelope, so a copy delivered before a crash is found
    again and not delivered twice.
    """
    results: dict[str, tuple[int, str]] = {}
    try:
        check_file(queue_id, message_path, size, digest)
    except OSError as e:
        # Unreadable (gone, I/O error): temporary, as a failed copy is. (No early return:
        # this is a generator job, it must reach its yield.)
        results = {address: (451, f"4.3.0 Mailbox write failed: {e.strerror}") for _, address in targets}
        targets = []
    fs = files.fs
    copies: list[tuple[str, str, str, int]] = []  # written copies: address, tmp, final, fd
    touched = []
    name = f"{received}.{queue_id}_{{}}.{hostname}"
    try:
        for index, address in targets:
            try:
                copy = _link_or_write(files, message_path, os.path.join(mailbox_directory, mailbox_name(address)),
                                      name.format(index), address)
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
            fs.close(fd)
    for address, tmp, final, _ in copies:
        try:
            if not synced:
                raise error
            fs.rename(tmp, final)
            touched.append(os.path.dirname(final))
            results[address] = DELIVERED_REPLY
        except OSError as e:
            fs.unlink(tmp)
            results[address] = (451, f"4.3.0 Mailbox write failed: {e.strerror}")
    return results, touched


def _link_or_write(files: SpoolFiles, message_path: str, box: str, name: str,
                   address: str) -> tuple[str, str, str, int] | str:
    """
    Link one copy into C{box}/new/ and return that directory (also when an
    earlier attempt put it there), or write it into tmp/ (not yet fsynced)
    and return (address, tmp, final, descriptor).
    """
    fs = files.fs
    if box not in files.mailboxes:
        # The Maildir itself too (makedirs gives the directories it adds on the way the umask's mode):
        # one user's mail is no other local user's to list.
        os.makedirs(box, mode=0o700, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(box, sub), mode=0o700, exist_ok=True)
        files.mailboxes.add(box)
    new = os.path.join(box, "new")
    final = os.path.join(new, name)
    try:
        fs.link(message_path, final)
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
    fs.unlink(tmp)
    fd = fs.create(tmp)
    try:
        with open(message_path, "rb") as source:
            while data := source.read(1 << 20):
                fs.write(fd, [data])
    except BaseException:
        fs.close(fd)
        fs.unlink(tmp)
        raise
    return address, tmp, final, fd
