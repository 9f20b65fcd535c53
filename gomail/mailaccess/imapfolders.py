# -*- test-case-name: tests.test_imap -*-
"""
IMAP folders over a Maildir (blocking: run in the I/O pool): Maildir++
subfolders C{.Name} (the name in modified UTF-7) of the user's Maildir,
which is INBOX; their names checked before any path is made from them
(L{folder_path}); CREATE, DELETE, RENAME; subscriptions in the file
C{subscriptions}; the octets all folders hold (the quota count).
"""

from __future__ import annotations

import os
import shutil

# Registers the codec "imap4-utf-7" folder names are written in: the quota count (usage) runs
# for local delivery too, also when no IMAP module was imported (imap.enabled = false).
import twisted.mail.imap4  # noqa: F401

from gomail.mailaccess.imapstore import (
    DELIMITER,
    FolderError,
    fsync_directory,
    make_maildir,
    write_atomically,
)

MAX_FOLDER_NAME = 200
SUBSCRIPTIONS = "subscriptions"


def check_folder_name(name: str) -> str:
    """
    C{name} if a folder may have it: not empty, at most 200 characters, no
    C{/}, C{\\}, NUL or other control character, no wildcard, not starting or
    ending with the delimiter, no empty level (C{..}), not under INBOX.

    @raise FolderError: otherwise.
    """
    if not name or len(name) > MAX_FOLDER_NAME:
        raise FolderError("Invalid mailbox name")
    if any(c in "/\\*%" or ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise FolderError("Invalid mailbox name")
    levels = name.split(DELIMITER)
    if any(level == "" for level in levels) or name.startswith("."):
        raise FolderError("Invalid mailbox name")
    if levels[0].upper() == "INBOX":
        raise FolderError("Invalid mailbox name: INBOX has no folders under it here")
    return name


def folder_path(root: str, name: str) -> str:
    """
    The directory of folder C{name} in the Maildir C{root} (C{root} itself
    for INBOX), checked to be a direct child of C{root}.

    @raise FolderError: for a name no folder may have.
    """
    if name.upper() == "INBOX":
        return root
    check_folder_name(name)
    directory = "." + name.encode("imap4-utf-7").decode("ascii")
    root = os.path.normpath(root)
    path = os.path.normpath(os.path.join(root, directory))
    if os.path.dirname(path) != root or not os.path.basename(path).startswith("."):
        raise FolderError("Invalid mailbox name")
    return path


def list_folders(root: str) -> list[str]:
    """(blocking) INBOX and the folders of the Maildir C{root} with a valid name, sorted."""
    names = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if not entry.startswith(".") or entry in (".", ".."):
            continue
        try:
            name = entry[1:].encode("ascii").decode("imap4-utf-7")
            check_folder_name(name)
        except (UnicodeError, FolderError):
            continue
        if os.path.isdir(os.path.join(root, entry, "cur")):
            names.append(name)
    return ["INBOX", *sorted(names)]


def folder_exists(root: str, name: str) -> bool:
    """(blocking) Whether C{name} is a folder (INBOX always is)."""
    return name.upper() == "INBOX" or os.path.isdir(os.path.join(folder_path(root, name), "cur"))


def create_folder(root: str, name: str) -> None:
    """(blocking) Create folder C{name}. @raise FolderError: a bad name, INBOX, or one that exists."""
    if name.upper() == "INBOX":
        raise FolderError("INBOX always exists")
    path = folder_path(root, name)
    if os.path.exists(path):
        raise FolderError("Mailbox already exists")
    make_maildir(root)
    make_maildir(path)
    open(os.path.join(path, "maildirfolder"), "wb").close()  # Maildir++'s marker
    fsync_directory(root)


def _children(root: str, name: str) -> list[str]:
    return [n for n in list_folders(root) if n.startswith(name + DELIMITER)]


def delete_folder(root: str, name: str) -> int:
    """
    (blocking) Remove folder C{name} and its messages: the octets they
    held (the quota count goes down by as much).

    @raise FolderError: INBOX, none, or one with folders under it.
    """
    if name.upper() == "INBOX":
        raise FolderError("INBOX cannot be deleted")
    if not folder_exists(root, name):
        raise FolderError("No such mailbox")
    if _children(root, name):
        raise FolderError("Mailbox has inferior hierarchical names: delete them first")
    path = folder_path(root, name)
    # Out of sight in one step (a rename into INBOX's tmp/), then removed.
    trash = os.path.join(root, "tmp", "deleted-folder-" + os.urandom(8).hex())
    os.makedirs(os.path.join(root, "tmp"), mode=0o700, exist_ok=True)
    os.rename(path, trash)
    fsync_directory(root)
    removed = _octets(trash)  # counted after the rename: what the folder held as it went
    shutil.rmtree(trash, ignore_errors=True)
    return removed


def rename_folder(root: str, old: str, new: str) -> None:
    """(blocking) Rename folder C{old} (and those under it) to C{new}. @raise FolderError: see the checks."""
    if old.upper() == "INBOX" or new.upper() == "INBOX":
        raise FolderError("INBOX cannot be renamed, nor another mailbox to INBOX")
    check_folder_name(new)
    if not folder_exists(root, old):
        raise FolderError("No such mailbox")
    if folder_exists(root, new) or os.path.exists(folder_path(root, new)):
        raise FolderError("Mailbox already exists")
    if new.startswith(old + DELIMITER):
        raise FolderError("A mailbox cannot be moved under itself")
    moves = [(old, new)] + [(child, new + child[len(old):]) for child in _children(root, old)]
    for source, target in moves:
        check_folder_name(target)
    for source, target in moves:
        os.rename(folder_path(root, source), folder_path(root, target))
    fsync_directory(root)


def read_subscriptions(root: str) -> list[str]:
    """(blocking) The subscribed folder names (one per line in C{subscriptions})."""
    try:
        with open(os.path.join(root, SUBSCRIPTIONS), encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def write_subscriptions(root: str, names: list[str]) -> None:
    """(blocking) Replace the subscriptions, atomically."""
    make_maildir(root)
    write_atomically(os.path.join(root, SUBSCRIPTIONS), "".join(n + "\n" for n in names).encode("utf-8"))


def usage(root: str) -> int:
    """(blocking) Octets in the messages of every folder of the Maildir C{root}."""
    return sum(_octets(folder_path(root, name)) for name in list_folders(root))


def _octets(path: str) -> int:
    """(blocking) Octets in the messages (C{cur/} and C{new/}) of the one folder at C{path}."""
    total = 0
    for sub in ("cur", "new"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                for item in entries:
                    if item.is_file(follow_symlinks=False) and not item.name.startswith("."):
                        total += item.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


__all__ = ["check_folder_name", "create_folder", "delete_folder", "folder_exists", "folder_path", "list_folders", "read_subscriptions", "rename_folder", "usage", "write_subscriptions"]
