# -*- test-case-name: tests.test_imap_sections,tests.test_imap_sections_fetch -*-
"""
SEARCH over twisted's own matching (C{_searchFilter}), with the disk reads
moved off the reactor and never a whole message in memory: for each
message, its header is read (in the I/O pool) only when a key looks at it,
and the words of BODY and TEXT keys are looked for by reading its file
block by block (L{find_words}, in the I/O pool), stopping once all are
found; twisted's matching then reads the answers.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4

from gomail.mailaccess import imapstore
from gomail.mailaccess.imapmessage import HeaderEnd
from gomail.mailaccess.imapstore import BLOCK, Entry
from gomail.mailaccess.sessionapi import IMAPSessionAPI

_HEADER_KEYS = {b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"HEADER", b"SENTBEFORE", b"SENTON", b"SENTSINCE"}
_BODY_KEYS = {b"BODY", b"TEXT"}


def _text(term: Any) -> str:
    return term.decode("utf-8", "replace") if isinstance(term, bytes) else str(term)


def _bytes(term: Any) -> bytes:
    return term if isinstance(term, bytes) else str(term).encode("utf-8")


def search_needed(query: list[Any]) -> str | None:
    """Whether SEARCH must read each message's header: C{"header"} or None (BODY and TEXT: L{search_words})."""
    need = None
    for term in query:
        if isinstance(term, list):
            need = need or search_needed(term)
        elif isinstance(term, bytes) and term.upper() in _HEADER_KEYS:
            need = "header"
    return need


def search_words(query: list[Any]) -> set[tuple[bytes, bytes]]:
    """
    C{(b"BODY" or b"TEXT", lower-case word)} for each BODY and TEXT key of
    C{query}: every key followed by a word, so some may be words of other
    keys (C{SUBJECT BODY}): looked for in vain, never missed.
    """
    words: set[tuple[bytes, bytes]] = set()
    for n, term in enumerate(query):
        if isinstance(term, list):
            words |= search_words(term)
        elif (isinstance(term, bytes) and term.upper() in _BODY_KEYS and n + 1 < len(query)
              and isinstance(query[n + 1], (bytes, str))):
            words.add((term.upper(), _bytes(query[n + 1]).lower()))
    return words


class _Finder:
    """Looks for words (lower case) in lower-cased bytes fed in order, across the edges of blocks."""

    def __init__(self, words: set[bytes]) -> None:
        self.missing = {w for w in words if w}
        self.found = words - self.missing  # the empty word is in everything
        self._keep = max((len(w) for w in words), default=1) - 1
        self._tail = b""

    def feed(self, data: bytes) -> None:
        window = self._tail + data
        for word in [w for w in self.missing if w in window]:
            self.missing.discard(word)
            self.found.add(word)
        self._tail = window[max(0, len(window) - self._keep):] if self._keep else b""


def find_words(path: str, entry: Entry, words: set[tuple[bytes, bytes]]) -> set[tuple[bytes, bytes]]:
    """
    (blocking) Which of C{words} a message has, ASCII case-insensitively (as
    twisted's matching and the in-memory search did): a TEXT word anywhere in
    its file, a BODY word after its header (which ends at its first empty
    line; without one it has no body). The file is read a block at a time,
    up to where every word was found.
    """
    text = _Finder({w for key, w in words if key == b"TEXT"})
    body = _Finder({w for key, w in words if key == b"BODY"})
    header = HeaderEnd()
    pos = 0
    with imapstore.open_message(path, entry) as f:
        while text.missing or body.missing:
            block = f.read(BLOCK).lower()
            if not block:
                break
            text.feed(block)
            body_start = header.feed(block)
            if body_start is not None and body_start < pos + len(block):
                body.feed(block[max(0, body_start - pos):])
            pos += len(block)
    return {(b"TEXT", w) for w in text.found} | {(b"BODY", w) for w in body.found}


class IMAPSearchMixin(IMAPSessionAPI):
    """SEARCH (uses the session's C{mbox}...)."""

    mbox: Any

    def do_SEARCH(self, tag: bytes, charset: Any, query: Any, uid: int = 0) -> None:
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            return self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        d = Deferred.fromCoroutine(self._search(query, bool(uid)))
        d.addCallbacks(lambda found: self._searched(tag, found), lambda failure: self._search_failed(tag, failure))

    select_SEARCH: Any = (do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)

    async def _search(self, query: list[Any], uid: bool) -> list[int]:
        mbox = self.mbox
        need = search_needed(query)
        words = search_words(query)
        entries = list(mbox.entries)
        if not entries:
            return []
        last_seq, last_uid = len(entries), entries[-1].uid
        found = []
        for seq in range(1, len(entries) + 1):
            msg = mbox.message(seq)
            try:
                if need:
                    await mbox.content(msg, header_only=True)
                if words:
                    msg.words = await mbox.account.run(find_words, mbox.path, msg.entry, words)
            except FileNotFoundError:
                continue
            try:
                if self._searchFilter(copy.deepcopy(query), seq, msg, last_seq, last_uid):  # type: ignore[attr-defined]
                    found.append(msg.getUID() if uid else seq)
            finally:
                msg.load(None)
        return found

    # twisted's matching compares the (str) header with the (bytes) search term: done here on text.

    def _header_contains(self, name: str, query: list[Any], msg: Any) -> bool:
        needle = _text(query.pop(0)).lower()
        return needle in msg.getHeaders(False, name).get(name, "").lower()

    def search_FROM(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains("from", query, msg)

    def search_TO(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains("to", query, msg)

    def search_CC(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains("cc", query, msg)

    def search_BCC(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains("bcc", query, msg)

    def search_SUBJECT(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains("subject", query, msg)

    def search_HEADER(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._header_contains(_text(query.pop(0)).lower(), query, msg)

    def search_BODY(self, query: list[Any], id: int, msg: Any) -> bool:
        return (b"BODY", _bytes(query.pop(0)).lower()) in msg.words

    def search_TEXT(self, query: list[Any], id: int, msg: Any) -> bool:
        return (b"TEXT", _bytes(query.pop(0)).lower()) in msg.words

    def _dated(self, key: str, query: list[Any], id: int, msg: Any) -> bool:
        query[0] = _text(query[0])  # twisted's date parsing takes text
        try:
            return bool(getattr(imap4.IMAP4Server, "search_" + key)(self, query, id, msg))
        except TypeError:  # no (readable) Date: header: twisted compares None with a date
            return False

    def search_BEFORE(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("BEFORE", query, id, msg)

    def search_ON(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("ON", query, id, msg)

    def search_SINCE(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("SINCE", query, id, msg)

    def search_SENTBEFORE(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("SENTBEFORE", query, id, msg)

    def search_SENTON(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("SENTON", query, id, msg)

    def search_SENTSINCE(self, query: list[Any], id: int, msg: Any) -> bool:
        return self._dated("SENTSINCE", query, id, msg)

    def _searched(self, tag: bytes, found: list[int]) -> None:
        self.sendUntaggedResponse(b" ".join([b"SEARCH", *(b"%d" % n for n in found)]))
        self.sendPositiveResponse(tag, b"SEARCH completed")

    def _search_failed(self, tag: bytes, failure: Any) -> None:
        if failure.check(imap4.IllegalQueryError, imap4.IllegalIdentifierError, IndexError, ValueError, TypeError):
            return self.sendBadResponse(tag, b"Invalid search criteria")
        self._answer_failure(tag, failure)


__all__ = ["IMAPSearchMixin", "find_words", "search_needed", "search_words"]
