"""
Fuzzing the SMTP line framing (L{gomail.smtp.framing}) through the real
protocol on an in-memory transport: whatever a client sends, in whatever
pieces, the server answers only well-formed replies, never fails inside, and
how the bytes are cut into reads does not change what a client that waits for
each reply is told. (The DATA reader and the address parser have fuzz tests
of their own: tests.test_smtp_reader, tests.test_smtp_address.)
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.smtphelpers import HarnessMixin, replies

#: One reply line: a code 2xx-5xx, a space or a dash, printable text.
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][\x20-\x7e]*")

COMMANDS = st.sampled_from([
    b"EHLO client.test", b"HELO client.test", b"MAIL FROM:<alice@example.org>", b"MAIL FROM:<>",
    b"RCPT TO:<bob@example.com>", b"RCPT TO:<nobody@example.net>", b"RCPT TO:<bad", b"DATA", b"RSET",
    b"NOOP", b"VRFY bob", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"BDAT 10", b"QUIT", b"",
    b"MAIL FROM:<alice@example.org> SIZE=999999999999", b"ehlo lower.test", b"X" * 600,
])
JUNK = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
LINES = st.lists(st.one_of(COMMANDS, JUNK), min_size=1, max_size=12)
#: Where to cut a stream into reads: positions as fractions of its length.
CUTS = st.lists(st.floats(min_value=0, max_value=1), max_size=6)


def cut(data: bytes, fractions: list[float]) -> list[bytes]:
    """C{data} cut into pieces at the given fractions of its length."""
    points = sorted({int(f * len(data)) for f in fractions} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [data]


class FramingFuzzTests(HarnessMixin, SynchronousTestCase):
    """Arbitrary command streams against a real session."""

    def check_well_formed(self, output: bytes) -> None:
        """Every line the server wrote is a reply line ending in CRLF."""
        if output:
            self.assertTrue(output.endswith(b"\r\n"), output[-80:])
        for line in replies(output):
            self.assertRegex(line, REPLY_LINE)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(LINES, st.sampled_from([b"\r\n", b"\n", b"\r"]), CUTS)
    def test_any_stream_gets_well_formed_replies(self, lines, ending, fractions):
        """
        Commands and junk, with CRLF, bare LF or bare CR endings, pipelined and
        cut anywhere: only well-formed replies, and no error inside the server
        (trial fails a test that logs one).
        """
        client = self.harness().connect()
        output = client.send_chunks(cut(b"".join(line + ending for line in lines), fractions))
        self.check_well_formed(output)

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(LINES, st.lists(CUTS, min_size=12, max_size=12))
    def test_cutting_does_not_change_the_answers(self, lines, cuts):
        """
        A client that sends one command and waits for its reply is told the same
        whether each command arrives in one read or in several.
        """
        whole, pieces = self.harness().connect(), self.harness().connect()
        for line, fractions in zip(lines, cuts):
            if whole.closed:
                break
            expected = whole.send(line + b"\r\n")
            self.assertEqual(pieces.send_chunks(cut(line + b"\r\n", fractions)), expected, line)
            self.check_well_formed(expected)
        self.assertEqual(pieces.closed, whole.closed)

    @settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=4096))
    def test_long_line_in_any_pieces(self, pieces, step):
        """A line far over the limit, in pieces of any size, gets one 500 and leaves the session usable."""
        client = self.harness().connect()
        line = b"NOOP " + b"x" * 3000 + b"\r\n"
        chunks = [line[i:i + step] for i in range(0, len(line), step)][:pieces]
        rest = line[sum(len(c) for c in chunks):]
        output = client.send_chunks([*chunks, rest])
        self.assertEqual(replies(output), [b"500 5.5.2 Line too long"])
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
