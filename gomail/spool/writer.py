# -*- test-case-name: tests.test_writer -*-
"""
Durable file jobs (L{gomail.spool.jobs}), run in batches by one thread.

Every change that must survive a crash (committing a message, rewriting an
envelope, removing a delivered message, a Maildir copy) is a *job*: a function
returning C{(result, directories)} - the directories whose entries it changed -
or a generator that writes its files, yields the list of their descriptors,
and, once the writer has fsynced them, renames them into place and returns
C{(result, directories)}. The writer runs all jobs waiting at a time as one
batch (L{run_batch}, also what the writer's child process runs): first every job up to its yield, then the fsync of all their files in
parallel (concurrent fsyncs share journal commits: measured here, 8 threads
fsync a small file in 0.1 ms against 0.33 ms one at a time), then the rest of
every job, then one fsync per touched directory (group commit); finally it
reports the whole batch back to the reactor in one call.

Why one thread and batches rather than a thread pool: with a job per message
in a pool, every message costs several thread hand-offs, and the threads'
contention for the GIL stalls the reactor's own system calls (measured: a
loopback send() took 170 us instead of a few). Batching turns N hand-offs and N
directory fsyncs into about two of each per batch; fsync itself releases the
GIL, so the reactor keeps serving while a batch is on disk.
"""

from __future__ import annotations

import copy
import functools
import inspect
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.interfaces import ISpoolWriter
from gomail.spool.fs import FileSystem
from gomail.spool.jobs import SpoolFiles

Job = Callable[[], tuple[Any, Iterable[str]]]
#: Put on a writer's queue to end it after the jobs before it.
STOP = object()


def run_batch(jobs: list[Job], fs: FileSystem, fsync_all: Callable[[list[int]], list] | None = None
              ) -> list[tuple[bool, Any]]:
    """
    Run C{jobs} in order (generator jobs in the three phases described above),
    then fsync every directory they touched. Returns one C{(succeeded,
    result_or_failure)} per job; when a directory fsync fails, every job of the
    batch that had succeeded fails with that error (its change may not be
    durable). C{fsync_all(fds)} fsyncs descriptors and returns one exception or
    None per descriptor (default: one after the other with C{fs.fsync}).
    """
    outcomes: list[tuple[bool, Any]] = [(False, None)] * len(jobs)
    dirty: set[str] = set()
    waiting: list[tuple[int, Any, list[int]]] = []

    def finish(index: int, step: Callable[[], Any]) -> None:
        try:
            step()
        except StopIteration as stop:
            result, directories = stop.value
            outcomes[index] = (True, result)
            dirty.update(directories)
        except BaseException:  # noqa: BLE001 - a job's every failure is its caller's, not the writer's
            outcomes[index] = (False, Failure())
        else:
            outcomes[index] = (False, Failure(RuntimeError("a spool job yielded twice")))

    for index, job in enumerate(jobs):
        try:
            produced = job()
            if inspect.isgenerator(produced):
                waiting.append((index, produced, list(next(produced))))
            else:
                result, directories = produced
                outcomes[index] = (True, result)
                dirty.update(directories)
        except BaseException:  # noqa: BLE001 - a job's every failure is its caller's, not the writer's
            outcomes[index] = (False, Failure())
    if waiting:
        fds = [fd for _, _, job_fds in waiting for fd in job_fds]
        errors = dict(zip(fds, fsync_all(fds) if fsync_all else fsync_in_parallel(fs, None, fds)))
        for index, generator, job_fds in waiting:
            error = next((errors[fd] for fd in job_fds if errors[fd] is not None), None)
            if error is None:
                finish(index, functools.partial(generator.send, None))
            else:
                finish(index, functools.partial(generator.throw, error))
    for directory in sorted(dirty):
        try:
            fs.fsync_directory(directory)
        except BaseException as e:  # noqa: BLE001 - the batch may not be durable: every job fails with it
            return [(False, own_failure(e)) if ok else (ok, value) for ok, value in outcomes]
    return outcomes


def own_failure(error: BaseException) -> Failure:
    """
    A failure for one job alone: a copy of C{error} without its traceback.

    One exception object handed to several callers gains the frames of every
    place that raises it again, so the log lines of a disk failure that failed
    a whole batch carried ever longer tracebacks (one failure, one traceback).
    """
    clone = copy.copy(error)
    clone.__traceback__ = None
    return Failure(clone, type(error), error.__traceback__)


def take_batch(waiting: queue.SimpleQueue, limit: int) -> tuple[list, bool]:
    """
    Wait for the next item put on C{waiting}, then take every item already
    there after it, up to C{limit} in all. Returns them and whether L{STOP}
    was among them (the caller runs the batch, then ends).
    """
    item = waiting.get()
    batch: list = []
    stopping = False
    while True:
        if item is STOP:
            stopping = True
        else:
            batch.append(item)
        if len(batch) >= limit:
            break
        try:
            item = waiting.get_nowait()
        except queue.Empty:
            break
    return batch, stopping


def fsync_in_parallel(fs: FileSystem, pool: ThreadPoolExecutor | None, fds: list[int]) -> list:
    """fsync C{fds} on C{pool}'s threads (one after the other without a pool); one error or None each."""
    if len(fds) == 1 or pool is None:
        return [_try(fs.fsync, fd) for fd in fds]
    return list(pool.map(lambda fd: _try(fs.fsync, fd), fds))


def _try(function: Callable[[int], None], fd: int) -> BaseException | None:
    try:
        function(fd)
    except BaseException as e:  # noqa: BLE001 - reported per descriptor to its job
        return e
    return None


@implementer(ISpoolWriter)
class ImmediateWriter:
    """
    Runs each job at once in the calling thread: for tests and tools, not for
    the reactor. C{fs}, when given, is the file operations its jobs use
    (tests pass failing ones); C{files}, the whole L{SpoolFiles}.
    """

    in_process = True

    def __init__(self, fs: FileSystem | None = None, files: SpoolFiles | None = None) -> None:
        self.files = files or SpoolFiles("", fs or FileSystem())
        if fs is not None:
            self.files.fs = fs

    def run(self, job: Callable[..., Any], **arguments: Any) -> Deferred:
        """Run C{job} now; the Deferred has already fired."""
        [(ok, value)] = run_batch([functools.partial(job, self.files, **arguments)], self.files.fs)
        return succeed(value) if ok else fail(value)


@implementer(ISpoolWriter)
class BatchWriter(Service):
    """
    The writer thread, owned by the service: started with it, and stopped after
    the jobs already submitted have run. Its jobs share C{files} (with the
    other writer of the server, which runs removals and Maildir copies).
    """

    in_process = True

    def __init__(self, reactor: Any, files: SpoolFiles, max_batch: int = 512,
                 fsync_threads: int = 8, name: str = "gomail-spool-writer") -> None:
        self.thread_name = name
        self.reactor = reactor
        self.files = files
        self.max_batch = max_batch
        self.fsync_threads = fsync_threads
        self.batches = 0
        self._fsyncs: ThreadPoolExecutor | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def fs(self) -> FileSystem:
        return self.files.fs

    def run(self, job: Callable[..., Any], **arguments: Any) -> Deferred:
        """Run C{job(files, **arguments)} in the writer thread; fires (in the reactor) once its batch is durable."""
        return self.submit(functools.partial(job, self.files, **arguments))

    def submit(self, job: Job) -> Deferred:
        """Run C{job()} in the writer thread; fires (in the reactor) once its batch is durable."""
        d: Deferred = Deferred()
        self._queue.put((job, d))
        return d

    def startService(self) -> None:
        super().startService()
        self._fsyncs = ThreadPoolExecutor(self.fsync_threads, thread_name_prefix=self.thread_name + "-fsync")
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self._queue.put(STOP)
        thread, self._thread = self._thread, None
        if thread is not None:
            # Waits for the batch on disk now and the jobs queued before the stop.
            thread.join()
        if self._fsyncs is not None:
            self._fsyncs.shutdown()
        return succeed(None)

    def _fsync_all(self, fds: list[int]) -> list:
        return fsync_in_parallel(self.fs, self._fsyncs if self.fsync_threads > 1 else None, fds)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = take_batch(self._queue, self.max_batch)
            if batch:
                outcomes = run_batch([job for job, _ in batch], self.fs, self._fsync_all)
                self.batches += 1
                self.reactor.callFromThread(self._report, [d for _, d in batch], outcomes)

    @staticmethod
    def _report(deferreds: list[Deferred], outcomes: list[tuple[bool, Any]]) -> None:
        for d, (ok, value) in zip(deferreds, outcomes):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
