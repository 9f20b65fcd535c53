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

The jobs are the same as in-process: the functions of L{gomail.spool.jobs},
each sent as its AMP command (L{gomail.spool.wire}) over the child's
standard input and answered on its standard output once durable. Each
I{lane} is one writer thread in the child with its own batches, as the two
in-process writers are: "commit" for commits and envelope rewrites (what
SMTP clients wait on), "mailbox" for local delivery and removals. A lane of
L{WriterProcess} is an L{ISpoolWriter}, as a L{gomail.spool.writer.BatchWriter} is.

The child holds an exclusive lock on C{<spool>/writer.lock} while it works,
and the service's start fires only once it answers L{wire.Ready}, which it
does once it holds that lock: so a server restarted right after being killed
waits for its old writer to finish, and two servers never write one spool.
If the child dies, every job waiting on it fails with L{WriterGone} (a
commit answers 451 and leaves nothing behind, see L{gomail.spool.incoming};
a finished delivery's removal is retried, see L{gomail.delivery.queue}) and
a new child is started a second later. On stop, the child is told to finish
by closing its input: it completes the jobs already sent, then exits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionClosed,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.interfaces import ISpoolWriter
from gomail.spool import wire

#: How long a stopping server waits for the child to finish its jobs before killing it.
STOP_TIMEOUT = 60.0
#: The wait before a child that died is replaced.
RESTART_DELAY = 1.0


@dataclass(frozen=True)
class WriterSpec:
    """What the child is started with (its command line): plain values only."""

    spool_directory: str
    spare_files: int
    fsync_threads: int
    lanes: tuple[str, ...] = ("commit", "mailbox")
    #: How long a new child waits for the spool's writer lock (held by an earlier writer still finishing).
    lock_timeout: float = 30.0

    def command_line(self) -> list[str]:
        """The child's arguments after C{python -m gomail.spool.writerchild}."""
        return ["--spool", self.spool_directory, "--spare-files", str(self.spare_files),
                "--fsync-threads", str(self.fsync_threads), "--lanes", ",".join(self.lanes),
                "--lock-timeout", repr(self.lock_timeout)]


#: In the spool directory: held (flock) by the writer process working on it.
LOCK_NAME = "writer.lock"


class WriterGone(Exception):
    """The writer process exited before it answered."""


class WriterStartError(Exception):
    """The writer process could not start (the message says why)."""


@implementer(ISpoolWriter)
class RemoteLane:
    """One lane of a L{WriterProcess}: the writer the spool objects use."""

    #: Jobs run in another process: descriptors cannot be passed (only paths), nor objects changed here.
    in_process = False

    def __init__(self, process: WriterProcess, name: str) -> None:
        self.process = process
        self.name = name

    def run(self, job: Callable[..., Any], **arguments: Any) -> Deferred:
        """Run C{job} in the child (as its AMP command); fires with its result once durable."""
        command = wire.JOB_COMMANDS.get(job)
        if command is None:
            return fail(TypeError(f"{getattr(job, '__name__', job)!r} is not a spool job"))
        if arguments.get("fd") is not None:
            return fail(TypeError("a descriptor cannot be handed to the writer process (see Spool.commit_files)"))
        try:
            sent = _command_arguments(command, job, self.name, arguments)
        except TypeError as e:
            return fail(e)
        return self.process.call(command, **sent).addCallbacks(command.result, _job_failure)


def _command_arguments(command: type[wire.JobCommand], job: Callable[..., Any], lane: str,
                       arguments: dict[str, Any]) -> dict[str, Any]:
    """
    C{arguments} as the command takes them: the plain ones, with the job's
    defaults filled in and the C{lane}, as its C{fields}; the others as
    themselves (and no C{fd}).
    """
    field_names, other_names, defaults = _command_shape(command, job)
    unknown = arguments.keys() - field_names - other_names - {"fd"}
    if unknown:
        raise TypeError(f"{job.__name__}() got unexpected arguments: {', '.join(sorted(unknown))}")
    fields = {**defaults, "lane": lane}
    sent: dict[str, Any] = {"fields": fields}
    for name, value in arguments.items():
        if name in field_names:
            fields[name] = value
        elif name in other_names:
            sent[name] = value
    return sent


@functools.cache
def _command_shape(command: type[wire.JobCommand],
                   job: Callable[..., Any]) -> tuple[frozenset[str], frozenset[str], dict]:
    """
    The names of a job's command's fields and of its other arguments, and the
    job's defaults for its fields (read once per job).
    """
    field_names = frozenset(command.fields().types) - {"lane"}
    other_names = frozenset(name.decode("ascii") for name, _ in command.arguments) - {"fields"}
    defaults = {name: parameter.default for name, parameter in inspect.signature(job).parameters.items()
                if name in field_names and parameter.default is not inspect.Parameter.empty}
    return field_names, other_names, defaults


def _job_failure(failure: Failure) -> Failure:
    """A command's failure as the caller sees it: the job's own exception, or L{WriterGone}."""
    if failure.check(wire.JobFailed):
        return Failure(wire.rebuild_error(failure.value))
    if failure.check(ProcessDone, ProcessTerminated, ConnectionClosed):
        return Failure(WriterGone(f"the spool writer process exited: {failure.getErrorMessage()}"))
    return failure


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
        self._ended: Deferred | None = None
        self._ready: Deferred | None = None
        self._restart: Any = None

    def lane(self, name: str) -> RemoteLane:
        """The writer (L{ISpoolWriter}) for jobs of lane C{name} (one of C{spec.lanes})."""
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
                                  [sys.executable, "-m", "gomail.spool.writerchild", *self.spec.command_line()],
                                  env=env, childFDs={0: "w", 1: "r", 2: "r"})
        self._protocol = protocol
        protocol.amp.callRemote(wire.Ready).addCallbacks(self._child_ready, lambda failure: None)

    def _child_ready(self, answer: dict[str, Any]) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.callback(None)

    def call(self, command: type[amp.Command], **arguments: Any) -> Deferred:
        """Send one command to the child; fires with its answer (the job is durable then)."""
        protocol = self._protocol
        if protocol is None or self._ended is not None:
            return fail(WriterGone("the spool writer process is not running"))
        try:
            d = protocol.amp.callRemote(command, **arguments)
        except Exception as e:  # noqa: BLE001 - arguments AMP cannot encode: that call fails, nothing waits
            return fail(e)
        protocol.waiting += 1

        def answered(result: Any) -> Any:
            protocol.waiting -= 1
            return result
        return d.addBoth(answered)

    def _child_ended(self, protocol: _ChildProtocol, reason: Failure, pending: int) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._ready is not None:
            # It never got going: no restart, the server's start fails with the child's reason.
            ready, self._ready = self._ready, None
            why = protocol.last_error or reason.getErrorMessage()
            ready.errback(Failure(WriterStartError(f"the spool writer process could not start: {why}")))
            if self._ended is None:
                return
        if self._ended is not None:
            ended, self._ended = self._ended, None
            if not reason.check(ProcessDone):
                self.log.error("spool writer process: {error}", error=reason.getErrorMessage())
            ended.callback(None)
            return
        self.log.critical("spool writer process exited unexpectedly ({error}); {count} jobs failed; "
                          "restarting it in {delay:.0f} s", error=reason.getErrorMessage(),
                          count=pending, delay=self.restart_delay)
        self.restarts += 1
        self._restart = self.reactor.callLater(self.restart_delay, self._respawn)

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


class _ChildInput:
    """
    The transport the server's AMP protocol writes through: the child's
    standard input. AMP drops a connection whose input it cannot read; here
    that means the reply stream can no longer be trusted, so the child is
    killed (and with it every job waiting on it fails; then it is restarted).
    """

    log = Logger()

    def __init__(self, process: Any) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.process.writeSequence(data)

    def loseConnection(self) -> None:
        self.log.error("unreadable reply from the spool writer process: killing it")
        with contextlib.suppress(ProcessExitedAlready):
            self.process.signalProcess("KILL")

    def getPeer(self) -> Any:
        return _CHILD

    def getHost(self) -> Any:
        return _CHILD


class _ChildAddress:
    """The address AMP logs for the child's pipes (a process transport has none)."""

    def __repr__(self) -> str:
        return "<spool writer process pipes>"


_CHILD = _ChildAddress()


class _ChildProtocol(ProcessProtocol):
    """The child's pipes: AMP over its standard input and output, its standard error logged."""

    log = Logger()
    #: The child's process transport, set by spawnProcess before anything else runs.
    transport: Any

    def __init__(self, owner: WriterProcess) -> None:
        self.owner = owner
        self.amp = amp.AMP()
        #: Commands sent and not answered yet.
        self.waiting = 0
        self._errors = b""
        #: The last line the child wrote to stderr (why it exited, if it did).
        self.last_error = ""

    def connectionMade(self) -> None:
        self.amp.makeConnection(_ChildInput(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            try:
                self.amp.dataReceived(data)
            except Exception:  # noqa: BLE001 - whatever it is, the stream is not trusted any more
                # An answer to no question, say: end this child, and with it
                # every job waiting on it (then it is restarted).
                self.log.failure("unreadable reply from the spool writer process: killing it")
                with contextlib.suppress(ProcessExitedAlready):
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
        pending = self.waiting
        self.owner._child_ended(self, reason, pending)
        # Then every command still waiting fails with the reason (WriterGone for the callers, see _job_failure).
        self.amp.connectionLost(reason)
