"""
The MIME index (L{gomail.mailaccess.mimeindex}) against the in-memory
code it replaced: the same BODYSTRUCTURE and the same bytes for every
section, whatever the blocks the file is read in; its bounds; the cache of
indexes (L{gomail.mailaccess.imapsections.IndexCache}); and SEARCH's
block-by-block word finder (L{gomail.mailaccess.imapsearch.find_words}).
"""

from __future__ import annotations

import io
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.mail import imap4
from twisted.trial.unittest import SynchronousTestCase

from gomail.mailaccess import imapsearch, imapsections
from gomail.mailaccess.imapmessage import (
    MAX_MIME_DEPTH,
    MAX_MIME_PARTS,
    MessageHeader,
    split_header,
)
from gomail.mailaccess.imapsearch import find_words
from gomail.mailaccess.imapstore import BLOCK, Entry
from gomail.mailaccess.imapstructure import EntityPart
from gomail.mailaccess.mimeindex import (
    MAX_CONTENT_HEADER,
    MAX_ENTITIES,
    MAX_INDEX_HEADERS,
    MAX_KEPT_HEADER,
    MimeIndex,
    Scanner,
    index_bytes,
    index_file,
)
from tests.mimetesting import (
    CASES,
    TEXT,
    RawPart,
    fetch_part,
    large_message,
    mime_entities,
    multipart,
    reference_section,
    reference_structure,
    section_names,
)


def fed(data: bytes, size: int) -> MimeIndex:
    """The index of C{data} fed C{size} octets at a time."""
    scanner = Scanner()
    for start in range(0, len(data), size):
        scanner.feed(data[start:start + size])
    return scanner.finish()


class Loaded:
    """A message as FETCH holds it: header and index, no body bytes."""

    def __init__(self, data: bytes, index: MimeIndex) -> None:
        self.content = MessageHeader(split_header(data)[0])
        self.index = index


def section(data: bytes, index: MimeIndex, name: bytes) -> bytes:
    """The bytes FETCH sends for C{BODY[name]}, cut from C{data} where the index says."""
    found = imapsections.locate(Loaded(data, index), fetch_part(name))
    if isinstance(found, tuple):
        return data[found[0]:len(data) if found[1] is None else found[1]]
    return found


def structure(index: MimeIndex) -> bytes:
    """BODYSTRUCTURE from the index, as FETCH encodes it."""
    return imap4.collapseNestedLists([imap4.getBodyStructure(EntityPart(index.root), True)])


class IndexAgreesTests(SynchronousTestCase):
    """BODYSTRUCTURE and every section from the index equal what the in-memory RawPart gave."""

    def assert_agrees(self, data: bytes, sizes: tuple[int, ...] = (1, 7, BLOCK)) -> None:
        """
        The index of C{data}, fed C{sizes} octets at a time, answers as RawPart
        did for every section, and has a BODYSTRUCTURE: RawPart's, but where
        RawPart raised (a message/rfc822 at depth 12; a Content-Type
        parameter without "=" made twisted raise before both were mended).
        """
        old = RawPart(data)
        try:
            want: bytes | None = reference_structure(data)
        except IndexError:
            want = None
        for size in sizes:
            index = fed(data, size)
            self.assertEqual(index.size, len(data))
            answer = structure(index)
            if want is not None:
                self.assertEqual(answer, want, f"fed {size} at a time")
            for name in section_names():
                self.assertEqual(section(data, index, name), reference_section(old, fetch_part(name)),
                                 f"BODY[{name!r}] fed {size} at a time")

    def test_awkward_messages(self):
        """Nested multiparts, message/rfc822, no final boundary, LF-only, preamble/epilogue...: the same answers."""
        for name, data in CASES.items():
            with self.subTest(name):
                self.assert_agrees(data)

    def test_delimiter_across_block_edges(self):
        """A delimiter split across two 64 KiB reads of the file (at every offset around the edge) is found."""
        for on_edge in range(-1, 14):
            data = large_message(3 * BLOCK, on_edge)
            index = index_file(io.BytesIO(data), len(data))
            self.assertEqual(structure(index), reference_structure(data), f"{on_edge} before the edge")
            for name in (b"1", b"2", b"2.MIME", b"3", b"3.HEADER", b"3.TEXT", b"TEXT"):
                self.assertEqual(section(data, index, name), reference_section(RawPart(data), fetch_part(name)))

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(mime_entities(), st.integers(1, 9))
    def test_fuzzed_messages(self, data, size):
        """Random MIME trees (odd delimiters, missing ends, mixed line ends) fed in random blocks: the same answers."""
        self.assert_agrees(data, (size,))

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(mime_entities(), st.data())
    def test_cut_messages(self, data, draw):
        """A message cut anywhere (a delimiter or header line left unfinished): the same answers."""
        self.assert_agrees(data[:draw.draw(st.integers(0, len(data)))], (3,))


class IndexBoundTests(SynchronousTestCase):
    """What an index holds is bounded, whatever the message."""

    def test_deep_nesting(self):
        """1,200 nested multiparts: MAX_MIME_DEPTH levels recorded, BODYSTRUCTURE as RawPart's."""
        depth = 1200
        head = "".join(f'Content-Type: multipart/mixed; boundary="b{n}"\r\n\r\n--b{n}\r\n' for n in range(depth))
        tail = "".join(f"\r\n--b{n}--\r\n" for n in reversed(range(depth)))
        data = ("Subject: deep\r\n" + head + "Content-Type: text/plain\r\n\r\nhi" + tail).encode()
        index = index_bytes(data)
        levels, entity = 0, index.root
        while entity.children:
            entity = entity.children[0]
            levels += 1
        self.assertEqual(levels, MAX_MIME_DEPTH)
        self.assertEqual(structure(index), reference_structure(data))

    def test_parts_and_entities(self):
        """A multipart lists at most MAX_MIME_PARTS parts; a message records at most MAX_ENTITIES entities."""
        wide = multipart(b"w", [TEXT] * (MAX_MIME_PARTS + 20))
        self.assertEqual(len(index_bytes(b"Subject: w\r\n" + wide).root.children), MAX_MIME_PARTS)
        many = multipart(b"o", [multipart(b"i", [TEXT] * 400)] * 5)
        index = index_bytes(b"Subject: m\r\n" + many)
        count, todo = 0, [index.root]
        while todo:
            entity = todo.pop()
            count += 1
            todo += entity.children
        self.assertEqual(count, MAX_ENTITIES)

    def test_headers(self):
        """
        An entity keeps whole lines of its header up to MAX_KEPT_HEADER, all
        together up to MAX_INDEX_HEADERS; past those bounds its Content-*
        fields still (up to MAX_CONTENT_HEADER each entity): every part stays text/html.
        """
        fat = b"X-Fat: " + b"f" * 100 + b"\r\n"
        part = fat * 1000 + b"Content-Type: text/html\r\n\r\nbody\r\n"
        data = b"Subject: h\r\n" + multipart(b"h", [part] * 40)
        index = index_bytes(data)
        kept = [len(child.header) for child in index.root.children]
        self.assertEqual(max(kept), MAX_KEPT_HEADER // len(fat) * len(fat) + len(b"Content-Type: text/html\r\n"))
        self.assertLessEqual(sum(kept) + len(index.root.header), MAX_INDEX_HEADERS + 41 * MAX_CONTENT_HEADER)
        self.assertEqual({child.content_type for child in index.root.children}, {"text/html"})
        self.assertEqual(len(index.root.children), 40)  # offsets are still exact: the sections stay right
        self.assertEqual(section(data, index, b"40.MIME"), part[:part.index(b"\r\n\r\n") + 4])
        self.assertEqual(structure(index), reference_structure(data))

    def test_rfc822_past_the_depth(self):
        """A message/rfc822 at the depth bound has a BODYSTRUCTURE (RawPart's raised IndexError)."""
        data = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_MIME_DEPTH + 2) + b"Subject: x\r\n\r\nend\r\n"
        self.assertIn(b'"message" "rfc822"', structure(index_bytes(data)))


class IndexWorkTests(SynchronousTestCase):
    """
    What Python looks at while indexing is bounded by what can matter (the
    lines that may be delimiters of the boundaries open there, a header
    kept whole), not by the lines of the message: 25 MB of lines starting
    with "--" held a pool thread (and the GIL) for 10 s.
    """

    def examined(self, data: bytes) -> int:
        """Lines the scanner looked at in Python (its calls of _line) for C{data}, read in 64 KiB blocks."""
        lines = []
        real_line = Scanner._line

        def line(scanner: Scanner, *args: Any) -> None:
            lines.append(args[0])
            real_line(scanner, *args)

        self.patch(Scanner, "_line", line)
        index = fed(data, BLOCK)
        self.assertEqual(structure(index), reference_structure(data))
        return len(lines)

    def test_dash_lines_in_a_body(self):
        """1 MB of "--x" lines, or of "--Bx" lines where B is the boundary: about one line looked at a block."""
        head = b'Subject: d\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + TEXT
        for line in (b"--x\r\n", b"--Bx\r\n", b"--\n", b"-- B\r\n"):
            data = head + line * (1024 * 1024 // len(line)) + b"\r\n--B--\r\n"
            self.assertLess(self.examined(data), 2 * len(data) // BLOCK + 20, line)

    def test_long_header(self):
        """A part's header of 1 MB of fields: looked at line by line while kept whole (64 KiB), then not."""
        field = b"X-A: b\r\n"
        data = (b'Subject: h\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' +
                field * (1024 * 1024 // len(field)) + b"Content-Type: text/html\r\n\r\nx\r\n--B--\r\n")
        self.assertLess(self.examined(data), MAX_KEPT_HEADER // len(field) + 2 * len(data) // BLOCK + 20)


class IndexCacheTests(SynchronousTestCase):
    """The cache of indexes is bounded in entries and in memory, and forgets the least recently used."""

    def test_bounds(self):
        """Past its entries or its cost, the least recently used index goes; one too big is not kept."""
        cache = imapsections.IndexCache(entries=2, cost=100)
        small = [MimeIndex(index_bytes(b"").root, 0, 40) for _ in range(3)]
        cache.put(("f", "a"), small[0])
        cache.put(("f", "b"), small[1])
        self.assertIs(cache.get(("f", "a")), small[0])  # now the most recent
        cache.put(("f", "c"), small[2])
        self.assertIsNone(cache.get(("f", "b")))
        self.assertIs(cache.get(("f", "a")), small[0])
        cache.put(("f", "d"), MimeIndex(index_bytes(b"").root, 0, 90))  # a and c cannot stay with it
        self.assertIsNone(cache.get(("f", "a")))
        self.assertIsNone(cache.get(("f", "c")))
        cache.put(("f", "e"), MimeIndex(index_bytes(b"").root, 0, 101))
        self.assertIsNone(cache.get(("f", "e")))


class FindWordsTests(SynchronousTestCase):
    """SEARCH BODY/TEXT read block by block answer as the in-memory match did (case-insensitive, bytes)."""

    def find(self, data: bytes, words: set[tuple[bytes, bytes]]) -> set[tuple[bytes, bytes]]:
        """find_words over a folder holding only C{data}."""
        folder = self.mktemp()
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(folder, sub))
        with open(os.path.join(folder, "cur", "m:2,"), "wb") as f:
            f.write(data)
        return find_words(folder, Entry(1, "m", "m:2,", len(data), 0.0), words)

    def expected(self, data: bytes, words: set[tuple[bytes, bytes]]) -> set[tuple[bytes, bytes]]:
        """Which of C{words} the in-memory match found in C{data} (BODY: after the header)."""
        body = split_header(data)[1].lower()
        return {(key, w) for key, w in words if w in (body if key == b"BODY" else data.lower())}

    def test_words_across_block_edges(self):
        """A word split by a block edge is found; a header word is TEXT only; case does not matter."""
        data = b"Subject: Needle-in-header\r\n\r\n" + b"a" * (BLOCK - 35) + b"HayStack" + b"b" * BLOCK
        words = {(b"TEXT", b"haystack"), (b"BODY", b"haystack"), (b"TEXT", b"needle-in"), (b"BODY", b"needle-in"),
                 (b"BODY", b"absent"), (b"TEXT", b"")}
        self.assertEqual(self.find(data, words), self.expected(data, words))
        self.assertNotIn((b"BODY", b"needle-in"), self.find(data, words))

    def test_blank_line_across_block_edge(self):
        """The end of the header split by a block edge: BODY looks only after it."""
        for cut in range(-3, 3):
            data = b"X: " + b"h" * (BLOCK - 6 + cut) + b"\r\n\r\nword" + b"\r\n"
            words = {(b"BODY", b"word"), (b"BODY", b"hh")}
            self.assertEqual(self.find(data, words), self.expected(data, words))

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"\r\n", b"A", b"ab", b"x"]), max_size=40),
           st.integers(2, 6),
           st.lists(st.sampled_from([b"a", b"ab", b"ba", b"\r\n", b"x\n", b"\n\n", b"b\r\na", b"aab", b""]),
                    min_size=1, max_size=3))
    def test_fuzzed(self, pieces, block, words):
        """
        Random messages and words read in blocks of 2 to 6 octets (words, and
        the header's blank line, across block edges): the same as the in-memory match.
        """
        self.patch(imapsearch, "BLOCK", block)
        data = b"".join(pieces)
        asked = {(key, w.lower()) for w in words for key in (b"BODY", b"TEXT")}
        self.assertEqual(self.find(data, asked), self.expected(data, asked))
