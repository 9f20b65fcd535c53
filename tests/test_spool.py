"""
Tests for the durable spool (L{gomail.spool}): what a commit leaves on disk,
what a crash or an I/O error at any step leaves, and what recovery makes of it.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gomail.spool import fs as fs_module
from gomail.spool.envelope import (
    DELIVERED,
    FORMAT_VERSION,
    PENDING,
    Envelope,
    EnvelopeError,
    Recipient,
    new_queue_id,
)
from gomail.spool.fs import FileSystem, read_queued
from gomail.spool.incoming import IncomingMessage
from gomail.spool.jobs import queuejobs
from gomail.spool.recent import RecentContent
from gomail.spool.service import SpoolService
from gomail.spool.store import SUBDIRECTORIES, Spool, SpoolError
from tests.smtphelpers import ManualRun
from tests.spooltesting import (
    Crash,
    ScriptedFileSystem,
    listing,
    make_spool,
    new_envelope,
    read,
    start_commit,
    synchronous_run,
)

SMALL = b"Subject: hello\r\n\r\nHello, world.\r\n"
MEDIUM = b"Subject: medium\r\n\r\n" + b"x" * 3000 + b"\r\n"


def large_content() -> bytes:
    """A message of several FLUSH_AT blocks (and an odd tail), every line different."""
    lines, size, n = [], 0, 0
    while size < 5 * IncomingMessage.FLUSH_AT + 777:
        line = b"line %07d " % n + bytes(range(33, 127)) + b"\r\n"
        lines.append(line)
        size += len(line)
        n += 1
    return b"Subject: big\r\n\r\n" + b"".join(lines)


class SpoolTestCase(SynchronousTestCase):
    """Gives each test its own spool directory."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.clock = Clock()

    def spool(self, fs: ScriptedFileSystem | None = None, **kwargs: Any) -> Spool:
        if fs is not None:
            fs.root = self.directory
            self.addCleanup(fs.close_all)
        return make_spool(self.directory, self.clock, fs, **kwargs)

    def recovered(self) -> tuple[Spool, Any]:
        """A fresh spool on the same directory (as after a restart), prepared and recovered."""
        spool = make_spool(self.directory, self.clock)
        return spool, self.successResultOf(spool.recover())

    def queue_entry(self, queue_id: str, envelope: bytes | None, content: bytes | None = SMALL) -> None:
        """Put files into queue/ by hand."""
        queue = os.path.join(self.directory, "queue")
        os.makedirs(queue, exist_ok=True)
        if content is not None:
            with open(os.path.join(queue, queue_id + ".eml"), "wb") as f:
                f.write(content)
        if envelope is not None:
            with open(os.path.join(queue, queue_id + ".json"), "wb") as f:
                f.write(envelope)


class PrepareTests(SpoolTestCase):
    """L{Spool.prepare}, run once at start."""

    def test_creates_directories(self) -> None:
        """A spool directory that does not exist yet is created with tmp, queue, failed, corrupt and mailbox."""
        self.directory = os.path.join(self.directory, "nested", "spool")
        spool = self.spool()
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(SUBDIRECTORIES))
        for name in SUBDIRECTORIES:
            self.assertEqual(os.stat(spool.path(name)).st_mode & 0o777, 0o700, name)
        self.assertEqual(listing(spool, "tmp"), [])

    def test_empties_tmp(self) -> None:
        """Anything left in tmp/ (unfinished messages, envelope updates) is removed, and queue/ is untouched."""
        os.makedirs(os.path.join(self.directory, "tmp"))
        for name in ("0001.eml", "0001.json", "0002.json.new"):
            with open(os.path.join(self.directory, "tmp", name), "wb") as f:
                f.write(b"partial")
        self.queue_entry("0003", new_envelope("0003", content=SMALL).to_json())
        spool = self.spool()
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual(listing(spool, "queue"), ["0003.eml", "0003.json"])

    def test_counts_the_queue(self) -> None:
        """queued starts as the number of envelopes in queue/ once it is listed (before any is read)."""
        for queue_id in ("a1", "a2"):
            self.queue_entry(queue_id, new_envelope(queue_id, content=SMALL).to_json())
        self.queue_entry("a3", None)  # content without an envelope: not counted
        spool = self.spool()
        listed = self.successResultOf(spool.list_queue())
        self.assertEqual((spool.queued, listed.complete, listed.partial), (2, ["a1", "a2"], [("a3", {".eml"})]))

    def test_stale_write_probe(self) -> None:
        """A write probe left by a crash during an earlier start does not stop the next start."""
        os.makedirs(os.path.join(self.directory, "tmp"))
        with open(os.path.join(self.directory, "tmp", ".write-probe"), "wb") as f:
            f.write(b"probe")
        spool = self.spool()
        self.assertEqual(listing(spool, "tmp"), [])

    def test_unusable_directory(self) -> None:
        """A spool path that is a file gives a one-line SpoolError naming the directory."""
        with open(self.directory, "wb") as f:
            f.write(b"not a directory")
        spool = Spool(self.directory, self.clock, synchronous_run)
        error = self.assertRaises(SpoolError, spool.prepare)
        self.assertIn(f"spool directory {self.directory} is not usable", str(error))
        self.assertNotIn("\n", str(error))


class CommitTests(SpoolTestCase):
    """A message received and committed through L{IncomingMessage}."""

    def test_committed_files(self) -> None:
        """A commit leaves exactly queue/<id>.eml and queue/<id>.json, and nothing in tmp/."""
        spool = self.spool()
        envelope, d = start_commit(spool, SMALL, "a@example.com", "b@example.org", received=1234.5)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(listing(spool, "queue"), [f"{envelope.id}.eml", f"{envelope.id}.json"])
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual(read(spool.message_path(envelope.id)), SMALL)
        self.assertEqual(spool.message_path(envelope.id), spool.path("queue", envelope.id + ".eml"))

    def test_envelope_on_disk(self) -> None:
        """The .json is the envelope: sender, pending recipients, client, size and version."""
        spool = self.spool()
        envelope, d = start_commit(spool, SMALL, "a@example.com", "b@example.org", received=1234.5)
        self.successResultOf(d)
        raw = read(spool.path("queue", envelope.id + ".json"))
        data = json.loads(raw)
        self.assertEqual(data["version"], FORMAT_VERSION)
        self.assertEqual(data["sender"], "sender@example.com")
        self.assertEqual(data["recipients"], [
            {"address": "a@example.com", "status": PENDING, "reply": None},
            {"address": "b@example.org", "status": PENDING, "reply": None},
        ])
        self.assertEqual((data["client_address"], data["client_helo"]), ("192.0.2.1", "client.example"))
        self.assertEqual(data["size"], len(SMALL))
        self.assertEqual(data["received"], 1234.5)
        self.assertEqual(Envelope.from_json(raw), envelope)

    def test_large_message_is_byte_identical(self) -> None:
        """Content several FLUSH_AT long is streamed in several writes and lands byte for byte."""
        content = large_content()
        fs = ScriptedFileSystem()
        spool = self.spool(fs)
        envelope, d = start_commit(spool, content, chunk=7001)
        self.successResultOf(d)
        self.assertEqual(read(spool.message_path(envelope.id)), content)
        self.assertEqual(envelope.size, len(content))
        content_writes = [s for s in fs.steps if s.startswith("write ")][:-1]  # the last one is the envelope
        self.assertGreaterEqual(len(content_writes), 5)
        self.assertEqual(sum(int(s.split()[1]) for s in content_writes), len(content))
        self.assertEqual(fs.open_fds, set())

    def test_transparency_recorded(self) -> None:
        """
        The envelope says whether the content can go out as DATA unchanged
        (CRLF only, no line starting with a dot), however it was cut into writes.
        """
        cases = [
            (SMALL, True),
            (large_content(), True),
            (b"Subject: a\r\n\r\nx.y\r\n", True),  # chunks of 1 and 2: "." starts a write, not a line
            (b"Subject: a\r\n\r\n.dot\r\n", False),
            (b"Subject: a\r\n\r\nbare\nlf\r\n", False),
            (b"Subject: a\r\n\r\nbare\rcr\r\n", False),
            (b"Subject: a\r\n\r\nno line end", False),
        ]
        spool = self.spool()
        for content, transparent in cases:
            for chunk in ((7001,) if len(content) > 7001 else (1, 2, 3, 7001)):
                envelope, d = start_commit(spool, content, chunk=chunk)
                self.successResultOf(d)
                on_disk = json.loads(read(spool.path("queue", envelope.id + ".json")))
                self.assertEqual((envelope.transparent, on_disk["transparent"]), (transparent, transparent),
                                 (content[:40], chunk))

    def test_checked_lines_after_a_partial_line(self) -> None:
        """Lines the DATA reader checked do not make up for what came before them ending mid-line."""
        spool = self.spool()
        for first, transparent in ((b"X-A: 1\r\n", True), (b"X-A: 1\r", False), (b"X-A: 1", False)):
            message = spool.new_message()
            message.write(first)
            message.write(b"y\r\n", lines_checked=True)
            envelope = new_envelope(message.id)
            self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
            self.assertEqual(envelope.transparent, transparent, first)

    def test_prepended_fields_count_for_transparency(self) -> None:
        """Header fields a plugin puts first keep the message transparent only when they are themselves."""
        spool = self.spool()
        for fields, transparent in ((b"X-A: 1\r\n", True), (b"X-A: 1\n", False), (b"X-A: 1\r\n.x\r\n", False),
                                    (b"X-A: 1", False)):
            message = spool.new_message()
            message.write(SMALL)
            self.successResultOf(Deferred.fromCoroutine(message.prepend(fields)))
            envelope = new_envelope(message.id)
            self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
            self.assertEqual(envelope.transparent, transparent, fields)

    def test_older_envelopes_are_not_transparent(self) -> None:
        """An envelope written before transparency was recorded loads as not transparent (its content is stuffed)."""
        data = json.loads(new_envelope("x").to_json())
        del data["transparent"]
        self.assertFalse(Envelope.from_json(json.dumps(data).encode()).transparent)

    def test_empty_message(self) -> None:
        """A message with no content at all still commits (an empty .eml)."""
        spool = self.spool()
        envelope, d = start_commit(spool, b"")
        self.successResultOf(d)
        self.assertEqual(read(spool.message_path(envelope.id)), b"")

    def test_small_message_touches_no_file_before_commit(self) -> None:
        """Below FLUSH_AT nothing is written until commit (no thread hand-off per chunk)."""
        fs = ScriptedFileSystem()
        spool = self.spool(fs)
        message = spool.new_message()
        message.write(SMALL)
        self.assertEqual((fs.steps, message.backlog, message.size), ([], len(SMALL), len(SMALL)))

    def test_commit_counts_and_notifies(self) -> None:
        """Each commit adds one to queued and hands the envelope to every listener."""
        spool = self.spool()
        seen: list[Envelope] = []
        spool.add_listener(seen.append)
        first, d1 = start_commit(spool, SMALL)
        second, d2 = start_commit(spool, SMALL)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.assertNotEqual(first.id, second.id)
        self.assertEqual(seen, [first, second])
        self.assertEqual(spool.queued, 2)
        self.assertEqual(len(listing(spool, "queue")), 4)

    def test_abort_removes_everything(self) -> None:
        """Aborting a message already partly flushed to tmp/ leaves no file."""
        spool = self.spool()
        message = spool.new_message()
        message.write(large_content())
        self.assertEqual(listing(spool, "tmp"), [message.id + ".eml"])
        self.successResultOf(message.abort())
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual(listing(spool, "queue"), [])
        self.assertEqual(spool.queued, 0)

    def test_drain_callback(self) -> None:
        """on_drain is called when a background write completes."""
        spool = self.spool()
        message = spool.new_message()
        drained: list[None] = []
        message.on_drain = lambda: drained.append(None)
        message.write(b"x" * IncomingMessage.FLUSH_AT)
        self.assertEqual((len(drained), message.backlog), (1, 0))


class CrashTests(SpoolTestCase):
    """
    A crash at any step of a commit leaves, after restart and recovery, either
    no message at all or one complete message: never a partial one.
    """

    def reference_steps(self, content: bytes) -> list[str]:
        """The file system steps of one undisturbed commit of C{content}."""
        directory = self.mktemp()
        fs = ScriptedFileSystem(directory)
        spool = make_spool(directory, Clock(), fs)
        _, d = start_commit(spool, content)
        self.successResultOf(d)
        return fs.steps

    def crash_at_every_step(self, content: bytes) -> None:
        steps = self.reference_steps(content)
        outcomes = []
        for index, step in enumerate(steps):
            self.directory = os.path.abspath(self.mktemp())
            fs = ScriptedFileSystem(self.directory, fail_at=index, error=Crash())
            spool = make_spool(self.directory, self.clock, fs)
            envelope, d = start_commit(spool, content)
            self.failureResultOf(d, Crash)
            self.assertEqual(spool.queued, 0)
            fs.close_all()

            spool, report = self.recovered()
            where = f"crash at step {index} ({step})"
            self.assertEqual(listing(spool, "tmp"), [], where)
            if listing(spool, "corrupt"):
                # Between the two renames: the content is in queue/, its envelope never got
                # there. Never deleted (recovery cannot tell it from an envelope lost later).
                self.assertEqual(listing(spool, "corrupt"), [envelope.id + ".eml"], where)
                self.assertEqual(read(spool.path("corrupt", envelope.id + ".eml")), content, where)
                self.assertEqual((report.envelopes, listing(spool, "queue")), ([], []), where)
                outcomes.append("set aside")
            elif report.envelopes:
                self.assertEqual(report.envelopes, [envelope], where)
                self.assertEqual(read(spool.message_path(envelope.id)), content, where)
                self.assertEqual(listing(spool, "queue"), [envelope.id + ".eml", envelope.id + ".json"], where)
                self.assertEqual(spool.queued, 1, where)
                outcomes.append("complete")
            else:
                self.assertEqual(listing(spool, "queue"), [], where)
                self.assertEqual(spool.queued, 0, where)
                outcomes.append("nothing")
        # Nothing survives until the content is renamed into queue/, everything once the envelope is.
        complete_from = next(i for i, s in enumerate(steps) if s.startswith("rename tmp/") and ".json" in s) + 1
        self.assertEqual(outcomes, ["nothing"] * (complete_from - 1) + ["set aside"]
                         + ["complete"] * (len(steps) - complete_from))
        self.assertTrue(steps[-1].startswith("fsync_directory queue"), steps)

    def test_crash_at_every_step_of_a_small_commit(self) -> None:
        """Crashing at each of create, write, fsync, close, envelope write, both renames and the directory fsync."""
        self.crash_at_every_step(SMALL)

    def test_crash_at_every_step_of_a_large_commit(self) -> None:
        """The same for a message streamed to tmp/ in several writes before the commit."""
        self.crash_at_every_step(large_content())

    def test_commit_steps_are_the_documented_ones(self) -> None:
        """
        A commit is: content and envelope written and cut to length (a reused
        file may have been longer), both fsynced (by the writer, together with
        the rest of its batch), both renamed (content first), directory fsynced.
        """
        steps = self.reference_steps(SMALL)
        self.assertEqual([s.split()[0] for s in steps], [
            "create", "write", "trim", "create", "write", "trim", "fsync", "fsync", "close", "close",
            "rename", "rename", "fsync_directory",
        ])
        self.assertTrue(steps[10].endswith(".eml") and steps[11].endswith(".json"), steps)

    def test_crash_in_commit_job(self) -> None:
        """The commit job interrupted after the content rename leaves an .eml that recovery moves to corrupt/."""
        fs = ScriptedFileSystem(fail_at=11, error=Crash())
        spool = self.spool(fs)
        job = queuejobs.commit_message(spool.files, queue_id="0123abcd", chunks=[SMALL],
                                       envelope=new_envelope("0123abcd").to_json())
        for fd in next(job):
            fs.fsync(fd)
        self.assertRaises(Crash, job.send, None)
        self.assertEqual(listing(spool, "queue"), ["0123abcd.eml"])
        spool, report = self.recovered()
        self.assertEqual((report.envelopes, list(report.problems)), ([], ["0123abcd"]))
        self.assertEqual(report.problems["0123abcd"][0], "incomplete")
        self.assertEqual(listing(spool, "queue"), [])
        self.assertEqual(listing(spool, "corrupt"), ["0123abcd.eml"])


class CommitFailureTests(SpoolTestCase):
    """An ordinary I/O error during a commit fails the commit and leaves nothing behind."""

    def assertNothingLeft(self, spool: Spool, fs: ScriptedFileSystem, where: str = "") -> None:
        self.assertEqual(listing(spool, "tmp"), [], where)
        self.assertEqual(listing(spool, "queue"), [], where)
        self.assertEqual(spool.queued, 0, where)
        self.assertEqual(fs.open_fds, set(), f"descriptors leaked {where}")
        self.assertEqual(fs.double_closes, [], f"descriptor closed twice {where}")

    def test_fsync_error(self) -> None:
        """An EIO from fsync of the content fails the commit; no file stays in tmp/ or queue/."""
        fs = ScriptedFileSystem(fail_at=6, error=OSError(errno.EIO, "Input/output error"))
        spool = self.spool(fs)
        seen: list[Envelope] = []
        spool.add_listener(seen.append)
        _, d = start_commit(spool, SMALL)
        failure = self.failureResultOf(d, OSError)
        self.assertEqual(failure.value.errno, errno.EIO)
        self.assertEqual(fs.steps[6], "fsync")
        self.assertEqual(seen, [])
        self.assertNothingLeft(spool, fs)

    def test_error_at_every_step(self) -> None:
        """Whichever step fails (create, write, fsync, close, envelope, renames, directory fsync), nothing is left."""
        for content in (SMALL, large_content()):
            fs = ScriptedFileSystem()
            _, d = start_commit(make_spool(self.mktemp(), Clock(), fs), content)
            self.successResultOf(d)
            for index, step in enumerate(fs.steps):
                self.directory = os.path.abspath(self.mktemp())
                failing = ScriptedFileSystem(fail_at=index, error=OSError(errno.EIO, "Input/output error"))
                spool = self.spool(failing)
                _, d = start_commit(spool, content)
                self.failureResultOf(d, OSError)
                self.assertNothingLeft(spool, failing, f"after an error at step {index} ({step})")

    def test_disk_full_while_streaming(self) -> None:
        """ENOSPC on the first background write fails the commit with it, leaving no file and no open descriptor."""
        fs = ScriptedFileSystem(fail_at=1, error=OSError(errno.ENOSPC, "No space left on device"))
        spool = self.spool(fs)
        _, d = start_commit(spool, large_content())
        self.assertEqual(self.failureResultOf(d, OSError).value.errno, errno.ENOSPC)
        self.assertNothingLeft(spool, fs)

    def test_spool_still_works_after_a_failure(self) -> None:
        """A failed commit does not spoil the next one."""
        fs = ScriptedFileSystem(fail_at=2, error=OSError(errno.EIO, "Input/output error"))
        spool = self.spool(fs)
        _, d = start_commit(spool, SMALL)
        self.failureResultOf(d, OSError)
        envelope, d = start_commit(spool, SMALL)
        self.successResultOf(d)
        self.assertEqual(listing(spool, "queue"), [envelope.id + ".eml", envelope.id + ".json"])
        self.assertEqual(spool.queued, 1)


class RecoverTests(SpoolTestCase):
    """L{Spool.recover}: the start-up scan of queue/."""

    def test_finds_queued_messages_in_order(self) -> None:
        """Complete entries are reported, ordered by next attempt then id, and counted."""
        for queue_id, next_attempt in (("b2", 5.0), ("a1", 5.0), ("c3", 1.0)):
            envelope = new_envelope(queue_id, content=SMALL)
            envelope.next_attempt = next_attempt
            self.queue_entry(queue_id, envelope.to_json())
        spool, report = self.recovered()
        self.assertEqual([e.id for e in report.envelopes], ["c3", "a1", "b2"])
        self.assertEqual((report.corrupt, report.problems), ([], {}))
        self.assertEqual(spool.queued, 3)

    def test_unreadable_envelopes_go_to_corrupt(self) -> None:
        """Garbage, a wrong version, a mismatched id or missing fields: both files move to corrupt/."""
        good = new_envelope("ok01", content=SMALL).to_json()
        wrong_version = json.loads(good)
        wrong_version["version"] = FORMAT_VERSION + 1
        no_recipients = json.loads(good)
        no_recipients["recipients"] = []
        missing_sender = json.loads(good)
        del missing_sender["sender"]
        bad = {
            "garbage": b"\x00not json at all",
            "truncated": good[:len(good) // 2],
            "version": json.dumps(wrong_version).encode(),
            "mismatch": new_envelope("someone-else").to_json(),
            "norcpt": json.dumps(no_recipients).encode(),
            "nosender": json.dumps(missing_sender).encode(),
            "alist": b"[1, 2, 3]",
            "badrcpt": good.replace(b'"address"', b'"adress"'),
        }
        for queue_id, raw in bad.items():
            self.queue_entry(queue_id, raw)
        self.queue_entry("ok01", good)
        spool, report = self.recovered()
        self.assertEqual([e.id for e in report.envelopes], ["ok01"])
        expected = sorted(f"{queue_id}{ext}" for queue_id in bad for ext in (".eml", ".json"))
        self.assertEqual(sorted(report.corrupt), expected)
        self.assertEqual(listing(spool, "corrupt"), expected)
        self.assertEqual(listing(spool, "queue"), ["ok01.eml", "ok01.json"])
        self.assertEqual(read(spool.path("corrupt", "garbage.json")), b"\x00not json at all")
        self.assertEqual(read(spool.path("corrupt", "garbage.eml")), SMALL)
        self.assertEqual(spool.queued, 1)

    def test_content_without_envelope_goes_to_corrupt(self) -> None:
        """
        An .eml without its .json is never deleted (its client may have been
        told 250, the envelope lost later): it moves to corrupt/ as incomplete,
        with what is missing.
        """
        self.queue_entry("lonely", None)
        spool, report = self.recovered()
        self.assertEqual(report.problems["lonely"][0], "incomplete")
        self.assertIn("its envelope lonely.json is missing", report.problems["lonely"][1])
        self.assertEqual(listing(spool, "queue"), [])
        self.assertEqual(listing(spool, "corrupt"), ["lonely.eml"])
        self.assertEqual(read(spool.path("corrupt", "lonely.eml")), SMALL)
        self.assertEqual(spool.corrupt_total, 1)

    def test_envelope_without_content_goes_to_corrupt(self) -> None:
        """A .json without its .eml cannot be delivered: it moves to corrupt/ for a human."""
        self.queue_entry("nobody", new_envelope("nobody", content=SMALL).to_json(), content=None)
        spool, report = self.recovered()
        self.assertEqual((report.envelopes, report.corrupt), ([], ["nobody.json"]))
        self.assertEqual(listing(spool, "corrupt"), ["nobody.json"])
        self.assertEqual(listing(spool, "queue"), [])

    def test_stray_file_goes_to_corrupt(self) -> None:
        """A file that is neither content nor envelope is set aside, not deleted."""
        os.makedirs(os.path.join(self.directory, "queue"))
        with open(os.path.join(self.directory, "queue", "notes.txt"), "wb") as f:
            f.write(b"hello")
        spool, report = self.recovered()
        self.assertEqual(report.corrupt, ["notes.txt"])
        self.assertEqual(listing(spool, "corrupt"), ["notes.txt"])

    def test_halves_parted_by_another_name_are_one_entry(self) -> None:
        """A name sorting between an id's two files (abc.f.eml between abc.eml and abc.json) does not part them."""
        self.queue_entry("abc", new_envelope("abc", content=SMALL).to_json())
        self.queue_entry("abc.f", None)
        spool, report = self.recovered()
        self.assertEqual([e.id for e in report.envelopes], ["abc"])
        self.assertEqual(listing(spool, "corrupt"), ["abc.f.eml"])

    def test_changes_are_made_durable(self) -> None:
        """Moving entries to corrupt/ ends with an fsync of corrupt/ and queue/; a clean queue needs none."""
        self.queue_entry("good", new_envelope("good", content=SMALL).to_json())
        fs = ScriptedFileSystem()
        self.successResultOf(self.spool(fs).recover())
        self.assertEqual(fs.steps, [])
        self.queue_entry("lonely", None)
        self.queue_entry("bad", b"garbage")
        fs = ScriptedFileSystem()
        self.successResultOf(self.spool(fs).recover())
        self.assertEqual(fs.steps, ["rename queue/bad.json corrupt/bad.json", "rename queue/bad.eml corrupt/bad.eml",
                                    "rename queue/lonely.eml corrupt/lonely.eml",
                                    "fsync_directory corrupt", "fsync_directory queue"])

    def test_recovered_message_is_the_committed_one(self) -> None:
        """A message committed before a restart comes back with the same envelope and content."""
        spool = self.spool()
        envelope, d = start_commit(spool, large_content(), "x@example.com")
        self.successResultOf(d)
        spool, report = self.recovered()
        self.assertEqual(report.envelopes, [envelope])
        self.assertEqual(read(spool.message_path(envelope.id)), large_content())


class UpdateRemoveTests(SpoolTestCase):
    """Changing and removing queued messages."""

    def committed(self, spool: Spool) -> Envelope:
        envelope, d = start_commit(spool, SMALL, "a@example.com", "b@example.com")
        self.successResultOf(d)
        return envelope

    def on_disk(self, spool: Spool, queue_id: str) -> Envelope:
        return Envelope.from_json(read(spool.path("queue", queue_id + ".json")))

    def test_update_rewrites_the_envelope(self) -> None:
        """update() replaces the .json with the new state and leaves the content and tmp/ alone."""
        spool = self.spool()
        envelope = self.committed(spool)
        envelope.attempts = 2
        envelope.next_attempt = 600.0
        envelope.last_error = "451 4.3.0 try later"
        envelope.recipients[0].status = DELIVERED
        envelope.recipients[0].reply = "250 2.0.0 ok"
        self.successResultOf(Deferred.fromCoroutine(spool.update(envelope)))
        self.assertEqual(self.on_disk(spool, envelope.id), envelope)
        self.assertEqual(read(spool.message_path(envelope.id)), SMALL)
        self.assertEqual(listing(spool, "tmp"), [])

    def test_update_is_atomic(self) -> None:
        """A crash at any step of update() leaves either the old or the new envelope, never a broken one."""
        seen = set()
        for index in range(20):
            self.directory = os.path.abspath(self.mktemp())
            spool = self.spool()
            envelope = self.committed(spool)
            old = self.on_disk(spool, envelope.id)
            fs = ScriptedFileSystem(self.directory, fail_at=index, error=Crash())
            spool.fs = fs
            envelope.attempts = 7
            d = Deferred.fromCoroutine(spool.update(envelope))
            if fs.crashed:
                self.failureResultOf(d, Crash)
            else:
                self.successResultOf(d)
            fs.close_all()
            spool, report = self.recovered()
            self.assertEqual(len(report.envelopes), 1, f"crash at step {index}")
            self.assertIn(report.envelopes[0].attempts, (old.attempts, 7))
            seen.add(report.envelopes[0].attempts)
            if not fs.crashed:
                break
        self.assertEqual(seen, {0, 7})

    def test_update_after_a_failed_update(self) -> None:
        """An update that failed (disk full) does not make every later update of the message fail."""
        spool = self.spool()
        envelope = self.committed(spool)
        spool.fs = ScriptedFileSystem(fail_at=2, error=OSError(errno.ENOSPC, "No space left on device"))
        envelope.attempts = 1
        self.failureResultOf(Deferred.fromCoroutine(spool.update(envelope)), OSError)
        self.assertEqual(self.on_disk(spool, envelope.id).attempts, 0)
        envelope.attempts = 2
        self.successResultOf(Deferred.fromCoroutine(spool.update(envelope)))
        self.assertEqual(self.on_disk(spool, envelope.id).attempts, 2)
        self.assertEqual(listing(spool, "tmp"), [])

    def test_remove_deletes_both_files(self) -> None:
        """remove() deletes the envelope and the content, and the queue count goes down."""
        spool = self.spool()
        keep = self.committed(spool)
        gone = self.committed(spool)
        self.successResultOf(spool.remove(gone.id))
        self.assertEqual(listing(spool, "queue"), [keep.id + ".eml", keep.id + ".json"])
        self.assertEqual(spool.queued, 1)

    def test_removals_asked_meanwhile_go_together(self) -> None:
        """
        While one removal job is in the writer, the removals asked for go
        together in the next job; each caller hears once its own is done,
        and a failed job fails each of its removals.
        """
        spool = self.spool()
        first, second, third, fourth = (self.committed(spool) for _ in range(4))
        writer = ManualRun()
        writer.files = spool.files
        jobs: list[list[str]] = []
        run = writer.run
        writer.run = lambda job, **arguments: (jobs.append(arguments["queue_ids"]), run(job, **arguments))[1]
        spool.removal_writer = writer
        done = [spool.remove(envelope.id) for envelope in (first, second, third)]
        self.assertEqual(jobs, [[first.id]])  # the first alone; the others wait for it
        writer.release()
        self.assertEqual(jobs, [[first.id], [second.id, third.id]])
        self.assertEqual([self.successResultOf(d) for d in done], [None, None, None])
        self.assertEqual(listing(spool, "queue"), [fourth.id + ".eml", fourth.id + ".json"])
        self.assertEqual(spool.queued, 1)

        spool.fs = ScriptedFileSystem(self.directory, fail_at=0, error=Crash())
        failing = [spool.remove(fourth.id), spool.remove("00000000000000000dead")]
        writer.release()
        for d in failing:
            self.failureResultOf(d, Crash)
        self.assertEqual(spool.queued, 1)

    def test_remove_deletes_the_envelope_first(self) -> None:
        """
        A crash between the two unlinks leaves only content: recovery cannot
        tell it from content whose envelope was lost, so it goes to corrupt/
        (never deleted), and nothing is queued again.
        """
        spool = self.spool()
        envelope = self.committed(spool)
        spool.fs = ScriptedFileSystem(self.directory, fail_at=1, error=Crash())
        self.failureResultOf(spool.remove(envelope.id), Crash)
        self.assertEqual(listing(spool, "queue"), [envelope.id + ".eml"])
        spool, report = self.recovered()
        self.assertEqual((report.envelopes, report.corrupt), ([], [envelope.id + ".eml"]))
        self.assertEqual(listing(spool, "queue"), [])


class RecentContentTests(SpoolTestCase):
    """Just-committed content kept in memory for delivery (L{gomail.spool.recent})."""

    def test_small_commit_keeps_the_file_bytes(self) -> None:
        """A message received whole in memory is kept after its commit: exactly the bytes of its file."""
        spool = self.spool(recent_content_bytes=1024 * 1024)
        seen: list[bytes | None] = []
        spool.add_listener(lambda envelope: seen.append(spool.recent.get(envelope.id)))
        envelope, d = start_commit(spool, SMALL, chunk=100)
        self.successResultOf(d)
        self.assertEqual(spool.recent.get(envelope.id), read(spool.message_path(envelope.id)))
        self.assertEqual(seen, [SMALL])  # already there when delivery hears of the message

    def test_streamed_message_is_read_from_disk(self) -> None:
        """A message that went to tmp/ in parts while arriving is not kept (its delivery reads the file)."""
        spool = self.spool(recent_content_bytes=64 * 1024 * 1024)
        envelope, d = start_commit(spool, large_content(), chunk=7001)
        self.successResultOf(d)
        self.assertIsNone(spool.recent.get(envelope.id))

    def test_failed_commit_keeps_nothing(self) -> None:
        """A commit that fails (fsync error) leaves nothing in memory either."""
        spool = self.spool(ScriptedFileSystem(fail_at=3, error=OSError(errno.EIO, "I/O error")),
                           recent_content_bytes=1024 * 1024)
        _envelope, d = start_commit(spool, SMALL)
        self.failureResultOf(d, OSError)
        self.assertEqual(len(spool.recent), 0)

    def test_removal_forgets(self) -> None:
        """A message leaving the queue leaves memory too."""
        spool = self.spool(recent_content_bytes=1024 * 1024)
        envelope, d = start_commit(spool, SMALL)
        self.successResultOf(d)
        self.successResultOf(spool.remove(envelope.id))
        self.assertEqual((len(spool.recent), spool.recent.size), (0, 0))

    def test_budget(self) -> None:
        """The oldest entries go first once the budget is reached; one message may use an eighth of it."""
        recent = RecentContent(800)
        recent.keep("big", b"x" * 101)
        self.assertIsNone(recent.get("big"))
        for number in range(10):
            recent.keep(f"m{number}", b"%d" % number * 100)
        self.assertEqual([recent.get(f"m{n}") is not None for n in range(10)], [False] * 2 + [True] * 8)
        self.assertEqual(recent.size, 800)
        recent.keep("m9", b"y" * 50)
        self.assertEqual((recent.get("m9"), recent.size), (b"y" * 50, 750))
        recent.forget("m9")
        recent.forget("not there")
        self.assertEqual((len(recent), recent.size), (7, 700))
        nothing = RecentContent(0)
        nothing.keep("a", b"")
        self.assertEqual(len(nothing), 0)  # a budget of 0 keeps nothing, not even an empty message


class FreeSpaceTests(SpoolTestCase):
    """L{Spool.has_free_space}, checked on every MAIL."""

    def test_enough_space(self) -> None:
        """With no minimum there is always space."""
        self.assertTrue(self.spool().has_free_space())
        self.assertGreater(self.spool().free_bytes(), 0)

    def test_not_enough_space(self) -> None:
        """A minimum larger than any disk means no space."""
        self.assertFalse(self.spool(min_free_bytes=2 ** 62).has_free_space())

    def test_answer_is_cached_for_a_second(self) -> None:
        """The answer is reused for one second of the clock, then checked again."""
        spool = self.spool(min_free_bytes=2 ** 62)
        self.assertFalse(spool.has_free_space())
        spool.min_free_bytes = 0
        self.clock.advance(0.999)
        self.assertFalse(spool.has_free_space())
        self.clock.advance(0.001)
        self.assertTrue(spool.has_free_space())

    def test_missing_directory_means_no_space(self) -> None:
        """If the spool directory cannot be examined, intake is refused rather than risked."""
        spool = Spool(os.path.join(self.directory, "absent"), self.clock, synchronous_run)
        self.assertFalse(spool.has_free_space())


class EnvelopeTests(SynchronousTestCase):
    """The JSON envelope format."""

    def test_round_trip(self) -> None:
        """Every field survives to_json/from_json."""
        envelope = Envelope(id="abc", sender="", recipients=[Recipient("a@x", DELIVERED, "250 ok"), Recipient("b@y")],
                            received=1.5, client_address="::1", client_helo="h", tls=True, auth_user="u",
                            body_type="8BITMIME", size=10, attempts=3, next_attempt=99.0, last_error="e",
                            extra={"k": [1]})
        self.assertEqual(Envelope.from_json(envelope.to_json()), envelope)
        self.assertEqual([r.address for r in envelope.pending()], ["b@y"])

    def test_bad_envelopes(self) -> None:
        """Anything but a complete envelope of the known version raises EnvelopeError."""
        good = json.loads(new_envelope("x").to_json())
        for raw in (b"", b"{", b"null", b"[]", b'"x"', json.dumps({**good, "version": 2}).encode(),
                    json.dumps({k: v for k, v in good.items() if k != "version"}).encode(),
                    json.dumps({**good, "id": ""}).encode(), json.dumps({**good, "recipients": [1]}).encode(),
                    json.dumps({**good, "surprise": 1}).encode(), b"\xff\xfe"):
            self.assertRaises(EnvelopeError, Envelope.from_json, raw)

    def test_queue_ids(self) -> None:
        """Queue ids are unique and sort in arrival order."""
        ids = [new_queue_id(t) for t in (1.0, 1.0, 1.000001, 2.5, 1e9)]
        self.assertEqual(len(set(ids)), len(ids))
        self.assertEqual(sorted(ids[2:]), ids[2:])
        self.assertTrue(all(len(i) == 21 and all(c in "0123456789abcdef" for c in i) for i in ids))


class FakeConsumer:
    """Collects what the spool service hands over."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def enqueue(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


class SpoolServiceTests(SpoolTestCase):
    """L{SpoolService}: prepare and recover at start, then feed the consumer."""

    def test_start_hands_over_queued_then_new_messages(self) -> None:
        """Messages found at start go to the consumer, then each newly committed one."""
        self.queue_entry("old1", new_envelope("old1", content=SMALL).to_json())
        self.queue_entry("bad1", b"garbage")
        os.makedirs(os.path.join(self.directory, "tmp"))
        with open(os.path.join(self.directory, "tmp", "unfinished.eml"), "wb") as f:
            f.write(b"partial")
        spool = Spool(self.directory, self.clock, synchronous_run)
        consumer = FakeConsumer()
        service = SpoolService(spool, consumer)
        self.successResultOf(service.startService())
        self.assertEqual([e.id for e in consumer.envelopes], ["old1"])
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual(listing(spool, "corrupt"), ["bad1.eml", "bad1.json"])
        envelope, d = start_commit(spool, SMALL)
        self.successResultOf(d)
        self.assertEqual([e.id for e in consumer.envelopes], ["old1", envelope.id])
        self.assertEqual(spool.queued, 2)

    def test_recovery_runs_while_mail_is_accepted(self) -> None:
        """
        The start fires once queue/ is listed; the listed messages reach the
        consumer a step at a time afterwards, new commits at once, none twice;
        damaged entries leave the queued count; a stop ends it between steps.
        """
        for name in ("m1", "m2", "m3", "m4", "m5", "m6", "m7"):
            self.queue_entry(name, new_envelope(name, content=SMALL).to_json())
        self.queue_entry("bad1", b"garbage")
        run = ManualRun()
        spool = Spool(self.directory, self.clock, run)
        consumer = FakeConsumer()
        service = SpoolService(spool, consumer, recovery_step=2)
        started = service.startService()
        self.assertNoResult(started)
        run.release_one()  # the listing
        self.successResultOf(started)
        self.assertEqual((consumer.envelopes, spool.queued), ([], 8))
        envelope, committed = start_commit(spool, SMALL)
        run.synchronous = True
        self.successResultOf(committed)
        run.synchronous = False
        self.assertEqual([e.id for e in consumer.envelopes], [envelope.id])
        run.release_one()  # bad1, m1
        self.assertEqual([e.id for e in consumer.envelopes], [envelope.id, "m1"])
        self.assertEqual((spool.queued, listing(spool, "corrupt")), (8, ["bad1.eml", "bad1.json"]))
        run.release_one()  # m2, m3; the step of m4, m5 is sent
        stopped = service.stopService()
        self.assertNoResult(stopped)  # it waits for the step in progress
        run.release_one()
        self.successResultOf(stopped)
        self.assertEqual(run.pending, [])  # m6, m7 are not read
        self.assertEqual([e.id for e in consumer.envelopes], [envelope.id, "m1", "m2", "m3", "m4", "m5"])

    def test_start_without_consumer(self) -> None:
        """With no consumer (relay not available) the spool is still prepared and recovered."""
        self.queue_entry("old1", new_envelope("old1", content=SMALL).to_json())
        spool = Spool(self.directory, self.clock, synchronous_run)
        self.successResultOf(SpoolService(spool, None).startService())
        self.assertEqual(spool.queued, 1)

    def test_start_fails_for_an_unusable_spool(self) -> None:
        """An unusable spool directory fails the start with a SpoolError."""
        with open(self.directory, "wb") as f:
            f.write(b"a file")
        service = SpoolService(Spool(self.directory, self.clock, synchronous_run), FakeConsumer())
        self.failureResultOf(service.startService(), SpoolError)


class SpareFilesTests(SpoolTestCase):
    """Removed messages' files kept in tmp/ and reused by new commits (gomail.spool.spares)."""

    def commit(self, spool: Spool, content: bytes = SMALL, *recipients: str) -> Envelope:
        envelope, d = start_commit(spool, content, *(recipients or ("a@example.com",)))
        self.successResultOf(d)
        return envelope

    def remove(self, spool: Spool, envelope: Envelope) -> None:
        self.successResultOf(spool.remove(envelope.id))

    def inode(self, spool: Spool, *parts: str) -> int:
        return os.stat(spool.path(*parts)).st_ino

    def test_removed_files_become_spares(self) -> None:
        """remove() takes a message out of queue/ and keeps its two files in tmp/ as spares."""
        spool = self.spool(spare_files=4)
        envelope = self.commit(spool)
        self.remove(spool, envelope)
        self.assertEqual(listing(spool, "queue"), [])
        self.assertEqual(listing(spool, "tmp"), ["spare-0", "spare-1"])
        self.assertEqual(len(spool.spares), 2)

    def test_next_commit_reuses_them_cut_to_length(self) -> None:
        """A commit after a removal writes into the spares' inodes; a longer old file is cut to the new length."""
        spool = self.spool(spare_files=4)
        old = self.commit(spool, MEDIUM, "a@example.com", "b@example.com", "c@example.com")
        self.remove(spool, old)
        spares = {self.inode(spool, "tmp", name) for name in listing(spool, "tmp")}
        new = self.commit(spool, SMALL)
        self.assertEqual({self.inode(spool, "queue", new.id + ext) for ext in (".eml", ".json")}, spares)
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual(read(spool.message_path(new.id)), read_back_content(spool, new.id))
        self.assertTrue(read(spool.message_path(new.id)).endswith(SMALL))
        self.assertEqual(Envelope.from_json(read(spool.path("queue", new.id + ".json"))).id, new.id)
        spool, report = self.recovered()
        self.assertEqual([e.id for e in report.envelopes], [new.id])

    def test_linked_content_is_never_taken(self) -> None:
        """A content file with another link (a Maildir copy) is unlinked, not kept: the mailbox owns it."""
        spool = self.spool(spare_files=4)
        envelope = self.commit(spool)
        mailbox = os.path.join(self.directory, "mailbox-copy")
        os.link(spool.message_path(envelope.id), mailbox)
        self.remove(spool, envelope)
        self.assertEqual(listing(spool, "tmp"), ["spare-0"])  # the envelope only
        self.commit(spool, large_content())
        self.assertTrue(read(mailbox).endswith(SMALL))

    def test_limit(self) -> None:
        """Once the spares reach the limit, removed files are unlinked."""
        spool = self.spool(spare_files=1)
        first, second = self.commit(spool), self.commit(spool)
        self.remove(spool, first)
        self.remove(spool, second)
        self.assertEqual(listing(spool, "tmp"), ["spare-0", "spare-1"])  # both of the first message's
        self.assertEqual(listing(spool, "queue"), [])

    def test_spares_are_offered_after_the_removal_is_durable(self) -> None:
        """A retired file is offered only after queue/ was fsynced, even for a non-durable removal."""
        fs = ScriptedFileSystem()
        spool = self.spool(fs, spare_files=4)
        envelope = self.commit(spool, MEDIUM)
        start = len(fs.steps)
        self.successResultOf(spool.remove(envelope.id, durable=False))
        steps = fs.steps[start:]
        self.assertEqual(steps[-1], "fsync_directory queue", steps)
        self.assertEqual(len(spool.spares), 2)

    def test_large_spares_are_emptied(self) -> None:
        """A retired file over KEEP_BLOCKS is cut to nothing (spares hold little disk); a small one is kept as is."""
        spool = self.spool(spare_files=4)
        self.remove(spool, self.commit(spool, large_content()))
        sizes = sorted(os.path.getsize(spool.path("tmp", name)) for name in listing(spool, "tmp"))
        self.assertEqual(sizes[0], 0)  # the content: large, emptied
        self.assertGreater(sizes[1], 0)  # the envelope: small, kept as it is

    def test_failed_removal_offers_nothing(self) -> None:
        """When the removal's directory fsync fails, its files are not offered for reuse."""
        fs = ScriptedFileSystem()
        spool = self.spool(fs, spare_files=4)
        envelope = self.commit(spool)
        fs.fail_at, fs.error = len(fs.steps) + 4, OSError(errno.EIO, "Input/output error")  # the fsync of queue/
        self.failureResultOf(spool.remove(envelope.id), OSError)
        self.assertEqual(fs.steps[-1], "fsync_directory queue")
        self.assertEqual(len(spool.spares), 0)

    def test_restart_empties_tmp(self) -> None:
        """Spares are temporary files: a restart removes them, and recovery finds only committed mail."""
        spool = self.spool(spare_files=4)
        self.remove(spool, self.commit(spool))
        kept = self.commit(spool)
        spool, report = self.recovered()
        self.assertEqual(listing(spool, "tmp"), [])
        self.assertEqual([e.id for e in report.envelopes], [kept.id])

    def test_crash_at_every_step_of_a_reusing_commit(self) -> None:
        """A crash at any step of a commit into spares leaves nothing, or the whole message, after recovery."""
        reference = self.spool(ScriptedFileSystem(), spare_files=4)
        self.remove(reference, self.commit(reference, large_content()))
        steps = len(reference.fs.steps)
        self.commit(reference)
        total = len(reference.fs.steps) - steps
        for index in range(total):
            self.directory = os.path.abspath(self.mktemp())
            fs = ScriptedFileSystem(fail_at=None)
            spool = self.spool(fs, spare_files=4)
            self.remove(spool, self.commit(spool, large_content()))
            fs.fail_at, fs.error = len(fs.steps) + index, Crash()
            envelope, d = start_commit(spool, SMALL, "a@example.com")
            d.addErrback(lambda f: f.trap(Crash))
            fs.close_all()
            spool, report = self.recovered()
            where = f"crash at step {index}: {fs.steps[-1]}"
            if report.envelopes:
                self.assertEqual([e.id for e in report.envelopes], [envelope.id], where)
                self.assertEqual(read(spool.message_path(envelope.id)), read_back_content(spool, envelope.id), where)
                self.assertTrue(read(spool.message_path(envelope.id)).endswith(SMALL), where)
            else:
                self.assertEqual(listing(spool, "queue"), [], where)


def read_back_content(spool: Spool, queue_id: str) -> bytes:
    """The content file as stored: our Received: header, then exactly what the client sent."""
    return read(spool.message_path(queue_id))


class SpreadSubdirectoriesTests(SynchronousTestCase):
    """FileSystem.spread_subdirectories: ext4's top-directory flag, best effort."""

    def test_new_spool_directory_is_marked(self) -> None:
        """prepare() marks a new spool directory as a top directory where the file system supports it."""
        directory = os.path.abspath(self.mktemp())
        make_spool(directory)
        import array
        import fcntl

        from gomail.spool.fs import FS_IOC_GETFLAGS, FS_TOPDIR_FL
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flags = array.array("i", [0])
            try:
                fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
            except OSError:
                raise SkipTest("this file system has no inode flags")
        finally:
            os.close(fd)
        self.assertTrue(flags[0] & FS_TOPDIR_FL)

    def test_unsupported_is_harmless(self) -> None:
        """A path that cannot be opened (or a file system without flags) answers False and raises nothing."""
        self.assertFalse(FileSystem().spread_subdirectories(os.path.abspath(self.mktemp())))


class ReadQueuedTests(SynchronousTestCase):
    """gomail.spool.fs.read_queued: a read that counts only if the file is still the one named."""

    def test_reads_a_file(self) -> None:
        """A file that stays in place is read whole."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"envelope")
        self.assertEqual(read_queued(path), b"envelope")

    def test_replaced_while_read(self) -> None:
        """When the name leads to another inode after the read, the read is refused as a removal."""
        path = os.path.abspath(self.mktemp())
        other = path + ".other"
        for name in (path, other):
            with open(name, "wb") as f:
                f.write(name.encode())
        real_stat = os.stat

        def stat_after_a_swap(name: Any, *args: Any, **kwargs: Any) -> Any:
            if name == path:
                os.replace(other, path)  # the server retired it and another file took the name
            return real_stat(name, *args, **kwargs)

        self.patch(os, "stat", stat_after_a_swap)
        self.assertRaises(FileNotFoundError, read_queued, path)


class FileSystemWriteTests(SynchronousTestCase):
    """FileSystem.write: every chunk lands, in order, whatever the kernel takes per call."""

    def written(self, chunks: list[bytes]) -> bytes:
        path = os.path.abspath(self.mktemp())
        fs = FileSystem()
        fd = fs.create(path)
        try:
            fs.write(fd, chunks)
            fs.trim(fd, sum(map(len, chunks)))
        finally:
            fs.close(fd)
        return read(path)

    def test_short_writes(self) -> None:
        """writev taking 3 bytes at a time (a short write mid-chunk and across chunks) still writes everything once."""
        calls: list[int] = []

        def short_writev(fd: int, buffers: list) -> int:
            calls.append(len(buffers))
            return os.write(fd, b"".join(bytes(b) for b in buffers)[:3])

        self.patch(fs_module.os, "writev", short_writev)
        self.assertEqual(self.written([b"hello", b"", b" world", b"!"]), b"hello world!")
        self.assertEqual(len(calls), 4)

    def test_one_call_for_many_chunks(self) -> None:
        """A message arriving in many chunks is written with one writev, more than IOV_MAX chunks included."""
        calls: list[int] = []
        real = os.writev

        def counting_writev(fd: int, buffers: list) -> int:
            calls.append(len(buffers))
            return real(fd, buffers)

        self.patch(fs_module.os, "writev", counting_writev)
        chunks = [b"%06d\r\n" % n for n in range(fs_module._IOV_MAX + 10)]
        self.assertEqual(self.written(chunks), b"".join(chunks))
        self.assertEqual(calls, [fs_module._IOV_MAX, 10])
