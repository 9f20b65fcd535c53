"""
BODY and BODYSTRUCTURE from the MIME index
(L{gomail.mailaccess.imapstructure}): header fields twisted's parser
could not take never end a session; the Content-* fields past the header
bounds are still read; what an index is counted to cost is what it holds.
"""

from __future__ import annotations

import gc
import re
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.mail import imap4
from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess import imapstructure, mimeindex
from gomail.mailaccess.imapmessage import MessageHeader, split_header
from gomail.mailaccess.imapstructure import mend_content_type
from gomail.mailaccess.mimeindex import MAX_KEPT_HEADER, index_bytes
from tests.mimetesting import (
    TEXT,
    RawPart,
    fetch_part,
    multipart,
    reference_section,
    reference_structure,
    section_names,
)
from tests.test_imap import HarnessMixin
from tests.test_imap_sections import fed, section, structure

#: Header fields seen in the wild or made up to break parsers: no "=", no value, no slash, duplicates,
#: unclosed quotes, RFC 2231 parameters, 8-bit bytes, folded lines.
MALFORMED = [
    b"Content-Type: text/plain; charset",
    b"Content-Type: text/plain;",
    b"Content-Type: text/plain; ; charset=us-ascii",
    b"Content-Type: text/plain; charset=",
    b"Content-Type: text",
    b"Content-Type: /",
    b"Content-Type: ",
    b"Content-Type: text/plain; charset=a; charset=b",
    b"Content-Type: text/plain; name=\"unclosed; charset=utf-8",
    b"Content-Type: text/plain; name*0*=utf-8''a%20b; name*1=c",
    b"Content-Type: text/pl\xe4in; ch\xe4rset=\xff",
    b"Content-Type: multipart/mixed; boundary",
    b"Content-Type: message/rfc822; x",
    b"Content-Type: text/plain;\r\n charset",
    b"Content-Disposition: attachment; filename",
    b"Content-Disposition: ; =",
    b"Content-Disposition: attachment; filename*=utf-8''%e4.txt",
    b"Content-Language: \xe4",
    b"From: \"unclosed <a@b>",
    b"From: @@@, <>, a@",
    b"To: =?utf-8?q?broken",
    b"Date: not a date",
    b"Subject: \xff\xfe",
]


class MalformedHeaderTests(HarnessMixin, SynchronousTestCase):
    """Header fields twisted's parser could not take: answered, the session goes on."""

    def test_mended_content_type(self):
        """Parameters without a name=value shape (no "=", no name, no value) are left out; the rest is kept as it is."""
        cases = {
            "text/plain; charset": "text/plain",
            "text/plain;": "text/plain",
            "text/plain; ; charset=us-ascii": "text/plain; charset=us-ascii",
            "text/plain; charset= ": "text/plain",
            "text/plain; =x; charset=a": "text/plain; charset=a",
            "text/plain;\r\n charset=a": "text/plain; charset=a",
            "text/plain; name=\"a;b\"": "text/plain; name=\"a",
        }
        for value, mended in cases.items():
            self.assertEqual(mend_content_type(value), mended, value)

    def test_fetch_answers(self):
        """
        ENVELOPE, BODY, BODYSTRUCTURE and sections of messages with each of
        those fields, alone and in a part: answered, nothing logged, the
        session open (a parameter without "=" dropped it on every BODYSTRUCTURE).
        """
        harness = self.harness()
        for n, field in enumerate(MALFORMED):
            inner = field + b"\r\nSubject: s\r\n\r\nbody\r\n"
            harness.deliver(f"17000000{n:02d}.m{n}_0.mx.test", field + b"\r\n\r\nhi\r\n")
            harness.deliver(f"17000001{n:02d}.p{n}_0.mx.test",
                            b"Subject: p\r\n" + multipart(b"B", [TEXT, inner, b"Content-Type: message/rfc822\r\n\r\n" +
                                                                  inner]))
        client = self.selected(harness)
        answer = client.send(b"f FETCH 1:* (ENVELOPE BODY BODYSTRUCTURE BODY.PEEK[1.MIME] "
                             b"BODY.PEEK[HEADER.FIELDS (Content-Type)] BODY.PEEK[3.HEADER])\r\n")
        self.assertEqual(answer.count(b" FETCH (ENVELOPE "), 2 * len(MALFORMED))
        self.assertTrue(answer.endswith(b"f OK FETCH completed\r\n"))
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertFalse(client.closed)
        # "text/plain; charset": the parameter left out.
        self.assertEqual(client.send(b"g FETCH 1 BODYSTRUCTURE\r\n"),
                         b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" NIL NIL NIL NIL 4 1 NIL NIL NIL NIL))\r\n'
                         b"g OK FETCH completed\r\n")

    def test_structure_code_failing(self):
        """Should twisted's structure code fail all the same: one text part answered, logged once a session."""

        def failing(*args: Any) -> Any:
            raise RuntimeError("twisted could not")

        self.patch(imapstructure.imap4, "getBodyStructure", failing)
        harness = self.with_mail()
        client = self.selected(harness)
        answer = client.send(b"f FETCH 1:2 (BODYSTRUCTURE BODY)\r\n")
        self.assertEqual(answer.count(b'BODYSTRUCTURE ("text" "plain" NIL NIL NIL "7bit" '), 2)
        self.assertEqual(answer.count(b' BODY ("text" "plain" NIL NIL NIL "7bit" '), 2)
        self.assertTrue(answer.endswith(b"f OK FETCH completed\r\n"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from([b"Content-Type", b"Content-Disposition", b"Content-Language",
                                               b"Content-Transfer-Encoding", b"From", b"To", b"Date", b"Subject"]),
                              st.lists(st.sampled_from([b"text", b"/", b"plain", b";", b"=", b"\"", b"'", b"*", b"\\",
                                                        b" ", b"\r\n ", b"\xe4", b"name", b"@", b"<", b",", b"%"]),
                                       max_size=12)), max_size=6), st.booleans())
    def test_fuzzed_fields(self, fields, in_part):
        """Random field values through twisted's BODYSTRUCTURE, BODY and ENVELOPE: they never raise."""
        header = b"".join(name + b": " + b"".join(value) + b"\r\n" for name, value in fields)
        data = header + b"\r\nbody\r\n"
        if in_part:
            data = b"Subject: p\r\n" + multipart(b"B", [data, b"Content-Type: message/rfc822\r\n\r\n" + data])
        index = index_bytes(data)
        imapstructure.body_structure(index.root, True)
        imapstructure.body_structure(index.root, False)
        imap4.collapseNestedLists([imap4.getEnvelope(MessageHeader(split_header(data)[0]))])


class HeaderBoundTests(SynchronousTestCase):
    """Past the bounds on kept headers, an entity's Content-* fields are still read."""

    def test_parts_after_the_budget(self):
        """17 parts of 70 KiB headers (past the 1 MiB for all): the 17th, a multipart, still has its parts."""
        fat = (b"X-Fat: " + b"f" * 1000 + b"\r\n") * 70
        parts = [fat + TEXT] * 16 + [multipart(b"in", [TEXT, b"Content-Type: text/html\r\n\r\n<p>secret part</p>\r\n"])]
        data = b"Subject: s\r\n" + multipart(b"out", parts)
        index = index_bytes(data)
        self.assertEqual(section(data, index, b"17.2"), b"<p>secret part</p>\r\n")
        self.assertEqual(structure(index), reference_structure(data))

    def test_top_level_content_type_late(self):
        """A top-level Content-Type after 70 KiB of header is read: its multipart's parts are found."""
        data = ((b"Received: " + b"r" * 200 + b"\r\n") * 350 + b"Subject: late\r\n" +
                multipart(b"B", [TEXT, b"Content-Type: text/html\r\n\r\n<p>two</p>\r\n"]))
        self.assertGreater(data.index(b"Content-Type"), MAX_KEPT_HEADER)
        index = index_bytes(data)
        self.assertEqual(index.root.content_type, "multipart/mixed")
        self.assertEqual(section(data, index, b"2"), b"<p>two</p>\r\n")
        self.assertEqual(structure(index), reference_structure(data))

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data(), st.sampled_from([(0, 0), (20, 60), (40, 100), (1000, 30)]), st.integers(1, 9))
    def test_fuzzed_bounds(self, draw, bounds, size):
        """
        With bounds of a few octets, messages of padding, Content-* (folded),
        junk and lone-CR lines: the structure and every section but HEADER.FIELDS as the oracle's.
        """
        self.patch(mimeindex, "MAX_KEPT_HEADER", bounds[0])
        self.patch(mimeindex, "MAX_INDEX_HEADERS", bounds[1])
        data = draw.draw(bounded_entities())
        # A folded boundary parameter holds a line break: no line is its delimiter (RFC 2046 allows none).
        assume(not re.search(rb'boundary=(B|"C")\r?\n[ \t]', data))
        index = fed(data, size)
        self.assertEqual(structure(index), reference_structure(data))
        old = RawPart(data)
        for name in section_names():
            if b"FIELDS" not in name:
                self.assertEqual(section(data, index, name), reference_section(old, fetch_part(name)), name)


#: Header lines for L{bounded_entities}.
HEADER_LINES = [b"X-Pad: 0123456789", b"Content-Type: multipart/mixed; boundary=B", b"Content-Type: message/rfc822",
                b"Content-Type: text/html;\r\n charset=utf-8", b"Content-Type: multipart/alternative;\n\tboundary=\"C\"",
                b"Content-Transfer-Encoding: base64", b"junk line", b"X-A: b\rjunk", b"X-A: b\r c", b" continued",
                b"\tcont\r\n more", b"CONTENT-ID: <x>", b"\rContent-Description: d", b"Content-Type : bad"]


@st.composite
def bounded_entities(draw: Any, depth: int = 0) -> bytes:
    """A MIME entity whose header mixes L{HEADER_LINES}, with nested parts."""
    nl = draw(st.sampled_from([b"\r\n", b"\n"]))
    out = b"".join(draw(st.sampled_from(HEADER_LINES)) + nl for _ in range(draw(st.integers(0, 8)))) + nl
    if depth < 3:
        for _ in range(draw(st.integers(0, 3))):
            out += b"--" + draw(st.sampled_from([b"B", b"C"])) + draw(st.sampled_from([b"", b"--"])) + nl
            out += draw(bounded_entities(depth + 1))
    return out + draw(st.sampled_from([b"", b"body" + nl]))


class IndexCostTests(SynchronousTestCase):
    """What an index is counted to cost (for the cache's 4 MiB a session) is at least what it holds."""

    def test_cost_covers_memory(self):
        """Indexes of 1,000 entities, small and with 1 KiB headers: their cost is what tracemalloc sees, or more."""
        fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(18))
        for part in (b"\r\nx", TEXT, fields + TEXT):
            data = b"Subject: m\r\n" + multipart(b"o", [multipart(b"i", [part] * 400)] * 5)
            gc.collect()
            tracemalloc.start()
            try:
                index = index_bytes(data)
                gc.collect()
                held, _ = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            self.assertGreaterEqual(index.cost, held, part[:20])
            self.assertLess(index.cost, 2 * held, part[:20])


class StructureOffTheReactorTests(HarnessMixin, SynchronousTestCase):
    """BODYSTRUCTURE and BODY are made in the I/O pool, once a message."""

    def test_made_in_the_pool_once(self):
        """
        The structures are made by a job of the account's run (the I/O pool),
        once for a FETCH that asks for BODYSTRUCTURE three times and BODY
        twice, and not again for the next FETCH of that message; the answers
        are the same as made on the reactor.
        """
        from tests.test_imap import MULTI, U1

        harness = self.harness()
        harness.deliver(U1, MULTI)
        client = self.selected(harness)
        expected = client.send(b"a FETCH 1 (BODYSTRUCTURE BODY)\r\n")
        client = self.selected(harness)
        jobs: list[Any] = []
        account_run = client.proto.account.run

        def run(f: Any, *args: Any, **kwargs: Any) -> Any:
            jobs.append(f)
            return account_run(f, *args, **kwargs)

        client.proto.account.run = run
        made: list[bool] = []
        real = imapstructure.body_structure

        def counting(root: Any, extended: bool) -> bytes:
            made.append(extended)
            return real(root, extended)

        self.patch(imapstructure, "body_structure", counting)
        answer = client.send(b"b FETCH 1 (BODYSTRUCTURE BODY BODYSTRUCTURE BODY BODYSTRUCTURE)\r\n")
        self.assertIn(imapstructure.encode_structures, jobs)
        self.assertEqual(sorted(made), [False, True])
        self.assertEqual(answer.count(expected.split(b"BODYSTRUCTURE ")[1].split(b" BODY (")[0]), 3)
        client.send(b"c FETCH 1 (BODYSTRUCTURE BODY)\r\n")
        self.assertEqual(sorted(made), [False, True])
