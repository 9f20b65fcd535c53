# -*- test-case-name: tests.test_writer_process -*-
"""
The spool writer's child process (started by L{gomail.spool.process}; not a
command for people).

Takes the spool's writer lock, then serves the AMP commands of
L{gomail.spool.wire} on its standard input and output: each job command is
parsed by its L{amp.Command} and run by its lane, a writer thread with its own
batches (L{gomail.spool.writer.run_batch}, exactly as the in-process writer
does), which writes the answers of a batch once it is durable. End of input
means stop: the jobs already received are finished and answered first.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import os
import queue
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols import amp
from twisted.protocols.amp import IBoxReceiver
from zope.interface import implementer

from gomail.spool import wire
from gomail.spool.fs import FileSystem
from gomail.spool.jobs import SpoolFiles
from gomail.spool.process import LOCK_NAME
from gomail.spool.spares import SPARE_PREFIX
from gomail.spool.writer import STOP, fsync_in_parallel, run_batch, take_batch

MAX_BATCH = 512


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
            time.sleep(0.05)  # before the event loop runs: nothing else to serve yet


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


class Answers:
    """Standard output, shared by the lanes: a batch's answers go out in one write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def send(self, boxes: list[amp.AmpBox]) -> None:
        data = b"".join(box.serialize() for box in boxes)
        with self._lock:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except BrokenPipeError:
                # The server is gone (killed): nobody is waiting for an answer any
                # more, but the lanes still finish the jobs they were sent.
                pass


def answer_box(command: type[wire.JobCommand], ask: bytes, ok: bool, value: Any) -> amp.AmpBox:
    """The AMP answer (or error) box of one job, as AMP's own responders make them."""
    if ok:
        box = command.makeResponse({"result": value} if command.response else {}, None)
        box[amp.ANSWER] = ask
        return box
    return error_box(ask, wire.describe_error(value))


def error_box(ask: bytes, error: wire.JobFailed) -> amp.AmpBox:
    return amp.AmpBox({amp.ERROR: ask, amp.ERROR_CODE: wire.JobCommand.errors[wire.JobFailed],
                       amp.ERROR_DESCRIPTION: str(error).encode("utf-8")})


class Lane:
    """One writer thread: takes the jobs waiting, runs them as one batch, answers them in one write."""

    def __init__(self, name: str, files: SpoolFiles, fsyncs: ThreadPoolExecutor | None, answers: Answers) -> None:
        self.name = name
        self.files = files
        self.fsyncs = fsyncs
        self.answers = answers
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"gomail-writer-{name}", daemon=True)

    def run(self, command: type[wire.JobCommand], ask: bytes, arguments: dict[str, Any]) -> None:
        """Queue the job of C{command}; it is answered (C{ask} is the question's tag) once durable."""
        self.queue.put((functools.partial(command.job, self.files, **arguments), command, ask))

    def stop(self) -> None:
        """Finish the jobs queued so far, then end the thread."""
        self.queue.put(STOP)

    def _fsync_all(self, fds: list[int]) -> list:
        return fsync_in_parallel(self.files.fs, self.fsyncs, fds)

    def _loop(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch, stopping = take_batch(self.queue, MAX_BATCH)
                if batch:
                    outcomes = run_batch([job for job, _, _ in batch], self.files.fs, self._fsync_all)
                    self.answers.send([answer_box(command, ask, ok, value if ok else value.value)
                                       for (_, command, ask), (ok, value) in zip(batch, outcomes)])
        except BaseException:  # noqa: BLE001 - any end of a lane ends the process (see below)
            # A lane that stops answering would leave the server waiting for
            # ever: end the whole process instead, so the server sees it go,
            # fails what was waiting and starts a new one.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)


#: The job commands by their AMP names.
_COMMANDS: dict[bytes, type[wire.JobCommand]] = {
    command.commandName: command for command in wire.JOB_COMMANDS.values()}  # type: ignore[misc]


@implementer(IBoxReceiver)
class Dispatcher:
    """
    The child's end of the AMP connection: each job command's arguments are
    parsed by its L{amp.Command} and the job handed to its lane, whose thread
    answers it. (No event loop here: the main thread only reads and parses,
    the lanes write their answers themselves, as AMP's own answers would
    look; an event loop beside the lanes cost the writer a third of its
    speed, see bench/README.md.)
    """

    def __init__(self, lanes: dict[str, Lane], answers: Answers) -> None:
        self.lanes = lanes
        self.answers = answers

    def startReceivingBoxes(self, sender: Any) -> None:
        pass

    def stopReceivingBoxes(self, reason: Any) -> None:
        pass

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        ask = box.get(amp.ASK, b"")
        name = box.get(amp.COMMAND)
        if name == wire.Ready.commandName:
            answer = wire.Ready.makeResponse({"pid": os.getpid()}, None)
            answer[amp.ANSWER] = ask
            self.answers.send([answer])
            return
        command = _COMMANDS.get(name)  # type: ignore[arg-type]
        if command is None:
            self.answers.send([amp.AmpBox({amp.ERROR: ask, amp.ERROR_CODE: amp.UNHANDLED_ERROR_CODE,
                                           amp.ERROR_DESCRIPTION: b"Unhandled Command: " + repr(name).encode()})])
            return
        try:
            lane_name, arguments = command.job_arguments(command.parseArguments(box, None))
        except (KeyError, ValueError, TypeError) as e:  # a missing key, bad JSON, a field of the wrong type
            self.answers.send([error_box(ask, wire.describe_error(ValueError(f"malformed {name!r}: {e}")))])
            return
        lane = self.lanes.get(lane_name)
        if lane is None:
            self.answers.send([error_box(ask, wire.describe_error(ValueError(f"no lane {lane_name!r}")))])
            return
        lane.run(command, ask, arguments)


class _Unreadable:
    """The transport AMP's parser drops when the server's input cannot be read: then this process ends."""

    def loseConnection(self) -> None:
        print("unreadable input from the server: exiting", file=sys.stderr, flush=True)
        os._exit(65)


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gomail.spool.writerchild")
    parser.add_argument("--spool", required=True)
    parser.add_argument("--spare-files", type=int, default=0)
    parser.add_argument("--fsync-threads", type=int, default=1)
    parser.add_argument("--lanes", default="commit,mailbox")
    parser.add_argument("--lock-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    # The server stops this process by closing its input, after its own
    # clients are drained; a Ctrl-C, SIGTERM or terminal hangup sent to the
    # whole process group must not cut a batch short.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    # Answers get a descriptor of their own; anything else that writes to
    # standard output (a stray print) lands on standard error instead, which
    # the server logs, and cannot corrupt the AMP stream. Log events go there too.
    answers_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Warnings and errors only: the server logs every line it reads here as an error.
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(textFileLogObserver(sys.stderr), [
        LogLevelFilterPredicate(LogLevel.warn)])], redirectStandardIO=False)
    lock = take_lock(os.path.join(args.spool, LOCK_NAME), args.lock_timeout)
    remove_spares(os.path.join(args.spool, "tmp"))
    files = SpoolFiles(args.spool, spare_files=args.spare_files)

    fsyncs = ThreadPoolExecutor(max(1, args.fsync_threads), thread_name_prefix="gomail-writer-fsync")
    answers = Answers(answers_fd)
    lanes = {name: Lane(name, files, fsyncs if args.fsync_threads > 1 else None, answers)
             for name in args.lanes.split(",")}
    for lane in lanes.values():
        lane.thread.start()
    parser = amp.BinaryBoxProtocol(Dispatcher(lanes, answers))
    parser.makeConnection(_Unreadable())
    while data := os.read(0, 1 << 20):
        parser.dataReceived(data)
    # End of input: the server stops (or is gone). Finish and answer what was sent, then exit.
    for lane in lanes.values():
        lane.stop()
    for lane in lanes.values():
        lane.thread.join()
    fsyncs.shutdown()
    os.close(lock)


if __name__ == "__main__":
    main()
