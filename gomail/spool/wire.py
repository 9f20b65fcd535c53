# -*- test-case-name: tests.test_writer_process -*-
"""
The AMP commands between the server and its spool writer process
(L{gomail.spool.process}, L{gomail.spool.writerchild}): one L{amp.Command}
per job of L{gomail.spool.jobs}. Its arguments are the job's keyword
arguments: the plain ones (and the C{lane} that runs it) as one typed
L{Fields} value, the byte strings each as an argument of its own; its answer
is the job's result.

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
    """
    A list of byte strings of any total length. When they fit in one AMP
    value they travel joined, as the value of C{<name>}, and arrive as a list
    of one (the same bytes in the same order: what the jobs need of content);
    otherwise each is spread over keys C{<name>.<i>.<j>} of at most 64 KiB, with
    their piece counts in C{<name>.counts}, and arrives as the same list.
    (Each AMP key costs the server's reactor a few microseconds: most values
    here are small, so the common case is one key.)
    """

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        chunks = self.retrieve(objects, name.decode("ascii"), proto)
        if sum(len(chunk) for chunk in chunks) <= PIECE:
            strings[name] = b"".join(chunks)
            return
        counts = []
        for i, chunk in enumerate(chunks):
            view = memoryview(chunk)
            pieces = range(0, len(view), PIECE)
            counts.append(str(len(pieces)))
            for j, start in enumerate(pieces):
                strings[b"%s.%d.%d" % (name, i, j)] = bytes(view[start:start + PIECE])
        strings[name + b".counts"] = " ".join(counts).encode("ascii")

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        if name in strings:
            objects[key] = [strings[name]]
            return
        counts = [int(count) for count in strings[name + b".counts"].split()]
        objects[key] = [
            b"".join(strings[b"%s.%d.%d" % (name, i, j)] for j in range(count)) for i, count in enumerate(counts)]


class BigBytes(ByteChunks):
    """One byte string of any length (a L{ByteChunks} of one)."""

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        super().toBox(name, strings, {key: [self.retrieve(objects, key, proto)]}, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = b"".join(objects[key])


class BigJSON(BigBytes):
    """A JSON value (lists, dicts, strings, numbers) of any size."""

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        key = name.decode("ascii")
        value = json.dumps(self.retrieve(objects, key, proto), separators=(",", ":")).encode("utf-8")
        super().toBox(name, strings, {key: value}, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = name.decode("ascii")
        objects[key] = json.loads(objects[key])


class FieldError(TypeError):
    """A job's field is missing, unknown or of the wrong type."""


class Fields(BigJSON):
    """
    A job's plain arguments (and its lane) as one typed JSON object: each
    field's name and type are declared (C{Fields(queue_id=str, size=int)}) and
    checked on both sides, so a wrong call fails where it is made and a wrong
    box is refused by the child. One AMP value instead of one per argument:
    Twisted's AMP spends most of a command's cost per key (about 10 us each on
    the reactor, see bench/README.md), and a message takes several commands.
    """

    def __init__(self, **types: type | tuple[type, ...]) -> None:
        super().__init__()
        self.types: dict[str, type | tuple[type, ...]] = {"lane": str, **types}

    def check(self, fields: Any) -> dict[str, Any]:
        """C{fields} if it has exactly the declared fields, each of its type; else L{FieldError}."""
        if not isinstance(fields, dict) or fields.keys() != self.types.keys():
            names = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
            raise FieldError(f"expected the fields {sorted(self.types)}, got {names}")
        for name, expected in self.types.items():
            value = fields[name]
            # JSON has no int/float distinction for whole numbers, and bool is an int to Python.
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
                raise FieldError(f"field {name!r}: expected {_type_names(expected)}, got {type(value).__name__}")
        return fields

    def toBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        self.check(objects.get(name.decode("ascii")))
        super().toBox(name, strings, objects, proto)

    def fromBox(self, name: bytes, strings: Any, objects: dict, proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        self.check(objects[name.decode("ascii")])


def _type_names(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)


#: A number field: JSON brings back a whole float as an int.
NUMBER = (int, float)
#: An optional text field.
OPTIONAL_TEXT = (str, type(None))


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
    """
    What every job's command shares: its C{fields} (a L{Fields} of the lane
    and the job's plain arguments), its byte-valued arguments, and its failure.
    """

    errors: ClassVar[dict] = {JobFailed: b"JOB_FAILED"}
    #: The job this command runs.
    job: Callable[..., Any]

    @classmethod
    def fields(cls) -> Fields:
        """The command's L{Fields} argument."""
        fields = dict(cls.arguments)[b"fields"]
        assert isinstance(fields, Fields)
        return fields

    @classmethod
    def job_arguments(cls, parsed: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The lane and the job's keyword arguments from the command's parsed arguments."""
        fields = parsed.pop("fields")
        lane = fields.pop("lane")
        parsed.update(fields)
        return lane, parsed

    @classmethod
    def result(cls, answer: dict[str, Any]) -> Any:
        """The job's result from the command's answer."""
        return answer.get("result")


class CommitMessage(JobCommand):
    job = staticmethod(queuejobs.commit_message)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str, size=int, started=bool)),
                                 (b"chunks", ByteChunks()), (b"envelope", BigBytes())]
    response: ClassVar[list] = []


class RewriteEnvelope(JobCommand):
    job = staticmethod(queuejobs.rewrite_envelope)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str)), (b"envelope", BigBytes())]
    response: ClassVar[list] = []


class RemoveMessages(JobCommand):
    job = staticmethod(queuejobs.remove_messages)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_ids=list, durable=bool))]
    response: ClassVar[list] = [(b"result", amp.ListOf(amp.Unicode()))]


class PublishSpares(JobCommand):
    job = staticmethod(queuejobs.publish_spares)
    arguments: ClassVar[list] = [(b"fields", Fields(spares=list))]
    response: ClassVar[list] = []


class MoveToCorrupt(JobCommand):
    job = staticmethod(queuejobs.move_to_corrupt)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str))]
    response: ClassVar[list] = [(b"result", amp.ListOf(amp.Unicode()))]


class LinkIntoMaildirs(JobCommand):
    job = staticmethod(maildirjobs.link_into_maildirs)
    arguments: ClassVar[list] = [(b"fields", Fields(
        queue_id=str, message_path=str, mailbox_directory=str, hostname=str, received=int, size=int,
        digest=OPTIONAL_TEXT, targets=list))]
    response: ClassVar[list] = [(b"result", BigJSON())]

    @classmethod
    def result(cls, answer: dict[str, Any]) -> Any:
        return {address: tuple(reply) for address, reply in answer["result"].items()}


class WriteFailedRecord(JobCommand):
    job = staticmethod(failedjobs.write_failed_record)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str, reason=str, now=NUMBER)),
                                 (b"envelope", BigBytes())]
    response: ClassVar[list] = []


class RequeueFailed(JobCommand):
    job = staticmethod(failedjobs.requeue_failed)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str, now=NUMBER))]
    response: ClassVar[list] = [(b"result", BigBytes())]


class ForgetFailed(JobCommand):
    job = staticmethod(failedjobs.forget_failed)
    arguments: ClassVar[list] = [(b"fields", Fields(queue_id=str))]
    response: ClassVar[list] = []


class Ready(amp.Command):
    """Asked by the server first: answered once the child holds the spool's writer lock and takes jobs."""

    arguments: ClassVar[list] = []
    response: ClassVar[list] = [(b"pid", amp.Integer())]


#: The command of every job, by the job function.
JOB_COMMANDS: dict[Callable[..., Any], type[JobCommand]] = {
    command.job: command for command in (CommitMessage, RewriteEnvelope, RemoveMessages, PublishSpares,
                                         MoveToCorrupt, LinkIntoMaildirs, WriteFailedRecord, RequeueFailed,
                                         ForgetFailed)}
