# -*- test-case-name: tests.test_writer_process -*-
"""
The spool writer in a child process of its own.

Why a process: the writer's work is almost all system calls (create, write,
fsync, rename), and in the server's process every one of them gives up the
GIL and then waits for the reactor to give it back. Measured here, that made
a writer batch take several times its system calls' time, and the SMTP
clients waiting for their 250 waited that long (bench/README.md). In a
process of its own the writer has its own interpreter and the server's only
cost per job is one write to a pipe and one read from it.

The jobs are the same as in-process (L{gomail.spool.writer}): a call of a
method of one of the spool objects the child builds from a specification
(L{WriterSpec}: the spool, the Maildirs, the failed store), named as
C{(target.job_target, method, args)}. Each I{lane} is one writer thread in the
child with its own batches, as the two in-process writers are: "commit" for
commits and envelope rewrites (what SMTP clients wait on), "mailbox" for
local delivery and removals. A reply comes once the job's batch is durable.

Frames in both directions are a 4-byte big-endian length and a pickle. Only
this process and its own child ever read them (the pipes are private), so
pickle's trust in its input is not a concern.

The child holds an exclusive lock on C{<spool>/writer.lock} while it works,
and the service's start fires only once it does: so a server restarted right
after being killed waits for its old writer to finish, and two servers never
write one spool. If the child dies, every job waiting on it fails (a commit
answers 451 and leaves nothing behind, see L{gomail.spool.incoming}) and a
new child is started a second later. On stop, the child is told to finish by
closing its input: it completes the jobs already sent, then exits.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gomail.spool.writer import own_failure

HEADER = struct.Struct("!I")
#: How long a stopping server waits for the child to finish its jobs before killing it.
STOP_TIMEOUT = 60.0
#: The wait before a child that died is replaced.
RESTART_DELAY = 1.0


def frame(value: Any) -> bytes:
    """One frame: length, then the pickle of C{value}."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


class FrameReader:
    """Splits a byte stream into the values of its frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; returns the values of the frames now complete."""
        self._buffer += data
        values = []
        start = 0
        while len(self._buffer) - start >= HEADER.size:
            (length,) = HEADER.unpack_from(self._buffer, start)
            end = start + HEADER.size + length
            if len(self._buffer) < end:
                break
            values.append(pickle.loads(memoryview(self._buffer)[start + HEADER.size:end]))
            start = end
        del self._buffer[:start]
        return values


@dataclass(frozen=True)
class WriterSpec:
    """What the child needs to build its spool objects: plain values only."""

    spool_directory: str
    spare_files: int
    mailbox_directory: str
    hostname: str
    fsync_threads: int
    lanes: tuple[str, ...] = ("commit", "mailbox")
    #: How long a new child waits for the spool's writer lock (held by an earlier writer still finishing).
    lock_timeout: float = 30.0


#: In the spool directory: held (flock) by the writer process working on it.
LOCK_NAME = "writer.lock"


class WriterGone(Exception):
    """The writer process exited before it answered."""


class WriterStartError(Exception):
    """The writer process could not start (the message says why)."""


class RemoteLane:
    """One lane of a L{WriterProcess}: the writer interface the spool objects use."""

    #: Jobs run in another process: descriptors cannot be passed (only paths), nor objects changed here.
    in_process = False

    def __init__(self, process: WriterProcess, name: str) -> None:
        self.process = process
        self.name = name

    def call(self, target: Any, method: str, *args: Any) -> Deferred:
        """Run C{target.<method>(*args)} in the child's copy of C{target}; fires once durable."""
        return self.process.send(self.name, target.job_target, method, args)

    def submit(self, job: Any) -> Deferred:
        """Closures cannot cross into the child: every job is a L{call}."""
        return fail(TypeError("a writer process runs named calls only (use call())"))


class WriterProcess(Service):
    """The child process and its lanes, as a service of the server."""

    log = Logger()

    def __init__(self, reactor: Any, spec: WriterSpec, name: str = "gomail-spool-writer",
                 restart_delay: float = RESTART_DELAY) -> None:
        self.reactor = reactor
        self.spec = spec
        self.setName(name)
        self.restart_delay = restart_delay
        self.restarts = 0
        self._protocol: _ChildProtocol | None = None
        self._pending: dict[int, Deferred] = {}
        self._next_id = 0
        self._ended: Deferred | None = None
        self._ready: Deferred | None = None
        self._restart: Any = None

    def lane(self, name: str) -> RemoteLane:
        """The writer interface for jobs of lane C{name} (one of C{spec.lanes})."""
        if name not in self.spec.lanes:
            raise ValueError(f"no lane {name!r}")
        return RemoteLane(self, name)

    def startService(self) -> Deferred:  # type: ignore[override]
        """
        Start the child; fires once it holds the spool's writer lock, so no
        earlier writer (of a server killed a moment ago, or another server on
        the same spool) still writes there when the spool is prepared.
        """
        super().startService()
        self._ready = Deferred()
        ready = self._ready
        self._spawn()
        return ready

    @property
    def pid(self) -> int | None:
        """The running child's process id."""
        return self._protocol.transport.pid if self._protocol is not None else None

    def _spawn(self) -> None:
        self._restart = None
        protocol = _ChildProtocol(self)
        # The child imports gomail from wherever this process did (a checkout,
        # a virtualenv): its path first, the rest of the environment as it is.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self.reactor.spawnProcess(protocol, sys.executable,
                                  [sys.executable, "-m", "gomail.spool.writerchild"],
                                  env=env, childFDs={0: "w", 1: "r", 2: "r"})
        protocol.transport.write(frame(self.spec))
        self._protocol = protocol

    def send(self, lane: str, target: str, method: str, args: tuple) -> Deferred:
        """Send one job; fires with its result once the child reports it durable."""
        if self._protocol is None or self._ended is not None:
            return fail(WriterGone("the spool writer process is not running"))
        request_id = self._next_id
        try:
            data = frame((request_id, lane, target, method, args))
        except Exception as e:  # noqa: BLE001 - arguments that cannot be pickled: a programming error, told to the caller
            return fail(e)
        self._next_id += 1
        d: Deferred = Deferred()
        self._pending[request_id] = d
        self._protocol.transport.write(data)
        return d

    def _replied(self, replies: list[tuple[int | None, bool, Any]]) -> None:
        for request_id, ok, value in replies:
            if request_id is None:  # the child holds the lock and takes jobs
                ready, self._ready = self._ready, None
                if ready is not None:
                    ready.callback(None)
                continue
            d = self._pending.pop(request_id, None)
            if d is None:
                continue
            if ok:
                d.callback(value)
            else:
                # One reply frame may carry one exception object for several jobs.
                d.errback(own_failure(value))

    def _child_ended(self, protocol: _ChildProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        pending, self._pending = self._pending, {}
        error = WriterGone(f"the spool writer process exited: {reason.getErrorMessage()}")
        if self._ready is not None:
            # It never got going: no restart, the server's start fails with the child's reason.
            ready, self._ready = self._ready, None
            why = protocol.last_error or reason.getErrorMessage()
            ready.errback(Failure(WriterStartError(f"the spool writer process could not start: {why}")))
            if self._ended is None:
                _fail_all(pending, error)
                return
        if self._ended is not None:
            ended, self._ended = self._ended, None
            if not reason.check(ProcessDone):
                self.log.error("spool writer process: {error}", error=reason.getErrorMessage())
            _fail_all(pending, error)
            ended.callback(None)
            return
        self.log.critical("spool writer process exited unexpectedly ({error}); {count} jobs failed; "
                          "restarting it in {delay:.0f} s", error=reason.getErrorMessage(),
                          count=len(pending), delay=self.restart_delay)
        self.restarts += 1
        self._restart = self.reactor.callLater(self.restart_delay, self._respawn)
        _fail_all(pending, error)

    def _respawn(self) -> None:
        try:
            self._spawn()
        except Exception as e:  # noqa: BLE001 - out of processes or descriptors, say: keep trying
            self.log.critical("could not restart the spool writer process ({error}); trying again in {delay:.0f} s",
                              error=e, delay=self.restart_delay)
            self._restart = self.reactor.callLater(self.restart_delay, self._respawn)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
            self._restart = None
        protocol = self._protocol
        if protocol is None:
            return succeed(None)
        self._ended = Deferred()
        ended = self._ended
        # No more input: the child finishes the jobs it has, then exits.
        protocol.transport.closeStdin()
        timeout = self.reactor.callLater(STOP_TIMEOUT, self._kill, protocol)
        ended.addBoth(lambda result: (timeout.cancel() if timeout.active() else None, result)[1])
        return ended

    def _kill(self, protocol: _ChildProtocol) -> None:
        self.log.error("spool writer process did not finish within {timeout:.0f} s: killing it",
                       timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessExitedAlready):  # it ended meanwhile
            protocol.transport.signalProcess("KILL")


def _fail_all(pending: dict[int, Deferred], error: Exception) -> None:
    for d in pending.values():
        d.errback(own_failure(error))


class _ChildProtocol(ProcessProtocol):
    log = Logger()
    #: The child's process transport, set by spawnProcess before anything else runs.
    transport: Any

    def __init__(self, owner: WriterProcess) -> None:
        self.owner = owner
        self.reader = FrameReader()
        self._errors = b""
        #: The last line the child wrote to stderr (why it exited, if it did).
        self.last_error = ""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            try:
                self.owner._replied(self.reader.feed(data))
            except Exception:  # noqa: BLE001 - whatever it is, the stream is not trusted any more
                # The reply stream can no longer be trusted: end this child, and
                # with it every job waiting on it (then it is restarted).
                self.log.failure("unreadable reply from the spool writer process: killing it")
                self.transport.signalProcess("KILL")
            return
        # The child's stderr: tracebacks and warnings, logged line by line.
        self._errors += data
        *lines, self._errors = self._errors.split(b"\n")
        for line in lines:
            if line.strip():
                self.last_error = line.decode("utf-8", "replace")
                self.log.error("spool writer process: {line}", line=self.last_error)

    def processEnded(self, reason: Failure) -> None:
        self.owner._child_ended(self, reason)
