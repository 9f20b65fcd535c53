# -*- test-case-name: tests.test_writer_process -*-
"""
The spool writer's child process (started by L{gomail.spool.process}; not a
command for people).

Reads a L{WriterSpec} and then job frames from standard input, runs each
lane's jobs in batches in a thread of its own (L{gomail.spool.writer.run_batch},
exactly as the in-process writer does), and writes one reply frame per job to
standard output once its batch is durable. End of input means stop: the jobs
already read are finished first.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from twisted.logger import globalLogBeginner, textFileLogObserver

from gomail.spool.fs import FileSystem
from gomail.spool.process import HEADER, LOCK_NAME, WriterSpec, frame
from gomail.spool.spares import SPARE_PREFIX
from gomail.spool.writer import STOP, fsync_in_parallel, method_job, run_batch, take_batch

MAX_BATCH = 512
#: The first reply: the lock is held, jobs are welcome.
READY = (None, True, "ready")


def take_lock(path: str, timeout: float) -> int:
    """
    Hold an exclusive flock on C{path} (the spool's writer lock) and return its
    descriptor; wait up to C{timeout} seconds for a writer still holding it,
    then exit with a line saying so.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + timeout
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                sys.exit(f"another spool writer holds {path} (is another gomail running on this spool?)")
            if not waited:
                print(f"waiting for {path}: another spool writer holds it "
                      "(one still finishing, or another gomail on this spool)", file=sys.stderr, flush=True)
                waited = True
            time.sleep(0.05)


def remove_spares(tmp: str) -> None:
    """
    Remove the spare files an earlier writer left in C{tmp} (a writer that
    died: nobody else knows their names, and only writers make them).
    """
    try:
        names = [name for name in os.listdir(tmp) if name.startswith(SPARE_PREFIX)]
    except FileNotFoundError:
        return  # a new spool: the server creates tmp/ next
    for name in names:
        os.unlink(os.path.join(tmp, name))
    if names:
        FileSystem().fsync_directory(tmp)


def build_targets(spec: WriterSpec) -> dict[str, Any]:
    """This process's own spool objects, by their C{job_target} names."""
    from gomail.delivery.failed import FailedStore
    from gomail.delivery.maildir import MaildirDelivery
    from gomail.spool.store import Spool

    # File-only twins of the server's objects: no clock, no I/O pool (their job methods use neither).
    # Known debt: issue 16 part 1 replaces them with plain job functions.
    spool = Spool(spec.spool_directory, clock=None, run=None,  # type: ignore[arg-type]
                  spare_files=spec.spare_files)
    mailbox = MaildirDelivery(spec.mailbox_directory, spec.hostname, writer=None)
    failed = FailedStore(spool, clock=None)  # type: ignore[arg-type]
    return {target.job_target: target for target in (spool, mailbox, failed)}


class Replies:
    """Standard output, shared by the lanes: a batch's replies go out in one write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, replies: list[tuple[int | None, bool, Any]]) -> None:
        data = b"".join(_reply_frame(reply) for reply in replies)
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except BrokenPipeError:
                # The server is gone (killed): nobody is waiting for an answer any
                # more, but the lanes still finish the jobs they were sent.
                pass


def _reply_frame(reply: tuple[int | None, bool, Any]) -> bytes:
    request_id, ok, value = reply
    try:
        data = frame(reply)
        if not ok:
            # Some exception classes pickle but cannot be rebuilt (an __init__
            # with other arguments): the server must be able to read every frame.
            pickle.loads(data[HEADER.size:])
        return data
    except Exception as e:  # noqa: BLE001 - an unsendable result fails its job, not the lane
        return frame((request_id, False, RuntimeError(f"spool writer result that cannot be sent: {value!r} ({e})")))


class Lane:
    """One writer thread: takes the jobs waiting, runs them as one batch, replies."""

    def __init__(self, name: str, targets: dict[str, Any], fsyncs: ThreadPoolExecutor, replies: Replies) -> None:
        self.name = name
        self.targets = targets
        self.fsyncs = fsyncs
        self.replies = replies
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.fs = targets["spool"].fs
        self.thread = threading.Thread(target=self._loop, name=f"gomail-writer-{name}", daemon=True)

    def _fsync_all(self, fds: list[int]) -> list:
        return fsync_in_parallel(self.fs, self.fsyncs, fds)

    def _loop(self) -> None:
        try:
            self._run()
        except BaseException:  # noqa: BLE001 - any end of a lane ends the process (see below)
            # A lane that stops answering would leave the server waiting for
            # ever: end the whole process instead, so the server sees it go,
            # fails what was waiting and starts a new one.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = take_batch(self.queue, MAX_BATCH)
            if batch:
                jobs = [method_job(self.targets[target], method, args) for _, target, method, args in batch]
                outcomes = run_batch(jobs, self.fs, self._fsync_all)
                self.replies.send([(request_id, ok, value if ok else value.value)
                                   for (request_id, *_), (ok, value) in zip(batch, outcomes)])


def read_frame(stream: BinaryIO) -> Any:
    """The next frame's value, or C{STOP} at the end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return STOP
    (length,) = HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        return STOP
    return pickle.loads(data)


def main() -> None:
    # The server stops this process by closing its input, after its own
    # clients are drained; a Ctrl-C, SIGTERM or terminal hangup sent to the
    # whole process group must not cut a batch short.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Replies get a descriptor of their own; anything else that writes to
    # standard output (a stray print) lands on standard error instead, which
    # the server logs, and cannot corrupt a frame. Log events go there too.
    replies = Replies(os.dup(sys.stdout.fileno()))
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    stdin = sys.stdin.buffer
    spec = read_frame(stdin)
    if not isinstance(spec, WriterSpec):
        sys.exit("gomail spool writer: no specification on standard input")
    lock = take_lock(os.path.join(spec.spool_directory, LOCK_NAME), spec.lock_timeout)
    remove_spares(os.path.join(spec.spool_directory, "tmp"))
    targets = build_targets(spec)
    replies.send([READY])
    with ThreadPoolExecutor(spec.fsync_threads, thread_name_prefix="gomail-writer-fsync") as fsyncs:
        lanes = {name: Lane(name, targets, fsyncs, replies) for name in spec.lanes}
        for lane in lanes.values():
            lane.thread.start()
        while (request := read_frame(stdin)) is not STOP:
            request_id, lane_name, target, method, args = request
            if lane_name in lanes and target in targets:
                lanes[lane_name].queue.put((request_id, target, method, args))
            else:
                replies.send([(request_id, False, ValueError(f"no lane {lane_name!r} or target {target!r}"))])
        for lane in lanes.values():
            lane.queue.put(STOP)
        for lane in lanes.values():
            lane.thread.join()
    os.close(lock)


if __name__ == "__main__":
    main()
