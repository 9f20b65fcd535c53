"""
FETCH of sections and BODYSTRUCTURE, and SEARCH BODY/TEXT, seen from the
client: the bytes sent are those stored, large messages are sent from their
file as the client reads them, and the memory a 20 MB message costs stays
bounded (measured with tracemalloc around each command; the transport keeps
a digest of the answer, not the answer).
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess import imapsections
from gomail.mailaccess.imapstore import BLOCK
from tests import imaptesting
from tests.mimetesting import (
    CASES,
    DigestTransport,
    RawPart,
    fetch_part,
    large_message,
    reference_section,
    reference_structure,
)
from tests.test_imap import MULTI, ONE, U1, U2, HarnessMixin

#: What one FETCH or SEARCH of a 20 MB message may allocate at its peak (blocks, the index, twisted's buffers).
MEMORY_BOUND = 2 * 1024 * 1024
#: Sections asked of a message, each answered as BODY[name].
SECTIONS = [b"1", b"2", b"2.MIME", b"3", b"3.HEADER", b"3.TEXT", b"HEADER", b"TEXT", b"4"]


def expected_fetch(seq: int, data: bytes, names: list[bytes], tag: bytes = b"f") -> bytes:
    """The answer to C{FETCH seq (BODYSTRUCTURE BODY.PEEK[name]...)} as the in-memory code gave it."""
    items = [b"BODYSTRUCTURE " + reference_structure(data)]
    for name in names:
        section = reference_section(RawPart(data), fetch_part(name))
        items.append(b"BODY[" + name + b"] {%d}\r\n" % len(section) + section)
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n" + tag + b" OK FETCH completed\r\n"


def pause_when_full(test: Any, transport: Any, limit: int) -> None:
    """A client that reads slowly: the transport pauses its producer once it holds over C{limit} octets."""
    written = transport.write

    def write(piece: bytes) -> None:
        written(piece)
        if len(transport.value()) > limit and transport.producer is not None:
            transport.producer.pauseProducing()

    test.patch(transport, "write", write)
    test.patch(transport, "writeSequence", lambda pieces: write(b"".join(pieces)))


def fetch_command(seq: int, names: list[bytes], tag: bytes = b"f") -> bytes:
    """C{FETCH seq (BODYSTRUCTURE BODY.PEEK[name]...)}, the command L{expected_fetch} answers."""
    peeks = b" ".join(b"BODY.PEEK[" + name + b"]" for name in names)
    return tag + b" FETCH %d (BODYSTRUCTURE " % seq + peeks + b")\r\n"


class SectionFetchTests(HarnessMixin, SynchronousTestCase):
    """BODY[section], BODYSTRUCTURE, partial ranges and RFC822.TEXT: the stored bytes, small or large messages."""

    def test_small_and_large_messages(self):
        """Every section of messages of every shape, held in memory or sent from the file: what RawPart gave."""
        harness = self.harness()
        messages = [*CASES.values(), large_message(5 * BLOCK)]
        for n, data in enumerate(messages):
            harness.deliver(f"17000000{n:02d}.m{n}_0.mx.test", data)
        client = self.selected(harness)
        for small in (imapsections.SMALL_MESSAGE, 0):
            self.patch(imapsections, "SMALL_MESSAGE", small)  # 0: every message is sent from its file
            for seq, data in enumerate(messages, 1):
                self.assertEqual(client.send(fetch_command(seq, SECTIONS)), expected_fetch(seq, data, SECTIONS))

    def test_partial_ranges(self):
        """<origin.octets> of a section or of the whole message; past the end, empty."""
        harness = self.harness()
        data = large_message(5 * BLOCK)
        harness.deliver(U1, data)
        client = self.selected(harness)
        part2 = reference_section(RawPart(data), fetch_part(b"2"))
        answer = client.send(b"f FETCH 1 (BODY.PEEK[2]<65530.20> BODY.PEEK[]<65530.20> BODY.PEEK[3]<9999999.5>)\r\n")
        self.assertEqual(answer, b"* 1 FETCH (BODY[2]<65530> {20}\r\n" + part2[65530:65550] +
                         b" BODY[]<65530> {20}\r\n" + data[65530:65550] +
                         b" BODY[3]<9999999> {0}\r\n)\r\nf OK FETCH completed\r\n")

    def test_partial_whole_message_reads_only_its_range(self):
        """BODY[]<o.n> opens the file at o and reads n octets: no index, no whole read."""
        harness = self.harness()
        data = large_message(20 * BLOCK)
        harness.deliver(U1, data)
        client = self.selected(harness)
        opened: list[Any] = []
        real_open_range = imapsections.open_range

        def recording(*args: Any) -> Any:
            result = real_open_range(*args)
            opened.append((result.start, result.end, len(result.first)))
            return result

        def no_index(*args: Any) -> Any:
            raise AssertionError("indexed")

        self.patch(imapsections, "open_range", recording)
        self.patch(imapsections, "index_file", no_index)
        self.patch(imapsections, "index_bytes", no_index)
        answer = client.send(b"f FETCH 1 BODY.PEEK[]<700000.100>\r\n")
        self.assertEqual(answer, b"* 1 FETCH (BODY[]<700000> {100}\r\n" + data[700000:700100] +
                         b")\r\nf OK FETCH completed\r\n")
        self.assertEqual(opened, [(700000, 700100, 100)])

    def test_index_read_once(self):
        """BODYSTRUCTURE then BODY[1] of a large message: its file is indexed once (the session keeps the index)."""
        harness = self.harness()
        harness.deliver(U1, large_message(5 * BLOCK))
        client = self.selected(harness)
        scans: list[int] = []
        real_index_file = imapsections.index_file
        self.patch(imapsections, "index_file", lambda f, size: scans.append(size) or real_index_file(f, size))
        client.send(b"a FETCH 1 BODYSTRUCTURE\r\n")
        self.assertIn(b"BODY[1] {", client.send(b"b FETCH 1 BODY.PEEK[1]\r\n"))
        self.assertEqual(len(scans), 1)

    def test_small_index_read_once(self):
        """BODYSTRUCTURE then BODY[2] of a small message: indexed once (the session keeps its index too)."""
        harness = self.harness()
        data = CASES["nested"]
        harness.deliver(U1, data)
        client = self.selected(harness)
        scans: list[int] = []
        real_index_bytes = imapsections.index_bytes
        self.patch(imapsections, "index_bytes", lambda data: scans.append(len(data)) or real_index_bytes(data))
        self.assertEqual(client.send(b"a FETCH 1 BODYSTRUCTURE\r\n"),
                         b"* 1 FETCH (BODYSTRUCTURE " + reference_structure(data) + b")\r\na OK FETCH completed\r\n")
        part2 = reference_section(RawPart(data), fetch_part(b"2"))
        self.assertIn(b"BODY[2] {%d}\r\n" % len(part2) + part2, client.send(b"b FETCH 1 BODY.PEEK[2]\r\n"))
        self.assertEqual(scans, [len(data)])

    def test_rfc822_text_and_envelope_with_sections(self):
        """RFC822.TEXT is the body and sets \\Seen; ENVELOPE comes with BODYSTRUCTURE and a whole BODY[]."""
        harness = self.with_mail()
        client = self.selected(harness)
        answer = client.send(b"f FETCH 2 (ENVELOPE BODYSTRUCTURE BODY.PEEK[])\r\n")
        self.assertIn(b'"multi"', answer)
        self.assertIn(b"BODY[] {%d}\r\n" % len(MULTI) + MULTI + b")", answer)
        body = MULTI.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(client.send(b"g FETCH 1 RFC822.TEXT\r\n"),
                         b"* 1 FETCH (RFC822.TEXT {7}\r\nhello\r\n FLAGS (\\Seen \\Recent))\r\ng OK FETCH completed\r\n")
        self.assertIn(b"RFC822.TEXT {%d}\r\n" % len(body) + body, client.send(b"h FETCH 2 RFC822.TEXT\r\n"))

    def test_range_of_a_vanished_message(self):
        """A message gone before its range is read: NIL for it, the session goes on."""
        harness = self.harness()
        harness.deliver(U1, ONE)
        client = self.selected(harness)
        os.remove(os.path.join(harness.maildir(), "cur", harness.files("cur")[0]))
        self.assertEqual(client.send(b"f FETCH 1 BODY.PEEK[]<0.5>\r\n"),
                         b"* 1 FETCH (BODY[]<0> NIL)\r\nf OK FETCH completed\r\n")

    def test_large_section_paced_by_the_client(self):
        """A large section is read from the file only as fast as the client takes it."""
        harness = self.harness()
        data = large_message(40 * BLOCK)
        harness.deliver(U1, data)
        client = self.selected(harness)
        transport = client.transport
        pause_when_full(self, transport, 4 * BLOCK)
        client.proto.dataReceived(b"f FETCH 1 BODY.PEEK[2]\r\n")
        sent = client.take()
        self.assertLess(len(sent), 6 * BLOCK)
        while transport.producer is not None:
            transport.clear()
            transport.producer.resumeProducing()
            sent += client.take()
        part2 = reference_section(RawPart(data), fetch_part(b"2"))
        self.assertEqual(sent, b"* 1 FETCH (BODY[2] {%d}\r\n" % len(part2) + part2 + b")\r\nf OK FETCH completed\r\n")


    def test_client_that_stops_reading_is_cut_off(self):
        """
        twisted turns the idle timer off for a FETCH; a client that takes
        nothing more of a streamed message for idleTimeout seconds is cut
        off anyway (it held its session and file for ever), and one that
        reads again in time is not.
        """
        harness = self.harness(idleTimeout=60)
        harness.deliver(U1, large_message(40 * BLOCK))
        client = self.selected(harness)
        transport = client.transport
        pause_when_full(self, transport, 4 * BLOCK)
        client.proto.dataReceived(b"f FETCH 1 BODY.PEEK[]\r\n")
        client.take()
        harness.clock.advance(59)
        self.assertFalse(client.closed)
        transport.clear()
        transport.producer.resumeProducing()  # the client reads a little, in time
        client.take()
        harness.clock.advance(59)
        self.assertFalse(client.closed)
        harness.clock.advance(1)
        self.assertTrue(client.closed)
        transport.clear()
        client.take()
        self.assertEqual(transport.value(), b"")  # nothing more is written to it
        self.assertEqual(self.flushLoggedErrors(), [])


    def test_small_sections_paced_by_the_client(self):
        """
        Sections cut in memory (messages up to 256 KiB) and RFC822.HEADER are
        written paced too: FETCH 1:* to a client that reads nothing stops
        after the message that filled the buffer, and goes on as it reads.
        """
        harness = self.harness()
        for n in range(10):
            harness.deliver(f"17000000{n:02d}.m{n}_0.mx.test", b"Subject: s\r\n\r\n" + b"x" * (100 * 1024) + b"\r\n",
                            mtime=1_700_000_000 + n)
        client = self.selected(harness)
        transport = client.transport
        pause_when_full(self, transport, 2 * BLOCK)
        for command in (b"f FETCH 1:* BODY.PEEK[TEXT]\r\n", b"g FETCH 1:* (RFC822.HEADER BODY.PEEK[1])\r\n"):
            client.proto.dataReceived(command)
            sent = client.take()
            self.assertLess(len(sent), 3 * 100 * 1024)
            self.assertNotIn(b" OK FETCH completed", sent)
            while transport.producer is not None:
                transport.clear()
                transport.producer.resumeProducing()
                sent += client.take()
            self.assertEqual(sent.count(b"* "), 10)
            self.assertTrue(sent.endswith(b"OK FETCH completed\r\n"))


    def test_parts_of_an_attached_message(self):
        """
        RFC 3501 6.4.5: after a message/rfc822 part the numbers are of the
        message it holds: BODY[1.1] and BODY[1.2] are the parts of a forwarded
        multipart/alternative (they were the whole attachment, and nothing);
        BODY[0] is no part (it was the last one); a part of a single-part part is itself, as before.
        """
        message = (b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
                   b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n"
                   b"Content-Type: multipart/alternative; boundary=c\r\n\r\n--c\r\n\r\nA\r\n--c\r\n\r\nB\r\n--c--\r\n"
                   b"--b\r\n\r\nSECOND\r\n--b\r\n\r\nTHIRD\r\n--b--\r\n")
        harness = self.harness()
        harness.deliver(U1, message)
        client = self.selected(harness)
        for section, expected in ((b"1.1", b"A"), (b"1.2", b"B"), (b"1.1.1", b"A"), (b"2", b"SECOND"), (b"0", b""),
                                  (b"1.HEADER", b"Subject: in\r\nContent-Type: multipart/alternative; boundary=c\r\n\r\n")):
            answer = client.send(b"f FETCH 1 BODY.PEEK[" + section + b"]\r\n")
            self.assertEqual(answer, b"* 1 FETCH (BODY[%s] {%d}\r\n%s)\r\nf OK FETCH completed\r\n"
                             % (section, len(expected), expected), section)


class SearchTextTests(HarnessMixin, SynchronousTestCase):
    """SEARCH BODY and TEXT: case-insensitive, BODY after the header only, words across block edges."""

    def test_body_and_text(self):
        """Header words are TEXT only; body words both; OR/NOT combine them; a key word as a word is a word."""
        harness = self.with_mail()
        harness.deliver("1700000200.cccc_0.mx.test", large_message(3 * BLOCK, on_edge=3))
        edge = b"Subject: edge\r\n\r\n"
        harness.deliver("1700000300.dddd_0.mx.test", edge + b"a" * (BLOCK - len(edge) - 3) + b"NeedleWord\r\n")
        client = self.selected(harness)
        cases = {b"BODY hello": b"1", b"TEXT alice@EXAMPLE": b"1", b"BODY alice": b"", b"TEXT INNER": b"2 3",
                 b"BODY \"inner body\"": b"2 3", b"BODY needleWORD": b"4", b"BODY \"aNeedle\"": b"4",
                 b"OR BODY hello BODY \"part one\"": b"1 2", b"NOT BODY line": b"1 2 4", b"SUBJECT BODY": b"",
                 b"TEXT large BODY QUJDQUJD": b"3", b"BODY \"\"": b"1 2 3 4"}
        for query, found in cases.items():
            self.assertEqual(client.send(b"s SEARCH " + query + b"\r\n"),
                             b"* SEARCH" + (b" " + found if found else b"") + b"\r\ns OK SEARCH completed\r\n", query)


class MemoryBoundTests(HarnessMixin, SynchronousTestCase):
    """A 20 MB message costs a bounded amount of memory per FETCH or SEARCH, and the answers are right."""

    def measure(self, client: Any, command: bytes) -> tuple[int, bytes, int]:
        """(peak bytes allocated while C{command} ran, digest of its answer, its length)."""
        transport = client.transport
        transport.start_digest()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            client.proto.dataReceived(command)
            client.take()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            transport.digesting = False
        return peak, transport.digest.digest(), transport.count

    def test_twenty_megabytes(self):
        """BODYSTRUCTURE, BODY[2] (20 MB), BODY[3.TEXT], SEARCH TEXT/BODY: each under MEMORY_BOUND, each right."""
        self.patch(imaptesting, "TLSStringTransport", DigestTransport)
        harness = self.harness()
        data = large_message(20 * 1024 * 1024)
        harness.deliver(U2, data)
        client = self.selected(harness)
        old = RawPart(data)
        part2 = reference_section(old, fetch_part(b"2"))
        expected = {
            b"a FETCH 1 BODYSTRUCTURE\r\n":
                b"* 1 FETCH (BODYSTRUCTURE " + reference_structure(data) + b")\r\na OK FETCH completed\r\n",
            b"b FETCH 1 BODY.PEEK[2]\r\n":
                b"* 1 FETCH (BODY[2] {%d}\r\n" % len(part2) + part2 + b")\r\nb OK FETCH completed\r\n",
            b"c FETCH 1 BODY.PEEK[3.TEXT]\r\n":
                b"* 1 FETCH (BODY[3.TEXT] {12}\r\ninner body\r\n)\r\nc OK FETCH completed\r\n",
            b"d SEARCH TEXT \"INNER BODY\"\r\n": b"* SEARCH 1\r\nd OK SEARCH completed\r\n",
            b"e SEARCH BODY nowhere\r\n": b"* SEARCH\r\ne OK SEARCH completed\r\n",
        }
        del old, part2
        for command, answer in expected.items():
            peak, digest, count = self.measure(client, command)
            self.assertEqual((digest, count), (hashlib.sha256(answer).digest(), len(answer)), command)
            self.assertLess(peak, MEMORY_BOUND, command)
