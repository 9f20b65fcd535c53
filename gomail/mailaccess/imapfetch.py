# -*- test-case-name: tests.test_imap -*-
"""
FETCH and SEARCH over twisted's own code, with the disk reads moved off the
reactor: before twisted formats a message, the bytes the request needs are
read in the I/O pool (L{content_needed}: nothing, the header, or the whole
message) and dropped after it. A whole message (C{BODY[]}, C{RFC822}) is
sent from its file block by block, read in the I/O pool and paced by the
transport (a streaming producer), never held whole; sections are sent as
stored (twisted's header formatting re-folds and drops the blank line).
FETCH of a body section without C{.PEEK} sets C{\\Seen} (RFC 3501 6.4.5).

SEARCH (twisted's own matching, C{_searchFilter}) reads each message only
when the search keys look at its header or text, one at a time.
"""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.mail import imap4
from zope.interface import implementer

#: Bytes of a message read from disk at a time.
BLOCK = 64 * 1024
_HEADER_KEYS = {b"FROM", b"TO", b"CC", b"BCC", b"SUBJECT", b"HEADER", b"SENTBEFORE", b"SENTON", b"SENTSINCE"}
_BODY_KEYS = {b"BODY", b"TEXT"}


def _whole(part: Any) -> bool:
    return (part.type == "rfc822" or (part.type == "body" and part.empty and not part.part
                                      and part.partialBegin is None))


def content_needed(query: list[Any]) -> str | None:
    """What FETCH must read of a message first: None, C{"header"} or C{"all"}."""
    need = None
    for part in query:
        if part.type in ("envelope", "rfc822header") or (part.type == "body" and part.header and not part.part):
            need = need or "header"
        elif part.type in ("bodystructure", "rfc822text") or (part.type == "body" and not _whole(part)):
            return "all"
    return need


def sets_seen(query: list[Any]) -> bool:
    """Whether the request sets \\Seen (a body section without .PEEK, RFC822, RFC822.TEXT)."""
    return any(p.type in ("rfc822", "rfc822text") or (p.type == "body" and not p.peek and
                                                         (p.empty or p.header or p.text or p.mime))
               for p in query)


def search_needed(query: list[Any]) -> str | None:
    """What SEARCH must read of each message: None, C{"header"} or C{"all"}."""
    need = None
    for term in query:
        if isinstance(term, list):
            sub = search_needed(term)
            if sub == "all":
                return "all"
            need = need or sub
        elif isinstance(term, bytes):
            if term.upper() in _BODY_KEYS:
                return "all"
            if term.upper() in _HEADER_KEYS:
                need = "header"
    return need


def section_bytes(top: Any, part: Any) -> bytes:
    """The bytes of a C{BODY[...]} section of a message (L{gomail.mailaccess.imapmessage.RawPart}), as stored."""
    entity = top
    try:
        for p in part.part:
            if entity.isMultipart():
                entity = entity.getSubPart(p)
            elif p != 0:  # a single-part entity has a part 1 only: itself
                return b""
        if part.mime:
            return entity.header_bytes
        if part.header or part.text:
            if part.part:  # HEADER and TEXT of a part: of the message it encapsulates
                if entity.parsed.get_content_type() != "message/rfc822":
                    return b""
                entity = entity.getSubPart(0)
            if part.header:
                return entity.header_section(part.header.negate, tuple(part.header.fields or ()))
            return entity.body
        return entity.body if part.part else entity.whole()
    except IndexError:
        return b""


def _text(term: Any) -> str:
    return term.decode("utf-8", "replace") if isinstance(term, bytes) else str(term)


def _bytes(term: Any) -> bytes:
    return term if isinstance(term, bytes) else str(term).encode("utf-8")


def _label(part: Any) -> bytes:
    plain = copy.copy(part)
    plain.partialBegin = plain.partialLength = None
    label = plain.getBytes()
    return label + (b"<%d>" % part.partialBegin if part.partialBegin is not None else b"")


def _partial(part: Any, data: bytes) -> bytes:
    if part.partialBegin is None:
        return data
    return data[part.partialBegin:part.partialBegin + part.partialLength]


@implementer(IPushProducer)
class Pacer:
    """Registered on the transport while a message is streamed: C{wait()} fires once its buffer has room."""

    def __init__(self) -> None:
        self.paused = self.stopped = False
        self._waiters: list[Deferred] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def wait(self) -> None:
        while self.paused and not self.stopped:
            waiter: Deferred = Deferred()
            self._waiters.append(waiter)
            await waiter


def _open_first(folder: str, entry: Any) -> tuple[Any, int, bytes]:
    """
    (blocking) Find, open and start reading a message's file in one I/O-pool
    job: (the file, or None when it was read whole; its size; the first
    block). A message of one block costs one thread hand-off, not three.
    """
    from gomail.mailaccess.imapstore import message_path

    f = open(message_path(folder, entry), "rb")  # noqa: SIM115 - closed here or by the caller
    try:
        size = os.fstat(f.fileno()).st_size
        first = f.read(min(BLOCK, size))
    except BaseException:
        f.close()
        raise
    if len(first) >= size:
        f.close()
        return None, size, first
    return f, size, first


class IMAPFetchMixin:
    """FETCH's message output and SEARCH (uses the session's C{mbox}, C{transport}...)."""

    mbox: Any
    transport: Any
    closed: bool
    log: Any

    def spewMessage(self, id: int, msg: Any, query: list[Any], uid: Any) -> Deferred:
        return Deferred.fromCoroutine(self._spew_message(id, msg, query, uid))

    async def _spew_message(self, id: int, msg: Any, query: list[Any], uid: Any) -> None:
        mbox = self.mbox
        try:
            need = content_needed(query)
            if need:
                await mbox.content(msg, header_only=need == "header")
            if sets_seen(query) and mbox.isWriteable() and "\\Seen" not in msg.entry.flags:
                await mbox.set_flags([(msg.entry, msg.entry.flags | {"\\Seen"})])
                if not any(p.type == "flags" for p in query):
                    query = [*query, imap4._FetchParser.Flags()]
        except FileNotFoundError:
            return  # removed meanwhile (another session's EXPUNGE): reported at the next NOOP
        try:
            await imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)  # type: ignore[arg-type]
        finally:
            msg.load(None)

    def spew_body(self, part: Any, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        if msg.content is None and _whole(part):
            _w(_label(part) + b" ")
            return Deferred.fromCoroutine(self._stream(msg, _w, _f))
        if not (part.header or part.text or part.mime or part.empty):
            _w(b"BODY " + imap4.collapseNestedLists([imap4.getBodyStructure(msg.content)]))
            return None
        data = _partial(part, section_bytes(msg.content, part))
        _w(_label(part) + b" {%d}\r\n" % len(data) + data)
        return None

    def spew_bodystructure(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        # Of the content (whose sizes are of bodies), not of the message (whose size is RFC822.SIZE).
        _w(b"BODYSTRUCTURE " + imap4.collapseNestedLists([imap4.getBodyStructure(msg.content, True)]))

    def spew_rfc822(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        _w(b"RFC822 ")
        return Deferred.fromCoroutine(self._stream(msg, _w, _f))

    def spew_rfc822header(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        data = msg.content.header_bytes
        _w(b"RFC822.HEADER {%d}\r\n" % len(data) + data)

    def spew_rfc822text(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        data = msg.content.body
        _w(b"RFC822.TEXT {%d}\r\n" % len(data) + data)

    async def _stream(self, msg: Any, _w: Any, _f: Any) -> None:
        """A whole message as a literal, read from its file in blocks in the I/O pool, as fast as the client takes it."""
        run = self.mbox.account.run
        try:
            file, size, block = await run(_open_first, self.mbox.path, msg.entry)
        except OSError as e:
            # Gone since the FETCH began (another session's EXPUNGE, a POP3 DELE), or no
            # regular file: NIL for this message, the session goes on (an error here dropped it).
            self.log.info("IMAP FETCH: message {unique} unreadable: {error}", unique=msg.entry.unique,
                          error=type(e).__name__)
            _w(b"NIL")
            return
        pacer = Pacer()
        registered = False
        try:
            # Registered before the first write, so a full buffer pauses it; the next block
            # (or, for a message read whole, the next message) waits until the client reads.
            self.transport.registerProducer(pacer, True)
            registered = True
            _w(b"{%d}\r\n" % size + (block if file is None else b""))
            _f()
            remaining = 0 if file is None else size
            while remaining > 0 and not self.closed:
                await pacer.wait()
                if not block or pacer.stopped:
                    # The file is shorter than it was (it never changes): the literal cannot be completed.
                    self.transport.abortConnection()
                    self.closed = True
                    return
                self.transport.write(block)
                remaining -= len(block)
                if remaining > 0:
                    block = await run(file.read, min(BLOCK, remaining))
            await pacer.wait()
        finally:
            if file is not None:
                file.close()
            # Not "transport.producer is pacer": a TLS transport holds it wrapped, so that test
            # never unregistered it there, and the next literal's registration raised.
            if registered and self.transport.producer is not None:
                self.transport.unregisterProducer()

    # -- SEARCH -----------------------------------------------------------------------------

    def do_SEARCH(self, tag: bytes, charset: Any, query: Any, uid: int = 0) -> None:
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            return self.sendNegativeResponse(tag, b"[BADCHARSET (US-ASCII UTF-8)] Unsupported charset")
        d = Deferred.fromCoroutine(self._search(query, bool(uid)))
        d.addCallbacks(lambda found: self._searched(tag, found), lambda failure: self._search_failed(tag, failure))

    select_SEARCH: Any = (do_SEARCH, imap4.IMAP4Server.opt_charset, imap4.IMAP4Server.arg_searchkeys)

    async def _search(self, query: list[Any], uid: bool) -> list[int]:
        mbox = self.mbox
        need = search_needed(query)
        entries = list(mbox.entries)
        if not entries:
            return []
        last_seq, last_uid = len(entries), entries[-1].uid
        found = []
        for seq in range(1, len(entries) + 1):
            msg = mbox.message(seq)
            if need:
                try:
                    await mbox.content(msg, header_only=need == "header")
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
        return _bytes(query.pop(0)).lower() in msg.content.body.lower()

    def search_TEXT(self, query: list[Any], id: int, msg: Any) -> bool:
        return _bytes(query.pop(0)).lower() in msg.content.whole().lower()

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

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        def sendPositiveResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendNegativeResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendBadResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendUntaggedResponse(self, message: bytes, isAsync: Any = None) -> None: ...

        def _answer_failure(self, tag: Any, failure: Any = None) -> None: ...


__all__ = ["IMAPFetchMixin", "content_needed", "search_needed", "section_bytes", "sets_seen"]
