"""The spool writer: durable jobs in batches, one directory fsync per directory per batch."""

from __future__ import annotations

import errno
import os
import threading

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gomail.interfaces import ISpoolWriter
from gomail.spool.fs import FileSystem
from gomail.spool.jobs import SpoolFiles
from gomail.spool.writer import BatchWriter, ImmediateWriter, run_batch


class CountingFileSystem(FileSystem):
    """Counts directory fsyncs, and can make them fail."""

    def __init__(self, fail: bool = False) -> None:
        self.directory_syncs: list[str] = []
        self.fail = fail

    def fsync_directory(self, path: str) -> None:
        self.directory_syncs.append(path)
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        super().fsync_directory(path)


class FakeReactor:
    """Collects callFromThread calls, to be run by the test in the test's thread."""

    def __init__(self) -> None:
        self.calls: list = []
        self.lock = threading.Lock()

    def callFromThread(self, f, *args) -> None:
        with self.lock:
            self.calls.append((f, args))

    def run_calls(self) -> None:
        for f, args in self.calls:
            f(*args)
        self.calls = []


class RunBatchTests(SynchronousTestCase):
    """run_batch: the unit of group commit."""

    def setUp(self) -> None:
        self.a = os.path.abspath(self.mktemp())
        self.b = os.path.abspath(self.mktemp())
        os.makedirs(self.a)
        os.makedirs(self.b)

    def test_each_directory_synced_once(self) -> None:
        """Ten jobs touching two directories cost two directory fsyncs, and each job gets its result."""
        fs = CountingFileSystem()
        jobs = [(lambda i=i: (i, [self.a if i % 2 else self.b])) for i in range(10)]
        outcomes = run_batch(jobs, fs)
        self.assertEqual(outcomes, [(True, i) for i in range(10)])
        self.assertEqual(sorted(fs.directory_syncs), sorted([self.a, self.b]))

    def test_failed_job_does_not_fail_the_others(self) -> None:
        """A job that raises fails alone; the directories of the others are still synced."""
        fs = CountingFileSystem()

        def broken():
            raise OSError(errno.ENOSPC, "No space left on device")
        outcomes = run_batch([lambda: (1, [self.a]), broken, lambda: (3, [self.a])], fs)
        self.assertEqual([ok for ok, _ in outcomes], [True, False, True])
        self.assertTrue(outcomes[1][1].check(OSError))
        self.assertEqual(fs.directory_syncs, [self.a])

    def test_directory_sync_failure_fails_the_batch(self) -> None:
        """If a directory fsync fails, no job of the batch is reported durable."""
        fs = CountingFileSystem(fail=True)
        outcomes = run_batch([lambda: (1, [self.a]), lambda: (2, [])], fs)
        self.assertEqual([ok for ok, _ in outcomes], [False, False])
        self.assertIn("Input/output error", outcomes[0][1].getErrorMessage())

    def test_batch_failure_is_one_per_job(self) -> None:
        """
        A failed directory fsync fails every job of the batch with its own
        exception: raising them one after the other (as each caller does)
        leaves each with a short traceback, not one that grows per job.
        """
        fs = CountingFileSystem(fail=True)
        outcomes = run_batch([lambda i=i: (i, [self.a]) for i in range(50)], fs)
        errors = [failure.value for _, failure in outcomes]
        self.assertEqual(len({id(e) for e in errors}), 50)
        sizes: list[int] = []

        async def caller(d: Deferred) -> None:  # as every committing SMTP session awaits its job
            try:
                await d
            except OSError:
                sizes.append(len(Failure().getTraceback().splitlines()))

        waiting = [Deferred() for _ in outcomes]
        for d in waiting:
            Deferred.fromCoroutine(caller(d))
        for d, (_, failure) in zip(waiting, outcomes):
            d.errback(failure)
        self.assertEqual(len(sizes), 50)
        self.assertEqual(len(set(sizes)), 1, sizes)
        self.assertEqual(errors[0].errno, errno.EIO)

    def test_writer_gone_is_one_per_job(self) -> None:
        """When the writer process dies, each waiting job fails with its own WriterGone."""
        from twisted.internet.error import ProcessTerminated

        from gomail.spool.process import WriterGone, _job_failure

        ended = Failure(ProcessTerminated(signal=9))
        errors = [_job_failure(ended).value for _ in range(3)]
        self.assertTrue(all(isinstance(e, WriterGone) for e in errors))
        self.assertEqual(len({id(e) for e in errors}), 3)

    def test_immediate_writer(self) -> None:
        """ImmediateWriter runs the job at once and fires its Deferred with the result or the failure."""
        writer = ImmediateWriter(CountingFileSystem())
        verifyObject(ISpoolWriter, writer)
        self.assertEqual(self.successResultOf(writer.run(lambda files, what: (what, [self.a]), what="done")), "done")
        self.failureResultOf(writer.run(lambda files: 1 / 0), ZeroDivisionError)


class InterfaceTests(SynchronousTestCase):
    """Every spool writer, and every test double standing in for one, provides ISpoolWriter."""

    def test_writers_and_doubles(self) -> None:
        """The thread writer, the immediate writer, a writer process's lane and the tests' doubles."""
        from gomail.spool.process import WriterProcess, WriterSpec
        from tests.smtphelpers import ManualRun
        from tests.test_control import GatedWriter

        files = SpoolFiles(self.mktemp())
        lane = WriterProcess(None, WriterSpec(files.directory, 0, 1)).lane("commit")
        manual = ManualRun()
        manual.files = files
        for writer in (BatchWriter(None, files), ImmediateWriter(files=files), lane, manual, GatedWriter(files)):
            self.assertTrue(verifyObject(ISpoolWriter, writer), writer)


class BatchWriterTests(SynchronousTestCase):
    """BatchWriter: a real thread, reporting through the reactor's callFromThread."""

    def test_jobs_waiting_together_share_a_batch(self) -> None:
        """
        Jobs submitted while the thread is busy run as one batch: 20 jobs on one
        directory submitted while the first job blocks cost 2 batches and 2 fsyncs.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        fs = CountingFileSystem()
        reactor = FakeReactor()
        writer = BatchWriter(reactor, SpoolFiles(directory, fs))
        verifyObject(ISpoolWriter, writer)
        writer.startService()
        gate = threading.Event()
        started = threading.Event()

        def first():
            started.set()
            gate.wait(10)
            return 0, [directory]
        results: list = []
        writer.run(lambda files: first()).addCallback(results.append)
        self.assertTrue(started.wait(10))
        for i in range(1, 21):
            writer.run(lambda files, i: (i, [files.directory]), i=i).addCallback(results.append)
        gate.set()
        writer.stopService()  # joins the thread: every job submitted before has run
        reactor.run_calls()
        self.assertEqual(results, list(range(21)))
        self.assertEqual(writer.batches, 2)
        self.assertEqual(fs.directory_syncs, [directory, directory])
