"""
The spool's jobs (gomail.spool.jobs) run directly, without a writer: each is
"crashed" at every one of its file-system steps in turn (a power cut: no
cleanup runs, descriptors stay open), and what is left on disk must always be
one of the states recovery handles - the old one or the new one, never half
of a file or an envelope without its content.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gomail.spool.envelope import Envelope
from gomail.spool.jobs import SpoolFiles, failedjobs, queuejobs
from gomail.spool.store import SUBDIRECTORIES
from gomail.spool.writer import run_batch
from tests.spooltesting import Crash, ScriptedFileSystem, new_envelope

CONTENT = b"Subject: jobs\r\n\r\nrun directly\r\n"
QUEUE_ID = "60a24181e4000a2b2a013"


class CrashEveryStepTests(SynchronousTestCase):
    """Each job, crashed at each step, leaves a state recovery knows."""

    def fresh(self) -> str:
        directory = os.path.abspath(self.mktemp())
        for name in SUBDIRECTORIES:
            os.makedirs(os.path.join(directory, name))
        return directory

    def queue_message(self, directory: str, envelope: Envelope) -> None:
        with open(os.path.join(directory, "queue", QUEUE_ID + ".eml"), "wb") as f:
            f.write(CONTENT)
        with open(os.path.join(directory, "queue", QUEUE_ID + ".json"), "wb") as f:
            f.write(envelope.to_json())

    def crash_everywhere(self, prepare: Callable[[str], None], job: Callable[..., Any],
                         check: Callable[[str, bool], None], **arguments: Any) -> int:
        """
        Run C{job} once per step with a crash at that step, then once without;
        C{check(directory, finished)} looks at what is left. Returns the steps.
        """
        step = 0
        while True:
            directory = self.fresh()
            prepare(directory)
            fs = ScriptedFileSystem(directory, fail_at=step, error=Crash())
            [(ok, _)] = run_batch([functools.partial(job, SpoolFiles(directory, fs), **arguments)], fs)
            fs.close_all()
            check(directory, ok and not fs.crashed)
            if not fs.crashed:
                self.assertTrue(ok)
                return step
            step += 1

    def test_rewrite_envelope(self) -> None:
        """queue/<id>.json is always the old envelope or the new one, whole."""
        old = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)
        new = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)
        new.attempts = 3

        def check(directory: str, finished: bool) -> None:
            with open(os.path.join(directory, "queue", QUEUE_ID + ".json"), "rb") as f:
                attempts = Envelope.from_json(f.read()).attempts
            self.assertIn(attempts, (3,) if finished else (0, 3))
        steps = self.crash_everywhere(lambda d: self.queue_message(d, old), queuejobs.rewrite_envelope, check,
                                      queue_id=QUEUE_ID, envelope=new.to_json())
        self.assertGreater(steps, 5)

    def test_remove_messages(self) -> None:
        """An envelope never outlives its content: the envelope goes first."""
        envelope = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)

        def check(directory: str, finished: bool) -> None:
            left = sorted(os.listdir(os.path.join(directory, "queue")))
            both = [QUEUE_ID + ".eml", QUEUE_ID + ".json"]
            self.assertIn(left, ([],) if finished else ([], [QUEUE_ID + ".eml"], both))
        self.crash_everywhere(lambda d: self.queue_message(d, envelope), queuejobs.remove_messages, check,
                              queue_ids=[QUEUE_ID])

    def test_failed_record_then_forget(self) -> None:
        """failed/<id>.json is absent or a whole record with the content; forgetting it removes it."""
        envelope = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)

        def check(directory: str, finished: bool) -> None:
            path = os.path.join(directory, "failed", QUEUE_ID + ".json")
            if finished or os.path.exists(path):
                with open(path, "rb") as f:
                    record = json.loads(f.read())
                self.assertEqual((record["content"], record["reason"]), (CONTENT.decode(), "550 no such user"))
            self.assertEqual(len(os.listdir(os.path.join(directory, "queue"))), 2)  # the caller removes them next
        self.crash_everywhere(lambda d: self.queue_message(d, envelope), failedjobs.write_failed_record, check,
                              queue_id=QUEUE_ID, envelope=envelope.to_json(), reason="550 no such user", now=5.0)

    def test_requeue(self) -> None:
        """A requeued envelope in queue/ always has its content there; the record stays until forgotten."""
        envelope = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)

        def prepare(directory: str) -> None:
            self.queue_message(directory, envelope)
            files = SpoolFiles(directory)
            job = failedjobs.write_failed_record(files, QUEUE_ID, envelope.to_json(), "550 no such user", 5.0)
            run_batch([lambda: job], files.fs)
            for ext in (".eml", ".json"):
                os.unlink(os.path.join(directory, "queue", QUEUE_ID + ext))

        def check(directory: str, finished: bool) -> None:
            left = sorted(os.listdir(os.path.join(directory, "queue")))
            if QUEUE_ID + ".json" in left:
                self.assertIn(QUEUE_ID + ".eml", left)
                with open(os.path.join(directory, "queue", QUEUE_ID + ".json"), "rb") as f:
                    self.assertEqual(Envelope.from_json(f.read()).received, 9.0)
            if finished:
                self.assertEqual(left, [QUEUE_ID + ".eml", QUEUE_ID + ".json"])
            self.assertTrue(os.path.exists(os.path.join(directory, "failed", QUEUE_ID + ".json")))
        self.crash_everywhere(prepare, failedjobs.requeue_failed, check, queue_id=QUEUE_ID, now=9.0)

    def test_move_to_corrupt(self) -> None:
        """Each file is in queue/ or in corrupt/, never lost; done, both are in corrupt/."""
        envelope = new_envelope(QUEUE_ID, "bob@example.com", content=CONTENT)

        def check(directory: str, finished: bool) -> None:
            places = {ext: [where for where in ("queue", "corrupt")
                            if os.path.exists(os.path.join(directory, where, QUEUE_ID + ext))]
                      for ext in (".eml", ".json")}
            self.assertTrue(all(len(where) == 1 for where in places.values()), places)
            if finished:
                self.assertEqual(places, {".eml": ["corrupt"], ".json": ["corrupt"]})
        self.crash_everywhere(lambda d: self.queue_message(d, envelope), queuejobs.move_to_corrupt, check,
                              queue_id=QUEUE_ID)


class SparesTests(SynchronousTestCase):
    """remove_messages makes spares of small files; publish_spares offers them to the next commit."""

    def test_removed_files_reused(self) -> None:
        """The next commit overwrites a removed message's file instead of creating one."""
        directory = os.path.abspath(self.mktemp())
        for name in SUBDIRECTORIES:
            os.makedirs(os.path.join(directory, name))
        files = SpoolFiles(directory, spare_files=4)

        def run(job: Callable[..., Any], **arguments: Any) -> Any:
            [(ok, value)] = run_batch([functools.partial(job, files, **arguments)], files.fs)
            self.assertTrue(ok, value)
            return value
        envelope = new_envelope(QUEUE_ID, content=CONTENT).to_json()
        run(queuejobs.commit_message, queue_id=QUEUE_ID, chunks=[CONTENT], envelope=envelope)
        inode = os.stat(os.path.join(directory, "queue", QUEUE_ID + ".eml")).st_ino
        spares = run(queuejobs.remove_messages, queue_ids=[QUEUE_ID])
        self.assertEqual(len(spares), 2)
        self.assertEqual(len(files.spares), 0)  # not before their removal is durable
        run(queuejobs.publish_spares, spares=spares)
        other = "60a24181e4000a2b2a014"
        run(queuejobs.commit_message, queue_id=other, chunks=[CONTENT], envelope=envelope)
        inodes = {os.stat(os.path.join(directory, "queue", other + ext)).st_ino for ext in (".eml", ".json")}
        self.assertIn(inode, inodes)
