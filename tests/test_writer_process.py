"""
The spool writer in a child process (gomail.spool.process): a real child on
the real reactor, driven through the same Spool and Maildir calls the server
makes; what is checked is what ends up on disk and what the callers are told.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import select
import struct
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.delivery.maildir import MaildirDelivery
from gomail.spool import wire, writerchild
from gomail.spool.envelope import Recipient
from gomail.spool.incoming import IncomingMessage
from gomail.spool.integrity import CorruptContent
from gomail.spool.jobs import SpoolFiles, queuejobs
from gomail.spool.process import (
    RemoteLane,
    WriterGone,
    WriterProcess,
    WriterSpec,
    WriterStartError,
    _ChildProtocol,
)
from gomail.spool.writer import STOP
from tests.processes import spawn
from tests.spooltesting import listing, make_spool, read, start_commit


class WireTests(SynchronousTestCase):
    """gomail.spool.wire: values of any size and job failures cross the AMP connection intact."""

    def round_trip(self, argument: amp.Argument, value: Any) -> Any:
        strings: dict[bytes, bytes] = {}
        argument.toBox(b"value", strings, {"value": value}, None)
        self.assertTrue(all(len(v) <= amp.MAX_VALUE_LENGTH for v in strings.values()))
        objects: dict[str, Any] = {}
        argument.fromBox(b"value", strings, objects, None)
        return objects["value"]

    def test_big_values(self) -> None:
        """Content, envelopes and recipient lists longer than AMP's 64 KiB value come back whole."""
        chunks = [b"x" * 70000, b"", b"y" * 3, b"z" * (3 * 65535)]
        self.assertEqual(self.round_trip(wire.ByteChunks(), chunks), chunks)
        self.assertEqual(self.round_trip(wire.BigBytes(), b"e" * 200000), b"e" * 200000)
        targets = [[i, f"user{i}@example.com"] for i in range(5000)]
        self.assertEqual(self.round_trip(wire.BigJSON(), targets), targets)

    def test_small_values_take_one_key(self) -> None:
        """Chunks that fit in one AMP value travel joined under the argument's own name and arrive as one chunk."""
        strings: dict[bytes, bytes] = {}
        wire.ByteChunks().toBox(b"chunks", strings, {"chunks": [b"Subject: x\r\n", b"", b"body\r\n"]}, None)
        self.assertEqual(strings, {b"chunks": b"Subject: x\r\nbody\r\n"})
        self.assertEqual(self.round_trip(wire.ByteChunks(), [b"a", b"b"]), [b"ab"])
        self.assertEqual(self.round_trip(wire.ByteChunks(), []), [b""])
        self.assertEqual(self.round_trip(wire.BigBytes(), b"e" * amp.MAX_VALUE_LENGTH), b"e" * amp.MAX_VALUE_LENGTH)

    def test_fields_are_typed(self) -> None:
        """A job's fields come back as sent; a missing, unknown or wrongly typed field is refused on either side."""
        fields = wire.Fields(queue_id=str, size=int, digest=wire.OPTIONAL_TEXT, now=wire.NUMBER, durable=bool)
        sent = {"lane": "commit", "queue_id": "0123", "size": 5, "digest": None, "now": 1.5, "durable": True}
        self.assertEqual(self.round_trip(fields, sent), sent)
        for wrong in ({**sent, "size": "5"}, {**sent, "size": True}, {**sent, "durable": 1},
                      {**sent, "digest": 3}, {k: v for k, v in sent.items() if k != "lane"},
                      {**sent, "extra": 1}, ["not", "a", "dict"]):
            with self.assertRaises(wire.FieldError, msg=wrong):
                fields.toBox(b"fields", {}, {"fields": wrong}, None)
            strings: dict[bytes, bytes] = {b"fields": json.dumps(wrong).encode()}
            with self.assertRaises(wire.FieldError, msg=wrong):
                fields.fromBox(b"fields", strings, {}, None)

    def test_errors_rebuilt(self) -> None:
        """A job's OSError keeps its errno and file name; CorruptContent its fields; others become RuntimeError."""
        gone = wire.rebuild_error(wire.describe_error(FileNotFoundError(2, "gone", "/x")))
        self.assertEqual((type(gone), gone.errno, gone.filename), (FileNotFoundError, 2, "/x"))
        full = wire.rebuild_error(wire.describe_error(OSError(28, "No space left on device")))
        self.assertEqual((full.errno, full.strerror), (28, "No space left on device"))
        corrupt = wire.rebuild_error(wire.describe_error(CorruptContent("0123", "size 3, expected 4")))
        self.assertEqual((type(corrupt), str(corrupt)), (CorruptContent, "0123: size 3, expected 4"))
        other = wire.rebuild_error(wire.describe_error(_Stubborn("disk", 5)))
        self.assertEqual(type(other), RuntimeError)
        self.assertIn("disk failed", str(other))

    def test_every_job_has_its_command(self) -> None:
        """Each job's command takes the job's keyword arguments (all but the descriptor) and a lane, each once."""
        for job, command in wire.JOB_COMMANDS.items():
            parameters = set(inspect.signature(job).parameters) - {"files", "fd"}
            others = {name.decode() for name, _ in command.arguments} - {"fields"}
            self.assertEqual(set(command.fields().types) | others, parameters | {"lane"}, job)
            self.assertFalse(set(command.fields().types) & others, job)


class ChildOutputTests(SynchronousTestCase):
    """What the child writes to standard error reaches the server's log."""

    def test_stderr_lines_are_logged(self) -> None:
        """Each complete line is logged as an error naming the writer process; a partial line waits for its end."""
        protocol = _ChildProtocol(WriterProcess(None, None))
        with capturedLogs() as events:
            protocol.childDataReceived(2, b"Traceback (most recent call last):\n  File")
            protocol.childDataReceived(2, b' "x.py"\n\n')
        self.assertEqual([formatEvent(e) for e in events],
                         ["spool writer process: Traceback (most recent call last):",
                          'spool writer process:   File "x.py"'])
        self.assertTrue(all(e["log_level"] is LogLevel.error for e in events))


class WriterProcessTests(TestCase):
    """A spool whose writers are the lanes of a real writer process."""

    timeout = 60

    def setUp(self) -> Deferred:
        self.directory = os.path.abspath(self.mktemp())
        self.spool = make_spool(self.directory, spare_files=8)
        spec = WriterSpec(spool_directory=self.directory, spare_files=8, fsync_threads=2)
        self.spec = spec
        self.process = WriterProcess(reactor, spec, restart_delay=0)
        self.addCleanup(self.stop)
        self.spool.writer = self.process.lane("commit")
        self.spool.removal_writer = self.process.lane("mailbox")
        return self.process.startService()

    def stop(self) -> Deferred | None:
        return self.process.stopService() if self.process.running else None

    def commit(self, content: bytes, chunk: int = 8192) -> Deferred:
        envelope, d = start_commit(self.spool, content, "bob@example.com", chunk=chunk)
        return d.addCallback(lambda _: envelope)

    async def _commits(self) -> None:
        small = await self.commit(b"Subject: small\r\n\r\nhello\r\n")
        large_content = b"Subject: large\r\n\r\n" + b"y" * (3 * IncomingMessage.FLUSH_AT) + b"\r\n"
        large = await self.commit(large_content)
        self.assertEqual(listing(self.spool, "queue"), sorted(
            [small.id + ".eml", small.id + ".json", large.id + ".eml", large.id + ".json"]))
        self.assertEqual(read(self.spool.message_path(small.id)), b"Subject: small\r\n\r\nhello\r\n")
        self.assertEqual(read(self.spool.message_path(large.id)), large_content)
        self.assertEqual(self.spool.queued, 2)
        self.assertEqual(listing(self.spool, "tmp"), [])

    def test_small_and_large_commits(self) -> Deferred:
        """
        A message received whole in memory and one that went to tmp/ as it
        arrived (its file reopened by the child) both end complete in queue/.
        """
        return Deferred.fromCoroutine(self._commits())

    async def _deliver_and_remove(self) -> None:
        envelope = await self.commit(b"Subject: local\r\n\r\nfor the mailbox\r\n")
        mailbox = MaildirDelivery(self.spool.path("mailbox"), "mx.test", self.process.lane("mailbox"))
        results = await mailbox.deliver(envelope, self.spool.message_path(envelope.id), [Recipient("bob@example.com")])
        self.assertEqual(results, {"bob@example.com": (250, "2.0.0 Delivered to mailbox")})
        new = self.spool.path("mailbox", "bob@example.com", "new")
        [name] = os.listdir(new)
        self.assertEqual(read(os.path.join(new, name)), b"Subject: local\r\n\r\nfor the mailbox\r\n")
        await self.spool.remove(envelope.id)
        self.assertEqual((listing(self.spool, "queue"), self.spool.queued), ([], 0))
        # The envelope's file is a spare in tmp/ (the content lives on in the Maildir)...
        [spare] = listing(self.spool, "tmp")
        inode = os.stat(self.spool.path("tmp", spare)).st_ino
        # ... offered to the child's next commit once its removal was on disk.
        await self.process.lane("mailbox").run(queuejobs.publish_spares, spares=[])
        again = await self.commit(b"Subject: next\r\n\r\nreuses the spare\r\n")
        inodes = {os.stat(self.spool.path("queue", again.id + ext)).st_ino for ext in (".eml", ".json")}
        self.assertIn(inode, inodes)
        self.assertEqual(listing(self.spool, "tmp"), [])

    def test_maildir_delivery_removal_and_spares(self) -> Deferred:
        """Local delivery and removal run in the child, and its removed files hold its next commit."""
        return Deferred.fromCoroutine(self._deliver_and_remove())

    async def _error(self) -> None:
        with self.assertRaises(FileNotFoundError):
            await self.process.lane("commit").run(queuejobs.commit_message, queue_id="00000000000000000dead",
                                                  chunks=[b"rest"], envelope=b"{}", size=4, started=True)
        self.assertEqual(listing(self.spool, "queue"), [])
        # The child is still there for the next job.
        await self.commit(b"Subject: after\r\n\r\nstill fine\r\n")

    def test_job_error_reaches_the_caller(self) -> Deferred:
        """An exception in a job fails that job's Deferred with the same exception type; the child lives on."""
        return Deferred.fromCoroutine(self._error())

    async def _unknown(self) -> None:
        with self.assertRaises(TypeError):
            await self.process.lane("commit").run(os.listdir, path="/")
        with self.assertRaises(ValueError):
            await RemoteLane(self.process, "no-such-lane").run(queuejobs.move_to_corrupt, queue_id="0123")
        await self.commit(b"Subject: after\r\n\r\nstill fine\r\n")

    def test_unknown_job_or_lane(self) -> Deferred:
        """A function that is not a spool job is refused; a lane the child does not have fails that job only."""
        return Deferred.fromCoroutine(self._unknown())

    def test_arguments_of_the_wrong_type_fail_the_call(self) -> None:
        """Arguments the command cannot encode fail that call at once; nothing is left waiting."""
        self.failureResultOf(self.process.lane("commit").run(queuejobs.publish_spares, spares=[lambda: None]))
        self.assertEqual(self.process._protocol.waiting, 0)

    def test_closures_and_descriptors_are_refused(self) -> None:
        """A lane runs spool jobs only, and cannot be handed a descriptor of this process."""
        self.failureResultOf(self.process.lane("commit").run(lambda files: None), TypeError)
        self.failureResultOf(self.process.lane("commit").run(
            queuejobs.commit_message, queue_id="0123", chunks=[], envelope=b"{}", fd=5), TypeError)

    async def _death(self) -> None:
        first = self.process.pid
        self.process._protocol.transport.signalProcess("KILL")
        _envelope, commit = start_commit(self.spool, b"Subject: lost\r\n\r\nnever answered\r\n", "bob@example.com")
        with self.assertRaises(WriterGone):
            await commit
        # The commit failed as a whole: nothing of it is left (its client was told 451).
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertEqual(self.process.restarts, 1)
        # A new child takes over (restart_delay 0 here).
        while self.process.pid is None:
            await _next_turn()
        self.assertNotEqual(self.process.pid, first)
        await self.commit(b"Subject: again\r\n\r\nafter the restart\r\n")
        self.assertEqual(len(listing(self.spool, "queue")), 2)
        self.flushLoggedErrors()

    async def _respawn_failure(self) -> None:
        spawn, calls = self.process.reactor.spawnProcess, []

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == 1:
                raise OSError(24, "Too many open files")
            return spawn(*args, **kwargs)
        self.process.reactor = _ReactorWith(reactor, failing)
        self.process._protocol.transport.signalProcess("KILL")
        while self.process.pid is None or len(calls) < 2:
            await _next_turn()
        self.assertEqual(len(calls), 2)
        await self.commit(b"Subject: again\r\n\r\nafter a failed restart\r\n")

    def test_failed_restart_is_retried(self) -> Deferred:
        """A restart that cannot start a process (out of descriptors) is tried again until one starts."""
        return Deferred.fromCoroutine(self._respawn_failure())

    def test_child_death_fails_waiting_jobs_and_restarts(self) -> Deferred:
        """A killed child fails the jobs waiting on it (the commit leaves nothing) and is replaced."""
        return Deferred.fromCoroutine(self._death())

    async def _stop(self) -> None:
        commits = [self.commit(b"Subject: %d\r\n\r\nbefore the stop\r\n" % i) for i in range(20)]
        pid = self.process.pid
        await self.process.stopService()
        for d in commits:
            await d
        self.assertEqual(len(listing(self.spool, "queue")), 40)
        self.assertFalse(os.path.exists(f"/proc/{pid}"))
        failure = self.failureResultOf(self.process.lane("commit").run(queuejobs.publish_spares, spares=[]))
        self.assertIsInstance(failure.value, WriterGone)

    async def _second_writer(self) -> None:
        impatient = WriterProcess(reactor, dataclasses.replace(self.spec, lock_timeout=0.2))
        with self.assertRaises(WriterStartError) as caught:
            await impatient.startService()
        self.assertIn("another spool writer holds", str(caught.exception))
        self.assertIn("writer.lock", str(caught.exception))
        self.assertEqual(impatient.restarts, 0)
        self.flushLoggedErrors()

    async def _stop_while_starting(self) -> None:
        waiting = WriterProcess(reactor, dataclasses.replace(self.spec, lock_timeout=0.2))
        ready = waiting.startService()
        ready.addErrback(lambda f: f.trap(WriterStartError))
        # Stopped while it still waits for the lock: the stop still completes.
        await waiting.stopService()
        await ready
        self.assertIsNone(waiting.pid)

    def test_stop_while_waiting_for_the_lock(self) -> Deferred:
        """A writer stopped before it got the spool lock stops (its start fails), rather than hanging the stop."""
        return Deferred.fromCoroutine(self._stop_while_starting())

    def test_a_second_writer_on_the_spool_fails_to_start(self) -> Deferred:
        """A writer process for a spool another one holds gives up after its lock timeout, saying why."""
        return Deferred.fromCoroutine(self._second_writer())

    async def _successor(self) -> None:
        successor = WriterProcess(reactor, self.spec)
        ready = successor.startService()
        self.addCleanup(lambda: successor.stopService() if successor.running else None)
        # The next writer's child says it waits for the lock...
        while "waiting for" not in successor._protocol.last_error:
            await _next_turn()
        commit = self.commit(b"Subject: last\r\n\r\nof the first writer\r\n")
        self.assertNoResult(ready)
        await self.process.stopService()
        await commit
        # ... and only once the first writer has finished and exited does it take over.
        await ready
        self.spool.writer = successor.lane("commit")
        await self.commit(b"Subject: first\r\n\r\nof the next writer\r\n")
        self.assertEqual(len(listing(self.spool, "queue")), 4)

    def test_next_writer_waits_for_the_previous_one(self) -> Deferred:
        """A new writer process on the same spool starts only after the previous one has finished its jobs."""
        return Deferred.fromCoroutine(self._successor())

    async def _garbage(self) -> None:
        first = self.process.pid
        _envelope, commit = start_commit(self.spool, b"Subject: x\r\n\r\nwaiting\r\n", "bob@example.com")
        # An answer to a question never asked: the stream is no longer trusted.
        self.process._protocol.childDataReceived(1, b"".join(
            struct.pack("!H", len(part)) + part for part in (b"_answer", b"999999", b"")))
        with self.assertRaises(WriterGone):
            await commit
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        while self.process.pid is None:
            await _next_turn()
        self.assertNotEqual(self.process.pid, first)
        await self.commit(b"Subject: again\r\n\r\nafter the new child\r\n")

    def test_unreadable_reply_replaces_the_child(self) -> Deferred:
        """A reply that cannot be read kills the child: the jobs waiting fail (451), and a new child serves."""
        return Deferred.fromCoroutine(self._garbage())

    async def _after_stop(self) -> None:
        stopping = self.process.stopService()
        # Sent after the stop began: refused at once, not left to wait for the child's exit.
        self.failureResultOf(self.process.lane("commit").run(queuejobs.publish_spares, spares=[]), WriterGone)
        await stopping

    def test_jobs_after_the_stop_fail_at_once(self) -> Deferred:
        """Once the stop has begun, a new job fails with WriterGone immediately."""
        return Deferred.fromCoroutine(self._after_stop())

    def test_stop_finishes_the_jobs_sent(self) -> Deferred:
        """Stopping lets the child finish every job already sent, then it exits; later jobs fail at once."""
        return Deferred.fromCoroutine(self._stop())


class OrphanTests(TestCase):
    """The child outlives nothing: it ends with the server, even a killed one."""

    timeout = 60

    async def _orphan(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # A stand-in server: a process of its own whose writer process we watch when it is killed.
        script = (
            "from twisted.internet import defer, task\n"
            "from gomail.spool.process import WriterProcess, WriterSpec\n"
            f"spec = WriterSpec({directory!r}, 0, 1)\n"
            "def serve(reactor):\n"
            "    process = WriterProcess(reactor, spec)\n"
            "    process.startService()\n"
            "    print('child', process.pid, 'started', flush=True)\n"
            "    return defer.Deferred()  # until killed\n"
            "task.react(serve)\n"
        )
        parent = spawn(reactor, [sys.executable, "-c", script], cwd=directory)
        self.addCleanup(parent.stop, reactor)
        await parent.wait_for(b" started", reactor)
        child = int(parent.output.split(b"child ")[1].split()[0])
        watch = os.pidfd_open(child)
        self.addCleanup(os.close, watch)
        parent.transport.signalProcess("KILL")
        await parent.ended
        # The child sees the end of its input and exits on its own.
        readable, _, _ = await _in_thread(select.select, [watch], [], [], 30)
        self.assertEqual(readable, [watch])

    def test_child_exits_when_the_server_is_killed(self) -> Deferred:
        """kill -9 of the server: its writer process finishes what it has and exits (no orphan left running)."""
        return Deferred.fromCoroutine(self._orphan())


class _ReactorWith:
    """The real reactor with another spawnProcess."""

    def __init__(self, reactor: Any, spawn: Any) -> None:
        self._reactor, self.spawnProcess = reactor, spawn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def _next_turn() -> Deferred:
    d: Deferred = Deferred()
    reactor.callLater(0, d.callback, None)
    return d


def _in_thread(f: Any, *args: Any) -> Deferred:
    return deferToThread(f, *args)


class ChildPartsTests(SynchronousTestCase):
    """Pieces of the child process, run in this one."""

    def test_lane_that_breaks_ends_the_process(self) -> None:
        """An error outside the jobs (here: answers cannot be handed on) ends the child with status 70, traceback on stderr."""
        exits: list[int] = []
        self.patch(writerchild.os, "_exit", exits.append)
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)

        class BrokenAnswers:
            def send(self, boxes: Any) -> None:
                raise RuntimeError("no way out")

        lane = writerchild.Lane("commit", SpoolFiles(os.path.abspath(self.mktemp())), None, BrokenAnswers())
        lane.run(wire.PublishSpares, b"1", {"spares": []})
        lane.queue.put(STOP)
        lane._loop()
        self.assertEqual(exits, [70])
        self.assertIn("RuntimeError: no way out", errors.getvalue())

    def dispatch(self, box: amp.AmpBox) -> list[amp.AmpBox]:
        """The answers the child's dispatcher sends for C{box} (its one lane, "commit", records what it is given)."""
        sent: list[amp.AmpBox] = []
        given: list[Any] = []

        class Answers:
            def send(self, boxes: list[amp.AmpBox]) -> None:
                sent.extend(boxes)

        class RecordingLane:
            def run(self, command: Any, ask: bytes, arguments: dict) -> None:
                given.append((command, ask, arguments))

        writerchild.Dispatcher({"commit": RecordingLane()}, Answers()).ampBoxReceived(box)  # type: ignore[dict-item]
        self.given = given
        return sent

    def test_job_box_reaches_its_lane(self) -> None:
        """A well-formed job command reaches its lane with the job's keyword arguments (fields flattened)."""
        box = wire.RemoveMessages.makeArguments({"fields": {"lane": "commit", "queue_ids": ["0123"], "durable": False}}, None)
        box.update({amp.COMMAND: wire.RemoveMessages.commandName, amp.ASK: b"7"})
        self.assertEqual(self.dispatch(box), [])
        self.assertEqual(self.given, [(wire.RemoveMessages, b"7", {"queue_ids": ["0123"], "durable": False})])

    def test_malformed_job_box_is_refused(self) -> None:
        """A job box with a field of the wrong type, no fields or an unknown lane gets a JOB_FAILED answer; no job runs."""
        boxes = [
            {b"fields": b'{"lane":"commit","queue_ids":["0123"],"durable":"yes"}'},
            {b"fields": b"not json"},
            {},
            {b"fields": b'{"lane":"nowhere","queue_ids":["0123"],"durable":true}'},
        ]
        for strings in boxes:
            box = amp.AmpBox({amp.COMMAND: wire.RemoveMessages.commandName, amp.ASK: b"9", **strings})
            [answer] = self.dispatch(box)
            self.assertEqual((answer[amp.ERROR], answer[amp.ERROR_CODE]), (b"9", b"JOB_FAILED"), strings)
            self.assertEqual(type(wire.rebuild_error(wire.JobFailed(answer[amp.ERROR_DESCRIPTION].decode()))),
                             ValueError)
            self.assertEqual(self.given, [])

    def test_unreadable_input_ends_the_process(self) -> None:
        """Input AMP cannot frame (a key longer than 255 bytes) ends the child with status 65 and a line saying why."""
        exits: list[int] = []
        self.patch(writerchild.os, "_exit", exits.append)
        errors = io.StringIO()
        self.patch(sys, "stderr", errors)
        parser = amp.BinaryBoxProtocol(writerchild.Dispatcher({}, None))  # type: ignore[arg-type]
        parser.makeConnection(writerchild._Unreadable())  # type: ignore[arg-type]
        parser.dataReceived(struct.pack("!H", 300) + b"k" * 300)
        self.assertEqual(exits, [65])
        self.assertIn("unreadable input from the server", errors.getvalue())

    def test_remove_spares(self) -> None:
        """A new child removes spares a dead one left in tmp/ (and nothing else); a spool without tmp/ is fine."""
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        for name in ("spare-0", "spare-17", "0123.eml"):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(b"x")
        writerchild.remove_spares(tmp)
        self.assertEqual(os.listdir(tmp), ["0123.eml"])
        writerchild.remove_spares(os.path.join(tmp, "missing"))


class _Stubborn(Exception):
    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} failed")
        self.code = code
