# -*- test-case-name: tests.test_writer_process -*-
"""
The AMP commands between the server and its spool writer process
(L{gomail.spool.process}, L{gomail.spool.writerchild}): one L{amp.Command}
per job of L{gomail.spool.jobs}, its arguments typed as the job's keyword
arguments plus the C{lane} that runs it, its answer the job's result.

AMP limits one value to 64 KiB; content, envelopes and recipient lists can be
larger, so those arguments (L{BigBytes}, L{ByteChunks}, L{BigJSON}) spread
over numbered keys. A job's failure crosses as L{JobFailed} carrying the
exception's type and fields, and is rebuilt on the server's side
(L{rebuild_error}) as the same kind of exception: an C{OSError} keeps its
errno (so it is a C{FileNotFoundError} again), a
L{gomail.spool.integrity.CorruptContent} its id and problem.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.protocols import amp

from gomail.spool.envelope import EnvelopeError
from gomail.spool.integrity import CorruptContent
from gomail.spool.jobs import failedjobs, maildirjobs, queuejobs

#: The longest AMP value.
PIECE = amp.MAX_VALUE_LENGTH


class ByteChunks(amp.Argument):
    """A list of byte strings of any length, each spread over keys C{<name>.<i>.<j>} of at most 64 KiB."""

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        chunks = self.retrieve(objects, name.decode("ascii"), proto)
        counts = []
        for i, chunk in enumerate(chunks):
            view = memoryview(chunk)
            pieces = range(0, len(view), PIECE)
            counts.append(str(len(pieces)))
            for j, start in enumerate(pieces):
                strings[b"%s.%d.%d" % (name, i, j)] = bytes(view[start:start + PIECE])
        strings[name] = " ".join(counts).encode("ascii")

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        counts = [int(count) for count in strings[name].split()]
        objects[name.decode("ascii")] = [
            b"".join(strings[b"%s.%d.%d" % (name, i, j)] for j in range(count)) for i, count in enumerate(counts)]


class BigBytes(ByteChunks):
    """One byte string of any length (a L{ByteChunks} of one)."""

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        super().toBox(name, strings, {key: [self.retrieve(objects, key, proto)]}, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = objects[key][0]


class BigJSON(BigBytes):
    """A JSON value (lists, dicts, strings, numbers) of any size."""

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        value = json.dumps(self.retrieve(objects, key, proto)).encode("utf-8")
        super().toBox(name, strings, {key: value}, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = json.loads(objects[key])


class JobFailed(Exception):
    """A job's exception on the wire: its JSON description (L{describe_error})."""


#: The exceptions a job may fail with that are rebuilt as themselves; any other becomes a RuntimeError.
_REBUILT: dict[str, Callable[[dict], Exception]] = {
    "CorruptContent": lambda d: CorruptContent(d["queue_id"], d["problem"]),
    "EnvelopeError": lambda d: EnvelopeError(d["message"]),
    "ValueError": lambda d: ValueError(d["message"]),
    "KeyError": lambda d: KeyError(d["message"]),
}


def describe_error(error: BaseException) -> JobFailed:
    """The L{JobFailed} carrying C{error} across."""
    description: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, OSError):
        description.update(type="OSError", errno=error.errno, strerror=error.strerror, filename=error.filename)
    elif isinstance(error, CorruptContent):
        description.update(queue_id=error.queue_id, problem=error.problem)
    elif isinstance(error, KeyError) and error.args:
        description["message"] = str(error.args[0])
    return JobFailed(json.dumps(description))


def rebuild_error(failed: JobFailed) -> Exception:
    """The exception a L{JobFailed} describes (a C{RuntimeError} for a kind not rebuilt)."""
    description = json.loads(str(failed))
    kind = description.get("type")
    if kind == "OSError":
        if description.get("errno") is None:
            return OSError(description["message"])
        return OSError(description["errno"], description["strerror"], description["filename"])
    if kind in _REBUILT:
        return _REBUILT[kind](description)
    return RuntimeError(f"spool writer job failed: {kind}: {description['message']}")


class JobCommand(amp.Command):
    """What every job's command shares: the lane argument and the failure."""

    errors: ClassVar[dict] = {JobFailed: b"JOB_FAILED"}
    #: The job this command runs.
    job: Callable[..., Any]

    @classmethod
    def result(cls, answer: dict[str, Any]) -> Any:
        """The job's result from the command's answer."""
        return answer.get("result")


LANE = (b"lane", amp.Unicode())


class CommitMessage(JobCommand):
    job = staticmethod(queuejobs.commit_message)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"chunks", ByteChunks()), (b"envelope", BigBytes()),
                 (b"size", amp.Integer()), (b"started", amp.Boolean())]
    response: ClassVar[list] = []


class RewriteEnvelope(JobCommand):
    job = staticmethod(queuejobs.rewrite_envelope)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"envelope", BigBytes())]
    response: ClassVar[list] = []


class RemoveMessage(JobCommand):
    job = staticmethod(queuejobs.remove_message)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"durable", amp.Boolean())]
    response: ClassVar[list] = [(b"result", amp.ListOf(amp.Unicode()))]


class PublishSpares(JobCommand):
    job = staticmethod(queuejobs.publish_spares)
    arguments: ClassVar[list] = [LANE, (b"spares", amp.ListOf(amp.Unicode()))]
    response: ClassVar[list] = []


class MoveToCorrupt(JobCommand):
    job = staticmethod(queuejobs.move_to_corrupt)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode())]
    response: ClassVar[list] = [(b"result", amp.ListOf(amp.Unicode()))]


class LinkIntoMaildirs(JobCommand):
    job = staticmethod(maildirjobs.link_into_maildirs)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"message_path", amp.Unicode()),
                 (b"mailbox_directory", amp.Unicode()), (b"hostname", amp.Unicode()),
                 (b"received", amp.Integer()), (b"size", amp.Integer()),
                 (b"digest", amp.Unicode(optional=True)), (b"targets", BigJSON())]
    response: ClassVar[list] = [(b"result", BigJSON())]

    @classmethod
    def result(cls, answer: dict[str, Any]) -> Any:
        return {address: tuple(reply) for address, reply in answer["result"].items()}


class WriteFailedRecord(JobCommand):
    job = staticmethod(failedjobs.write_failed_record)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"envelope", BigBytes()), (b"reason", amp.Unicode()),
                 (b"now", amp.Float())]
    response: ClassVar[list] = []


class RequeueFailed(JobCommand):
    job = staticmethod(failedjobs.requeue_failed)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode()), (b"now", amp.Float())]
    response: ClassVar[list] = [(b"result", BigBytes())]


class ForgetFailed(JobCommand):
    job = staticmethod(failedjobs.forget_failed)
    arguments: ClassVar[list] = [LANE, (b"queue_id", amp.Unicode())]
    response: ClassVar[list] = []


class Ready(amp.Command):
    """Asked by the server first: answered once the child holds the spool's writer lock and takes jobs."""

    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"pid", amp.Integer())]


#: The command of every job, by the job function.
JOB_COMMANDS: dict[Callable[..., Any], type[JobCommand]] = {
    command.job: command for command in (CommitMessage, RewriteEnvelope, RemoveMessage, PublishSpares,
                                         MoveToCorrupt, LinkIntoMaildirs, WriteFailedRecord, RequeueFailed,
                                         ForgetFailed)}
