"""
Tests for L{gomail.delivery.content}: message content read in the I/O pool
and written to the smarthost connection as the transport takes it.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gomail.delivery import content
from gomail.delivery.content import BytesContent, FileContent, content_opener, send_content
from gomail.spool.recent import RecentContent
from tests.spooltesting import new_envelope


class HeldReads:
    """A source whose reads wait until the test releases them, as a busy I/O pool would."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.waiting: list[Deferred] = []
        self.closed = False

    def read(self, size: int) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append(d)
        return d

    def release(self) -> None:
        self.waiting.pop(0).callback(self.chunks.pop(0) if self.chunks else b"")

    def close(self) -> Deferred:
        self.closed = True
        return maybeDeferred(lambda: None)


class SendContentTests(SynchronousTestCase):
    """send_content: chunks through the transform, in order, under the transport's flow control."""

    def test_everything_written_through_the_transform(self) -> None:
        """All chunks reach the transport transformed; the Deferred fires True; the producer is unregistered."""
        self.patch(content, "CHUNK_SIZE", 4)
        transport = StringTransport()
        d = send_content(BytesContent(b"abcdefghij"), transport, bytes.upper)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(transport.value(), b"ABCDEFGHIJ")
        self.assertIsNone(transport.producer)

    def test_waits_for_reads(self) -> None:
        """Nothing is written before a read answers; then the next read is asked for."""
        source = HeldReads([b"one ", b"two"])
        transport = StringTransport()
        d = send_content(source, transport, lambda chunk: chunk)
        self.assertEqual((transport.value(), len(source.waiting)), (b"", 1))
        source.release()
        self.assertEqual(transport.value(), b"one ")
        source.release()
        source.release()  # the end
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(transport.value(), b"one two")
        self.assertTrue(source.closed)

    def test_paused_transport_stops_reading(self) -> None:
        """While the transport has paused its producer, no read is asked for; resuming goes on."""
        source = HeldReads([b"a", b"b"])
        transport = StringTransport()
        d = send_content(source, transport, lambda chunk: chunk)
        transport.producer.pauseProducing()
        source.release()
        self.assertEqual(source.waiting, [])
        transport.producer.resumeProducing()
        source.release()
        source.release()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(transport.value(), b"ab")

    def test_stopped_by_the_transport(self) -> None:
        """When the connection goes away (stopProducing), sending ends with False and the source is closed."""
        source = HeldReads([b"a", b"b"])
        transport = StringTransport()
        d = send_content(source, transport, lambda chunk: chunk)
        transport.producer.stopProducing()
        source.release()
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(source.closed)

    def test_read_error_fails(self) -> None:
        """A read that fails (the file vanished) fails the Deferred, with the source closed."""
        source = HeldReads([])
        d = send_content(source, StringTransport(), lambda chunk: chunk)
        source.waiting.pop(0).errback(OSError(5, "Input/output error"))
        self.failureResultOf(d, OSError)
        self.assertTrue(source.closed)


class FileContentTests(SynchronousTestCase):
    """FileContent: the file is opened, read and closed only through C{run}."""

    def source(self) -> tuple[FileContent, list[str]]:
        """A FileContent over a 10-byte file, and the names of what it ran in its "pool"."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"x" * 10)
        calls: list[str] = []

        def run(function, *args):
            calls.append(getattr(function, "__name__", "?"))
            return maybeDeferred(function, *args)

        return FileContent(path, run), calls

    def test_reads_through_run(self) -> None:
        """Every read and the close go through run (the I/O pool); the bytes are the file's."""
        source, calls = self.source()
        self.assertEqual(self.successResultOf(source.read(6)), b"x" * 6)
        self.successResultOf(source.close())  # closing early goes through run too
        self.assertEqual(calls, ["_read", "close"])

    def test_short_read_ends_in_one_trip(self) -> None:
        """A read shorter than asked is the end: the file is closed in that trip, later reads answer at once."""
        source, calls = self.source()
        self.assertEqual(self.successResultOf(source.read(6)), b"x" * 6)
        self.assertEqual(self.successResultOf(source.read(6)), b"x" * 4)
        self.assertEqual(self.successResultOf(source.read(6)), b"")
        self.successResultOf(source.close())
        self.assertEqual(calls, ["_read", "_read"])

    def test_missing_file(self) -> None:
        """A file that is gone fails the read with FileNotFoundError."""
        source = FileContent(os.path.abspath(self.mktemp()), maybeDeferred)
        self.failureResultOf(source.read(10), FileNotFoundError)


class ContentOpenerTests(SynchronousTestCase):
    """content_opener: memory first, the queue file otherwise."""

    def test_memory_then_file(self) -> None:
        """A message the spool still holds is served from memory with no trip to the pool; others from the file."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"from disk\r\n")
        trips: list[object] = []

        def run(function, *args):
            trips.append(function)
            return maybeDeferred(function, *args)

        recent = RecentContent(1024)
        recent.keep("in-memory", b"from memory\r\n")
        open_content = content_opener(recent, run)
        kept = open_content("in-memory", path)
        self.assertEqual(self.successResultOf(kept.read(1024)), b"from memory\r\n")
        self.assertEqual(self.successResultOf(kept.read(1024)), b"")
        self.assertEqual(trips, [])
        other = open_content("not-kept", path)
        self.assertIsInstance(other, FileContent)
        self.assertEqual(self.successResultOf(other.read(1024)), b"from disk\r\n")
        self.assertEqual(len(trips), 1)


class TransparencyTests(SynchronousTestCase):
    """What a source says about sending its bytes unchanged (L{ContentSource.transparent})."""

    def test_follows_the_envelope(self) -> None:
        """From memory or from the file, a source is transparent when the envelope records it; a DKIM field must be too."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"x\r\n")
        recent = RecentContent(1024)
        recent.keep("kept", b"x\r\n")
        open_content = content_opener(recent, maybeDeferred)
        for queue_id in ("kept", "not-kept"):
            for transparent in (True, False):
                envelope = new_envelope(queue_id)
                envelope.transparent = transparent
                self.assertEqual(open_content(queue_id, path, envelope).transparent, transparent)
                for field, expected in ((b"DKIM-Signature: v=1;\r\n b=x\r\n", transparent),
                                        (b"DKIM-Signature: v=1;\n b=x\n", False)):
                    envelope.extra = {"dkim": field.decode()}
                    self.assertEqual(open_content(queue_id, path, envelope).transparent, expected, field)
        self.assertFalse(open_content("not-kept", path).transparent)  # no envelope: nothing known
