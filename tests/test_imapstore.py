"""gomail.mailaccess.imapstore's blocking folder work, against races a review found."""

from __future__ import annotations

import io
import os

from twisted.trial.unittest import TestCase

from gomail.mailaccess import imapstore


class StoreRaceTests(TestCase):
    """Two sessions on one folder."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.folder, sub))

    def add(self) -> imapstore.Entry:
        uid = imapstore.add_message(self.folder, io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), frozenset(), 1.0e9,
                                    1.0e9, "test")
        return next(e for e in imapstore.sync(self.folder, 1.0e9).entries if e.uid == uid)

    def test_expunge_keeps_a_message_no_longer_deleted(self) -> None:
        """
        Session B saw \\Deleted, session A cleared it since: B's EXPUNGE keeps
        the message (it unlinked it by B's stale view before).
        """
        entry = self.add()
        [(_, deleted_name)] = imapstore.set_flags(self.folder, [(entry, frozenset({"\\Deleted"}))])
        seen_by_b = imapstore.Entry(entry.uid, entry.unique, deleted_name, entry.size, entry.mtime,
                                    frozenset({"\\Deleted"}))
        imapstore.set_flags(self.folder, [(seen_by_b, frozenset())])  # A clears it
        gone, removed = imapstore.expunge(self.folder, [seen_by_b])
        self.assertEqual((gone, removed), (set(), 0))
        self.assertEqual(len(os.listdir(os.path.join(self.folder, "cur"))), 1)
        # Deleted again (by a session that saw it cleared): removed, its octets counted.
        refreshed = imapstore.Entry(entry.uid, entry.unique, deleted_name, entry.size, entry.mtime, frozenset())
        imapstore.set_flags(self.folder, [(refreshed, frozenset({"\\Deleted"}))])
        gone, removed = imapstore.expunge(self.folder, [seen_by_b])
        self.assertEqual((gone, removed > 0), ({entry.unique}, True))
        self.assertEqual(os.listdir(os.path.join(self.folder, "cur")), [])

    def test_flag_changes_apply_to_the_flags_on_disk(self) -> None:
        """
        Session B's view is stale: A set \\Flagged and cleared the \\Deleted B
        still sees. B adding \\Seen keeps A's \\Flagged and does not bring
        \\Deleted back, so B's EXPUNGE removes nothing (it did: data loss).
        """
        entry = self.add()
        [(_, deleted_name)] = imapstore.set_flags(self.folder, [(entry, frozenset({"\\Deleted"}))])
        seen_by_b = imapstore.Entry(entry.uid, entry.unique, deleted_name, entry.size, entry.mtime,
                                    frozenset({"\\Deleted"}))
        seen_by_a = imapstore.Entry(entry.uid, entry.unique, deleted_name, entry.size, entry.mtime,
                                    frozenset({"\\Deleted"}))
        imapstore.set_flags(self.folder, [(seen_by_a, frozenset({"\\Flagged"}))])  # A: -\Deleted +\Flagged
        [(_, name)] = imapstore.set_flags(self.folder, [(seen_by_b, frozenset({"\\Deleted", "\\Seen"}))])
        self.assertEqual(imapstore.flags_of(name), frozenset({"\\Flagged", "\\Seen"}))
        self.assertEqual(imapstore.expunge(self.folder, [seen_by_b]), (set(), 0))
        self.assertEqual(len(os.listdir(os.path.join(self.folder, "cur"))), 1)

    def test_uid_kept_when_numbered_meanwhile(self) -> None:
        """A message another session's sync numbered between APPEND's rename and its list update keeps that UID."""
        self.add()
        real_rename = os.rename
        seen: list[int] = []

        def rename_then_sync(source: str, target: str) -> None:
            real_rename(source, target)
            if f"{os.sep}tmp{os.sep}" in source:  # APPEND's rename into cur/: another session syncs now
                seen.extend(e.uid for e in imapstore.sync(self.folder, 1.0e9).entries)

        self.patch(imapstore.os, "rename", rename_then_sync)
        uid = imapstore.add_message(self.folder, io.BytesIO(b"Subject: y\r\n\r\nbody\r\n"), frozenset(), 1.0e9,
                                    1.0e9, "test")
        self.patch(imapstore.os, "rename", real_rename)
        self.assertEqual(sorted(seen), [1, 2])
        self.assertEqual(uid, 2)  # the UID that sync gave it, not a new one
        self.assertEqual(sorted(e.uid for e in imapstore.sync(self.folder, 1.0e9).entries), [1, 2])


class RenameWhileOpeningTests(TestCase):
    """Readers against another session's flag change renaming the file they are about to open."""

    def test_open_follows_a_rename_between_look_up_and_open(self) -> None:
        """
        The file is renamed (a flag change) right after it was looked up:
        open_message looks again and opens it under its new name (FETCH
        answered NIL and SEARCH missed it when the two sessions raced).
        """
        folder = os.path.abspath(self.mktemp())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(folder, sub))
        uid = imapstore.add_message(folder, io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), frozenset(), 1.0e9, 1.0e9,
                                    "test")
        entry = next(e for e in imapstore.sync(folder, 1.0e9).entries if e.uid == uid)
        real_find = imapstore._find
        renamed: list[str] = []

        def find_then_rename(path: str, unique: str, filename: str) -> str | None:
            found = real_find(path, unique, filename)
            if found is not None and not renamed:
                renamed.append(imapstore.filename_with(os.path.basename(found), frozenset({"\\Flagged"})))
                os.rename(found, os.path.join(path, "cur", renamed[0]))
            return found

        self.patch(imapstore, "_find", find_then_rename)
        with imapstore.open_message(folder, entry) as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody\r\n")
        self.assertEqual(len(renamed), 1)

    def test_gone_is_file_not_found(self) -> None:
        """A message removed (EXPUNGE elsewhere) is FileNotFoundError, as before."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(folder, "cur"))
        entry = imapstore.Entry(1, "1.gone.test", "1.gone.test:2,", 1, 1.0)
        self.assertRaises(FileNotFoundError, imapstore.open_message, folder, entry)


class UIDListEdgeTests(TestCase):
    """The UID list against file names and losses no delivery makes."""

    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.folder, sub))

    def put(self, name: bytes) -> None:
        with open(os.path.join(os.fsencode(self.folder), b"cur", name), "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")

    def test_undecodable_names_keep_their_uids(self) -> None:
        """A file name that is no UTF-8 (another program's) gets a UID, kept across syncs (a restart reads the list)."""
        self.put(b"1700000000.caf\xe9.host:2,S")
        self.put(b"1700000001.plain.host:2,")
        first = imapstore.sync(self.folder, 1.0e9)
        again = imapstore.sync(self.folder, 1.0e9 + 10)
        self.assertEqual([(e.uid, e.unique) for e in first.entries], [(e.uid, e.unique) for e in again.entries])
        self.assertEqual(sorted(e.uid for e in again.entries), [1, 2])
        self.assertEqual(again.uidvalidity, first.uidvalidity)

    def test_names_with_line_ends_are_skipped(self) -> None:
        """A file name holding a newline cannot be a line of the list: it is not listed, the others are."""
        self.put(b"1700000000.bad\nname:2,")
        self.put(b"1700000001.good.host:2,")
        state = imapstore.sync(self.folder, 1.0e9)
        self.assertEqual([e.unique for e in state.entries], ["1700000001.good.host"])
        self.assertEqual([e.uid for e in imapstore.sync(self.folder, 1.0e9).entries], [1])

    def test_lost_list_gets_a_new_uidvalidity_in_the_same_second(self) -> None:
        """The UID list lost and remade within one second: UIDVALIDITY still changes (the UIDs start over)."""
        self.put(b"1700000000.one.host:2,")
        first = imapstore.sync(self.folder, 1.0e9)
        os.unlink(os.path.join(self.folder, imapstore.UIDLIST))
        second = imapstore.sync(self.folder, 1.0e9)
        self.assertGreater(second.uidvalidity, first.uidvalidity)

    def test_folder_locks_do_not_pile_up(self) -> None:
        """Folder locks are forgotten once no thread uses them: a thousand folders synced leave none behind."""
        for n in range(1000):
            imapstore.sync(os.path.join(self.folder, f".f{n}"), 1.0e9)
        self.assertEqual(len(imapstore._locks), 0)
