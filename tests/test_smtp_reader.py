"""
L{DataReader} on its own: where DATA ends, dot-unstuffing, and the size,
line-length and line-ending rules, whatever the chunking of its input.
"""

from __future__ import annotations

import itertools

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gomail.smtp.reader import BARE_LINE_ENDING, LINE_TOO_LONG, TOO_BIG, DataReader
from gomail.spool.incoming import is_transparent

BIG = 10 ** 9


def read(chunks, max_size=BIG, max_line=998, normalize=False):
    """
    Feed C{chunks} one by one, as the protocol does (nothing after the end of
    data is fed; what follows it is added to the returned rest).

    @return: (content, error, rest, size, done)
    """
    out: list[bytes] = []
    reader = DataReader(out.append, max_size, max_line, normalize=normalize)
    rest = None
    for chunk in chunks:
        if rest is not None:
            rest += chunk
        else:
            rest = reader.feed(chunk)
    return b"".join(out), reader.error, rest, reader.size, reader.done


def split(data: bytes, cuts) -> list[bytes]:
    """C{data} cut at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def stuff(lines) -> bytes:
    """The DATA stream that carries C{lines} (dot-stuffed, CRLF, final dot)."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"


FAKE_ENDINGS = [
    b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r", b"\r.\n",
]
#: Pieces that make hostile streams likely: every kind of line ending and dot.
PIECES = st.sampled_from([
    b"a", b"Subject: x", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"\r\n.\r\n",
    b"\n.\n", b"\r.\r", b"MAIL FROM:<x@y.z>", b"x" * 15, b"\x00", b"\xff",
])
CUTS = st.lists(st.integers(min_value=0, max_value=10 ** 6), max_size=12)


@st.composite
def chunked_streams(draw):
    """
    A stream of L{PIECES} and where to cut it: at random offsets and, more
    often, at the boundaries between pieces (right after a CR, before ".\r\n"...).
    """
    pieces = draw(st.lists(st.tuples(PIECES, st.booleans()), max_size=40))
    data, cuts, offset = b"", [], 0
    for piece, cut_after in pieces:
        data += piece
        offset += len(piece)
        if cut_after:
            cuts.append(offset)
    return data, cuts + draw(CUTS)
LINE = st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


class EndOfDataTests(SynchronousTestCase):
    """Only <CRLF>.<CRLF> ends the data."""

    def test_simple(self):
        """A message ends at its dot line; the content has CRLF endings and no final dot."""
        self.assertEqual(read([b"Subject: x\r\n\r\nbody\r\n.\r\n"]),
                         (b"Subject: x\r\n\r\nbody\r\n", None, b"", 20, True))

    def test_empty_message(self):
        """A dot as the very first line ends an empty message."""
        self.assertEqual(read([b".\r\n"]), (b"", None, b"", 0, True))

    def test_rest_returned(self):
        """The bytes after the end of data are returned (they are pipelined commands)."""
        content, _error, rest, _, done = read([b"a\r\n.\r\nQUIT\r\nNOOP"])
        self.assertEqual((content, rest, done), (b"a\r\n", b"QUIT\r\nNOOP", True))

    def test_end_split_everywhere(self):
        """The end-of-data sequence is found however it is split across chunks."""
        data = b"line one\r\nline two\r\n.\r\nQUIT\r\n"
        for cut in range(len(data) + 1):
            self.assertEqual(read([data[:cut], data[cut:]]),
                             (b"line one\r\nline two\r\n", None, b"QUIT\r\n", 20, True), cut)

    def test_byte_by_byte(self):
        """One byte per chunk gives the same as one chunk."""
        data = b"Subject: x\r\n\r\n..dot\r\n.\r\nRSET\r\n"
        self.assertEqual(read([data[i:i + 1] for i in range(len(data))]), read([data]))

    def test_not_done_without_end(self):
        """Without the end sequence the reader wants more (returns None each time)."""
        reader = DataReader(lambda b: None, BIG, 998)
        self.assertIsNone(reader.feed(b"a\r\n"))
        self.assertIsNone(reader.feed(b".\r"))
        self.assertFalse(reader.done)
        self.assertEqual(reader.feed(b"\n"), b"")
        self.assertTrue(reader.done)

    def test_fake_endings(self):
        """No bare-CR/LF variant of the end sequence ends the data, neither inside a message nor at its start."""
        for ending in FAKE_ENDINGS:
            at_line_start = ending.lstrip(b"\r\n")  # e.g. ".\n" as the first line
            if at_line_start == b".\r\n":
                continue  # that one is the real end
            for data in (b"hello" + ending + b"MAIL FROM:<x@y.z>\r\n", ending + b"RSET\r\n",
                         at_line_start + b"RSET\r\n"):
                _, _, rest, _, done = read([data])
                self.assertIsNone(rest, data)
                self.assertFalse(done, data)

    def test_dot_line_with_text_does_not_end(self):
        """A line starting with a dot followed by text (".x", ". ") is content, not the end."""
        for line in (b".x\r\n", b". \r\n", b".\t\r\n"):
            self.assertFalse(read([b"a\r\n" + line])[4], line)

    def test_fake_ending_then_real_end(self):
        """After a fake ending the message goes on until the real end, and fails for its bare line ending."""
        _content, error, rest, _, done = read([b"hello\n.\nRSET\r\n.\r\nNOOP\r\n"])
        self.assertEqual((error, rest, done), (BARE_LINE_ENDING, b"NOOP\r\n", True))


class DotStuffingTests(SynchronousTestCase):
    """RFC 5321 4.5.2: a leading dot is removed from every line that has one."""

    def test_unstuffing(self):
        """Leading dots are removed once per line, also on the first line."""
        content = read([b"..first\r\nmid\r\n...\r\n.x\r\nend.\r\n.\r\n"])[0]
        self.assertEqual(content, b".first\r\nmid\r\n..\r\nx\r\nend.\r\n")

    def test_unstuffing_across_chunks(self):
        """A stuffed dot at the start of a chunk (after a CRLF at the end of the previous one) is removed."""
        self.assertEqual(read([b"a\r\n", b"..b\r\n", b".\r\n"])[0], b"a\r\n.b\r\n")
        self.assertEqual(read([b"a\r", b"\n..b\r\n.", b"\r\n"])[0], b"a\r\n.b\r\n")

    def test_dot_after_bare_lf_not_unstuffed(self):
        """With normalize, a dot after a bare LF is kept: only CRLF starts a line."""
        self.assertEqual(read([b"a\n..b\r\n.\r\n"], normalize=True)[0], b"a\r\n..b\r\n")


class LineEndingTests(SynchronousTestCase):
    """Bare CR and LF: rejected, or normalised to CRLF."""

    def test_bare_lf_rejected(self):
        """A bare LF fails the message with 550 5.5.2; reading goes on to the end."""
        _content, error, rest, _, done = read([b"a\nb\r\n.\r\n"])
        self.assertEqual((error, rest, done), (BARE_LINE_ENDING, b"", True))
        self.assertEqual((error.code, error.status), (550, "5.5.2"))

    def test_bare_cr_rejected(self):
        """A bare CR fails the message too, also just before a CRLF."""
        for data in (b"a\rb\r\n.\r\n", b"a\r\r\n.\r\n", b"\r\r\n.\r\n"):
            self.assertEqual(read([data])[1], BARE_LINE_ENDING, data)

    def test_normalize(self):
        """With normalize, bare CR and LF become CRLF and the message succeeds."""
        content, error, _rest, _, done = read([b"a\nb\rc\r\r\nd\r\n.\r\n"], normalize=True)
        self.assertEqual((content, error, done), (b"a\r\nb\r\nc\r\n\r\nd\r\n", None, True))

    def test_normalize_fake_ending(self):
        """With normalize, a fake ending becomes an ordinary dot line of content, and the message goes on."""
        content, error, rest, _, _done = read([b"a\n.\nb\r\n.\r\n"], normalize=True)
        self.assertEqual((content, error, rest), (b"a\r\n.\r\nb\r\n", None, b""))

    def test_sink_not_called_after_failure(self):
        """Once the message has failed, no more content reaches the sink."""
        out = []
        reader = DataReader(out.append, BIG, 998)
        reader.feed(b"good\r\n")
        reader.feed(b"bad\n\r\n")
        reader.feed(b"more\r\n.\r\n")
        self.assertEqual(out, [b"good\r\n"])
        self.assertEqual(reader.error, BARE_LINE_ENDING)


class LineLengthTests(SynchronousTestCase):
    """The line-length limit fails the message but never ends DATA early."""

    def test_longest_line(self):
        """A line of exactly max_line octets is accepted, whole or split before its CRLF."""
        line = b"x" * 78
        self.assertEqual(read([line + b"\r\n.\r\n"], max_line=78)[:2], (line + b"\r\n", None))
        self.assertEqual(read([line + b"\r", b"\n.\r\n"], max_line=78)[:2], (line + b"\r\n", None))
        self.assertEqual(read([line, b"\r\n.\r\n"], max_line=78)[:2], (line + b"\r\n", None))

    def test_line_too_long(self):
        """A line of max_line + 1 octets fails the message with 552 5.6.0, whole or split."""
        line = b"x" * 79
        for chunks in ([line + b"\r\n.\r\n"], [line, b"\r\n.\r\n"], [line + b"\r", b"\n.\r\n"],
                       [line[:40], line[40:] + b"\r\n.\r\n"]):
            _, error, rest, _, done = read(chunks, max_line=78)
            self.assertEqual((error, rest, done), (LINE_TOO_LONG, b"", True), chunks)
        self.assertEqual((LINE_TOO_LONG.code, LINE_TOO_LONG.status), (552, "5.6.0"))

    def test_commands_after_long_line_are_content(self):
        """Command lines after a 20 KiB line stay in the message; only the real end stops it."""
        data = b"A" * 20480 + b"\r\nRSET\r\nMAIL FROM:<x@y.z>\r\n"
        for chunks in ([data], [data[i:i + 1000] for i in range(0, len(data), 1000)]):
            out = []
            reader = DataReader(out.append, BIG, 998)
            for chunk in chunks:
                self.assertIsNone(reader.feed(chunk))
            self.assertEqual(reader.feed(b".\r\nNOOP\r\n"), b"NOOP\r\n")
            self.assertEqual((out, reader.error), ([], LINE_TOO_LONG))

    def test_long_line_ended_by_end_of_data(self):
        """
        A long line whose CR arrives at the end of one chunk and whose LF starts
        the next (followed by the dot line) still ends the data there.
        """
        for first in ([b"A" * 2000 + b"\r"], [b"A" * 2000, b"\r"], [b"A" * 1500, b"A" * 500 + b"\r"]):
            _, error, rest, size, done = read(first + [b"\n.\r\nQUIT\r\n"], max_line=100)
            self.assertEqual((error, rest, done, size), (LINE_TOO_LONG, b"QUIT\r\n", True, 2002), first)

    def test_long_line_dot_line_after(self):
        """After a long line, a line that is only a dot still ends the data (split at any point)."""
        data = b"B" * 300 + b"\r\n.\r\nNOOP\r\n"
        for cut in range(len(data) + 1):
            _, error, rest, _, done = read([data[:cut], data[cut:]], max_line=100)
            self.assertEqual((error, rest, done), (LINE_TOO_LONG, b"NOOP\r\n", True), cut)


class SizeTests(SynchronousTestCase):
    """The size limit, counted on the stream as it arrives."""

    def test_size_counts_content(self):
        """size is the content octets received before the end line, dot-stuffing included."""
        self.assertEqual(read([b"ab\r\n..\r\n.\r\n"])[3], 8)

    def test_at_limit(self):
        """Exactly max_size octets are accepted; one more fails the message with 552 5.3.4."""
        self.assertIsNone(read([b"x" * 8 + b"\r\n.\r\n"], max_size=10)[1])
        _, error, rest, _, done = read([b"x" * 9 + b"\r\n.\r\n"], max_size=10)
        self.assertEqual((error, rest, done), (TOO_BIG, b"", True))
        self.assertEqual((TOO_BIG.code, TOO_BIG.status), (552, "5.3.4"))

    def test_exceeded_while_streaming(self):
        """The limit is noticed before the end of data, and nothing more is passed on."""
        out = []
        reader = DataReader(out.append, 100, 998)
        reader.feed(b"x" * 60 + b"\r\n")
        reader.feed(b"y" * 60 + b"\r\n")
        self.assertEqual(reader.error, TOO_BIG)
        self.assertFalse(reader.done)
        self.assertEqual(out, [b"x" * 60 + b"\r\n"])

    def test_exceeded_by_unterminated_long_line(self):
        """An endless line (no CRLF ever) is counted too, so it cannot grow without bound unnoticed."""
        reader = DataReader(lambda b: None, 10_000, 998)
        for _ in range(20):
            reader.feed(b"z" * 1000)
        self.assertEqual(reader.size, 20_000)
        self.assertIsNotNone(reader.error)


class ChunkingPropertyTests(SynchronousTestCase):
    """Properties that hold for every input and every way of cutting it into chunks."""

    @settings(max_examples=500, deadline=None)
    @given(chunked_streams(), st.booleans())
    def test_any_split_same_result(self, stream, normalize):
        """
        Any split of a byte stream into chunks ends the data at the same place,
        with the same rest, size and success; a successful message has the same content.
        """
        data, cuts = stream
        whole = read([data], max_line=20, normalize=normalize)
        parts = read(split(data, cuts), max_line=20, normalize=normalize)
        self.assertEqual((whole[2], whole[3], whole[4]), (parts[2], parts[3], parts[4]))
        self.assertEqual(whole[1] is None, parts[1] is None)
        if whole[1] is None:
            self.assertEqual(whole[0], parts[0])

    @settings(max_examples=300, deadline=None)
    @given(chunked_streams())
    def test_any_split_same_error_for_long_lines(self, stream):
        """
        For CRLF-only streams, the very same error (line too long, or none)
        whatever the split. (Content passed on before a failure may differ:
        it is thrown away.)
        """
        data, cuts = stream
        data = data.replace(b"\r", b"").replace(b"\n", b"\r\n")
        whole = read([data], max_line=20)
        parts = read(split(data, cuts), max_line=20)
        self.assertEqual(whole[1:], parts[1:])
        if whole[1] is None:
            self.assertEqual(whole[0], parts[0])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(LINE, max_size=20), st.binary(max_size=20), CUTS)
    def test_round_trip(self, lines, after, cuts):
        """Lines sent dot-stuffed come out exactly, however chunked, and what follows the end is returned."""
        data = stuff(lines) + after
        content, error, rest, _, done = read(split(data, cuts), max_line=30)
        self.assertEqual((content, error, rest, done), (b"".join(line + b"\r\n" for line in lines), None, after, True))

    @settings(max_examples=300, deadline=None)
    @given(chunked_streams())
    def test_only_crlf_dot_crlf_ends(self, stream):
        """A stream without <CRLF>.<CRLF> (and not starting with .<CRLF>) never ends, however chunked."""
        data, cuts = stream
        assume(b"\r\n.\r\n" not in data and not data.startswith(b".\r\n"))
        _, _, rest, _, done = read(split(data, cuts))
        self.assertEqual((rest, done), (None, False))

    @settings(max_examples=300, deadline=None)
    @given(chunked_streams())
    def test_normalized_content_has_only_crlf(self, stream):
        """With normalize, whatever arrives is passed on with CRLF line endings only."""
        data, cuts = stream
        out = []
        reader = DataReader(out.append, BIG, BIG, normalize=True)
        for chunk in split(data, cuts):
            if reader.feed(chunk) is not None:
                break
        content = b"".join(out)
        self.assertIsNone(reader.error)
        self.assertEqual(content.count(b"\r"), content.count(b"\r\n"))
        self.assertEqual(content.count(b"\n"), content.count(b"\r\n"))


class DotLinesTests(SynchronousTestCase):
    """C{dot_lines}: whether the content may need dot-stuffing when it is sent on (else it is "transparent")."""

    def reader_after(self, data: bytes, normalize: bool = False) -> tuple[DataReader, bytes]:
        out: list[bytes] = []
        reader = DataReader(out.append, BIG, BIG, normalize=normalize)
        reader.feed(data)
        return reader, b"".join(out)

    def test_plain_message(self) -> None:
        """No line starting with a dot: not set, and the content is transparent."""
        reader, content = self.reader_after(b"Subject: a.b\r\n\r\nx .y\r\n.\r\n")
        self.assertFalse(reader.dot_lines)
        self.assertTrue(is_transparent(content))

    def test_stuffed_lines(self) -> None:
        """A dot-stuffed line, first or later, sets it."""
        self.assertTrue(self.reader_after(b"..first\r\n.\r\n")[0].dot_lines)
        self.assertTrue(self.reader_after(b"a\r\n..b\r\n.\r\n")[0].dot_lines)

    def test_normalized_line_ends(self) -> None:
        """A bare LF made into CRLF can put a dot at a line start: set."""
        reader, content = self.reader_after(b"a\n.b\r\n.\r\n", normalize=True)
        self.assertEqual(content, b"a\r\n.b\r\n")
        self.assertTrue(reader.dot_lines)

    @settings(max_examples=400, deadline=None)
    @given(chunked_streams(), st.booleans())
    def test_unset_means_transparent(self, stream, normalize):
        """For every stream and split: content accepted without C{dot_lines} has CRLF endings only and no dot line."""
        data, cuts = stream
        out: list[bytes] = []
        reader = DataReader(out.append, BIG, BIG, normalize=normalize)
        for chunk in split(data, cuts):
            if reader.feed(chunk) is not None:
                break
        if reader.done and reader.error is None and not reader.dot_lines:
            self.assertTrue(is_transparent(b"".join(out)))
