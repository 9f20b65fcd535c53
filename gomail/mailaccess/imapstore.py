# -*- test-case-name: tests.test_imap -*-
"""
The blocking Maildir work behind IMAP's messages (L{gomail.mailaccess.imapmailbox}
runs it in the spool's I/O pool): UIDs, flags, APPEND, COPY, EXPUNGE. The
folders themselves are L{gomail.mailaccess.imapfolders}.

Layout (Maildir++, as Dovecot and Courier keep it): the user's Maildir
(the one delivery and POP3 use, L{gomail.mailaccess.maildir.mailbox_path})
is INBOX; the folder C{A.B} is the directory C{.A.B} under it (the name in
modified UTF-7, RFC 3501 5.1.3), with its own C{tmp/ new/ cur/}. Folder
names are checked (L{gomail.mailaccess.imapfolders.folder_path}) before any path is made from them.

UIDs: each folder keeps C{gomail-uidlist}: a first line C{1 <uidvalidity>
<next uid>}, then C{<uid> <unique name>} per message. It is rewritten
atomically (temporary file, fsync, rename, fsync of the directory) whenever
a message gets a UID or goes, under a per-folder lock, so UIDVALIDITY and
UIDs survive restarts and every session of this process sees the same ones.
A missing or unreadable list starts a new UIDVALIDITY (greater than any
before it: it is the time), as RFC 3501 2.3.1.1 asks when UIDs cannot be
kept.

Flags live in the file name's info (C{:2,} then letters in ASCII order:
D Draft, F Flagged, R Answered, S Seen, T Deleted); changing them is a
rename within C{cur/}.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import BinaryIO

from gomail.mailaccess.maildir import INFO, unique_name

UIDLIST = "gomail-uidlist"
#: IMAP system flag <-> Maildir info letter.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
#: The hierarchy delimiter (Maildir++).
DELIMITER = "."
#: Bytes of a message file read at a time (FETCH, the MIME index, SEARCH, copies).
BLOCK = 64 * 1024

# A folder's lock lives while some thread holds or waits for it: folders created and deleted
# over months leave no entries behind.
_locks: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_locks_guard = threading.Lock()
# The last UIDVALIDITY this process gave each folder: a list lost and remade within the
# same second must not get the same one again (the UIDs start over).
_last_uidvalidity: dict[str, int] = {}


class FolderError(Exception):
    """A folder operation refused: the text is the client's answer (IMAP C{NO}), never a path."""


def _lock(path: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(os.path.normpath(path), threading.Lock())


@dataclass
class Entry:
    """One message of a folder: its UID, unique name, file name in C{cur/}, size, time and system flags."""

    uid: int
    unique: str
    filename: str
    size: int
    mtime: float
    flags: frozenset[str] = field(default_factory=frozenset)


@dataclass
class FolderState:
    """A folder as L{sync} found it; C{recent}: the UIDs of messages this sync moved out of C{new/}."""

    uidvalidity: int
    uidnext: int
    entries: list[Entry]
    recent: set[int]


def flags_of(filename: str) -> frozenset[str]:
    """The system flags in a file name's info (letters after C{:2,})."""
    _, _, info = filename.partition(":")
    if not info.startswith("2,"):
        return frozenset()
    return frozenset(LETTER_FLAGS[c] for c in info[2:] if c in LETTER_FLAGS)


def filename_with(filename: str, flags: frozenset[str]) -> str:
    """C{filename} with its info's system flags replaced by C{flags} (other letters kept)."""
    unique, _, info = filename.partition(":")
    other = {c for c in info[2:] if c not in LETTER_FLAGS} if info.startswith("2,") else set()
    letters = other | {FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS}
    return unique + INFO + "".join(sorted(letters))


def _read_uidlist(path: str) -> tuple[int, int, dict[str, int]] | None:
    try:
        # surrogateescape: a file name that is no UTF-8 (another program's) round-trips as os.listdir gives it.
        with open(os.path.join(path, UIDLIST), encoding="utf-8", errors="surrogateescape") as f:
            first = f.readline().split()
            if len(first) != 3 or first[0] != "1":
                return None
            uidvalidity, uidnext = int(first[1]), int(first[2])
            uids: dict[str, int] = {}
            for line in f:
                uid, _, unique = line.rstrip("\n").partition(" ")
                if unique:
                    uids[unique] = int(uid)
    except (FileNotFoundError, ValueError, UnicodeError):
        return None
    return uidvalidity, uidnext, uids


def _write_uidlist(path: str, uidvalidity: int, uidnext: int, uids: dict[str, int]) -> None:
    lines = [f"1 {uidvalidity} {uidnext}\n"] + [f"{uid} {unique}\n" for unique, uid in
                                                   sorted(uids.items(), key=lambda item: item[1])]
    write_atomically(os.path.join(path, UIDLIST), "".join(lines).encode("utf-8", "surrogateescape"))


def make_maildir(path: str) -> None:
    """
    (blocking) Make the Maildir C{path} and its C{tmp/ new/ cur/}, each
    mode 0700 as delivery makes them (mail is private; C{os.makedirs} would
    give the folder itself the default mode, 0755 under the usual umask).
    Directories that exist are left as they are.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def write_atomically(target: str, data: bytes) -> None:
    temporary = f"{target}.tmp.{os.getpid()}.{threading.get_ident()}"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, target)
    fsync_directory(os.path.dirname(target))


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_uidvalidity(path: str, now: float, exists: bool) -> int:
    """A UIDVALIDITY for a folder starting a new UID list: the time, past any this process gave it before."""
    key = os.path.normpath(path)
    with _locks_guard:  # I/O threads hold only their own folder's lock
        uidvalidity = max(int(now), _last_uidvalidity.get(key, 0) + 1, 1)
        if exists:  # (a folder not made yet is only looked at: nothing to remember)
            _last_uidvalidity.pop(key, None)
            _last_uidvalidity[key] = uidvalidity
            if len(_last_uidvalidity) > 10_000:  # bounded; a folder remembered this long ago is seconds behind
                del _last_uidvalidity[next(iter(_last_uidvalidity))]
    return uidvalidity


def _listing(path: str) -> tuple[dict[str, tuple[str, os.stat_result]], set[str]]:
    """The messages of C{cur/} (new/ moved there first): unique -> (file name, stat), and the uniques moved."""
    cur, new = os.path.join(path, "cur"), os.path.join(path, "new")
    found: dict[str, tuple[str, os.stat_result]] = {}
    moved: set[str] = set()
    for sub, directory in (("cur", cur), ("new", new)):
        try:
            names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
        except FileNotFoundError:
            continue
        for name in names:
            if "\n" in name or "\r" in name:
                continue  # cannot be a line of the UID list (no delivery makes such names)
            unique = unique_name(name)
            try:
                st = os.stat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if unique in found:
                if sub == "new" and found[unique][1].st_size == st.st_size:
                    _unlink(os.path.join(directory, name))  # a repeated delivery (see maildir.scan)
                continue
            if sub == "new":
                target = name if ":" in name else name + INFO
                try:
                    os.makedirs(cur, mode=0o700, exist_ok=True)
                    os.rename(os.path.join(directory, name), os.path.join(cur, target))
                except FileNotFoundError:
                    continue
                name = target
                moved.add(unique)
            found[unique] = (name, st)
    return found, moved


def sync(path: str, now: float) -> FolderState:
    """
    (blocking) The folder at C{path} with a UID for every message: new
    mail moved to C{cur/} (reported in C{recent}), new messages numbered
    from the list's next UID in arrival order, messages gone dropped; the
    UID list rewritten when it changed. A folder that does not exist yet
    (INBOX before its first mail) is empty.
    """
    with _lock(path):
        found, moved = _listing(path)
        stored = _read_uidlist(path)
        if stored is None:
            changed = os.path.isdir(path)
            uidvalidity, uidnext, uids = _new_uidvalidity(path, now, changed), 1, dict[str, int]()
        else:
            uidvalidity, uidnext, uids = stored
            changed = False
        kept = {unique: uid for unique, uid in uids.items() if unique in found}
        changed = changed or len(kept) != len(uids)
        fresh = sorted((u for u in found if u not in kept), key=lambda u: (found[u][1].st_mtime, u))
        for unique in fresh:
            kept[unique] = uidnext
            uidnext += 1
        if (fresh or changed) and os.path.isdir(path):
            _write_uidlist(path, uidvalidity, uidnext, kept)
        entries = sorted((Entry(uid, unique, found[unique][0], found[unique][1].st_size, found[unique][1].st_mtime,
                                flags_of(found[unique][0])) for unique, uid in kept.items()), key=lambda e: e.uid)
        return FolderState(uidvalidity, uidnext, entries, {kept[u] for u in moved})


def listed_names(cur: str) -> dict[str, str]:
    """
    (blocking) The file names in C{cur} by unique name (one listing): where
    a message whose listed name is gone (renamed by another session's flag
    change) is now. A missing directory lists nothing.
    """
    names: dict[str, str] = {}
    try:
        for name in os.listdir(cur):
            if not name.startswith("."):
                names.setdefault(unique_name(name), name)
    except FileNotFoundError:
        pass
    return names


def _find(path: str, unique: str, filename: str) -> str | None:
    cur = os.path.join(path, "cur")
    if os.path.exists(os.path.join(cur, filename)):
        return os.path.join(cur, filename)
    name = listed_names(cur).get(unique)
    return None if name is None else os.path.join(cur, name)


def message_path(path: str, entry: Entry) -> str:
    """(blocking) The current path of C{entry}'s file. @raise FileNotFoundError: it is gone."""
    found = _find(path, entry.unique, entry.filename)
    if found is None:
        raise FileNotFoundError(f"message {entry.unique} is gone")
    return found


def open_message(path: str, entry: Entry) -> BinaryIO:
    """
    (blocking) C{entry}'s file, open for reading. Another session's flag
    change renames it (without this folder's lock: readers take none) and
    may do so between the look-up and the open: it is looked up again, a
    few times. @raise FileNotFoundError: it is gone.
    """
    for _ in range(_OPEN_TRIES):
        found = _find(path, entry.unique, entry.filename)
        if found is None:
            break
        try:
            return open(found, "rb")  # the caller closes it
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"message {entry.unique} is gone")


#: Looks for a message renamed while it is opened (each loses only to a flag change in between).
_OPEN_TRIES = 5


def set_flags(path: str, changes: list[tuple[Entry, frozenset[str]]]) -> list[tuple[Entry, str]]:
    r"""
    (blocking) Give each entry its new flags (a rename); the new file names
    (entries gone are left out). What changes is what the session changed
    against its view (C{entry.flags}), applied to the flags on disk now:
    another session's changes meanwhile are kept (writing the session's
    whole, stale view lost them, and brought back a \Deleted another
    session had cleared, for an EXPUNGE to remove).
    """
    done = []
    with _lock(path):
        for entry, flags in changes:
            current = _find(path, entry.unique, entry.filename)
            if current is None:
                continue
            on_disk = flags_of(os.path.basename(current))
            wanted = (on_disk | (flags - entry.flags)) - (entry.flags - flags)
            name = filename_with(os.path.basename(current), wanted)
            if name != os.path.basename(current):
                os.rename(current, os.path.join(path, "cur", name))
            done.append((entry, name))
    return done


def expunge(path: str, entries: list[Entry]) -> tuple[set[str], int]:
    r"""
    (blocking) Remove those of C{entries} whose file still says \Deleted now
    (under the folder's lock, which flag changes take too: another session
    may have cleared the flag since this one looked). Returns the unique
    names now gone (removed here, or already gone) and the octets removed here.
    """
    gone: set[str] = set()
    removed = 0
    with _lock(path):
        for entry in entries:
            current = _find(path, entry.unique, entry.filename)
            if current is None:
                gone.add(entry.unique)
            elif "\\Deleted" in flags_of(os.path.basename(current)):
                size = os.stat(current).st_size
                _unlink(current)
                gone.add(entry.unique)
                removed += size
    return gone, removed


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _new_unique(now: float, hostname: str) -> str:
    return f"{int(now)}.{os.urandom(8).hex()}.{hostname}"


def add_message(path: str, source: BinaryIO | str, flags: frozenset[str], mtime: float, now: float,
                hostname: str) -> int:
    """
    (blocking) Store a message in folder C{path}: written into C{tmp/} and
    fsynced (or, when C{source} is a path, hard-linked there), renamed into
    C{cur/} with C{flags}, the directory fsynced, and given the next UID.
    Fires with that UID.
    """
    make_maildir(path)
    unique = _new_unique(now, hostname)
    temporary = os.path.join(path, "tmp", unique)
    if isinstance(source, str):
        try:
            os.link(source, temporary)
        except OSError:  # another file system (or no links): a copy
            with open(source, "rb") as f:
                _copy_into(f, temporary)
    else:
        _copy_into(source, temporary)
        os.utime(temporary, (mtime, mtime))
    os.rename(temporary, os.path.join(path, "cur", filename_with(unique, flags)))
    fsync_directory(os.path.join(path, "cur"))
    with _lock(path):
        stored = _read_uidlist(path)
        if stored is not None:
            uidvalidity, uidnext, uids = stored
            if unique in uids:
                return uids[unique]  # numbered meanwhile by another session's sync: that UID stands
            uids[unique] = uidnext
            _write_uidlist(path, uidvalidity, uidnext + 1, uids)
            return uidnext
    state = sync(path, now)  # no list yet: one is started (sync takes the lock itself)
    return next(e.uid for e in state.entries if e.unique == unique)


def _copy_into(source: BinaryIO, target: str) -> None:
    with open(target, "xb") as out:
        while True:
            block = source.read(BLOCK)
            if not block:
                break
            out.write(block)
        out.flush()
        os.fsync(out.fileno())


__all__ = ["BLOCK", "DELIMITER", "Entry", "FolderError", "FolderState", "add_message", "expunge", "filename_with",
           "flags_of", "fsync_directory", "listed_names", "make_maildir", "message_path", "open_message", "set_flags", "sync",
           "write_atomically"]
