# -*- test-case-name: tests.test_imap -*-
"""
FETCH over twisted's own code, with the disk reads moved off the reactor:
before twisted formats a message, what the request needs is read in the I/O
pool (L{content_needed}: nothing, the header, or the header and the MIME
index, L{gomail.mailaccess.imapsections}) and dropped after it. A whole
message (C{BODY[]}, C{RFC822}) of one block is read ahead with the FETCH's
next ones, several to an I/O-pool job (L{gomail.mailaccess.imapreadahead});
a larger one is sent from its file block by block, read in the I/O pool
and paced by the transport (a streaming producer), never held whole; so are
sections (C{BODY[1]}, C{TEXT}, C{MIME}, partial ranges:
byte ranges of the file the index gives), sent as stored (twisted's header
formatting re-folds and drops the blank line), and BODYSTRUCTURE is built
from the index. FETCH of a body section without C{.PEEK} sets C{\\Seen}
(RFC 3501 6.4.5). SEARCH: L{gomail.mailaccess.imapsearch}.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.mail import imap4
from zope.interface import implementer

from gomail.mailaccess import imapsections
from gomail.mailaccess.imapreadahead import FirstBlock, open_first
from gomail.mailaccess.imapsearch import IMAPSearchMixin
from gomail.mailaccess.mimeindex import EntityPart

#: Bytes of a message read from disk at a time.
BLOCK = 64 * 1024
#: Messages of one FETCH answered in one go (read ahead) before the reactor gets a turn.
MAX_IN_A_ROW = 64


def _whole(part: Any) -> bool:
    return (part.type == "rfc822" or (part.type == "body" and part.empty and not part.part
                                      and part.partialBegin is None))


def _from_file(part: Any) -> bool:
    # A whole message or a range of it: no index needed to find it.
    return part.type == "rfc822" or (part.type == "body" and part.empty and not part.part)


def content_needed(query: list[Any]) -> str | None:
    """What FETCH must read of a message first: None, C{"header"} or C{"all"} (its header and MIME index)."""
    need = None
    for part in query:
        if part.type in ("envelope", "rfc822header") or (part.type == "body" and part.header and not part.part):
            need = need or "header"
        elif part.type in ("bodystructure", "rfc822text") or (part.type == "body" and not _from_file(part)):
            return "all"
    return need


def sets_seen(query: list[Any]) -> bool:
    """Whether the request sets \\Seen (a body section without .PEEK, RFC822, RFC822.TEXT)."""
    return any(p.type in ("rfc822", "rfc822text") or (p.type == "body" and not p.peek and
                                                         (p.empty or p.header or p.text or p.mime))
               for p in query)


def _label(part: Any) -> bytes:
    plain = copy.copy(part)
    plain.partialBegin = plain.partialLength = None
    label = plain.getBytes()
    return label + (b"<%d>" % part.partialBegin if part.partialBegin is not None else b"")


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


class IMAPFetchMixin(IMAPSearchMixin):
    """FETCH's message output, and SEARCH (uses the session's C{mbox}, C{transport}...)."""

    mbox: Any
    transport: Any
    closed: bool
    log: Any

    #: Messages answered one after another without the reactor getting a turn, at most.
    _in_a_row = 0

    def spewMessage(self, id: int, msg: Any, query: list[Any], uid: Any) -> Deferred:
        if content_needed(query) is None and not sets_seen(query):
            # Nothing to read or change first (FLAGS, UID, BODY.PEEK[]...): twisted's own, without
            # a coroutine of ours around it (a whole message is read ahead by spew_body).
            d = imap4.IMAP4Server.spewMessage(self, id, msg, query, uid)  # type: ignore[arg-type]
        else:
            d = Deferred.fromCoroutine(self._spew_message(id, msg, query, uid))
        if not d.called:
            self._in_a_row = 0
            return d
        # Done at once (read ahead): twisted's __cbFetch then starts the next message inside
        # this call, so a run of them nests ~5 frames each; a reactor turn now and then ends
        # the nesting (and lets the transport send what the run wrote).
        self._in_a_row += 1
        if self._in_a_row < MAX_IN_A_ROW:
            return d
        self._in_a_row = 0
        clock = self.mbox.account.clock

        def later(result: Any) -> Deferred:
            turn: Deferred = Deferred()
            clock.callLater(0, turn.callback, result)
            return turn

        return d.addCallback(later)

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
        if _whole(part) and (msg.content is None or msg.content.header_only):
            _w(part.getBytes() + b" ")  # a whole message has no <partial> to leave out of its label
            return self._whole_message(msg, _w, _f)
        if not (part.header or part.text or part.mime or part.empty):
            _w(b"BODY " + imap4.collapseNestedLists([imap4.getBodyStructure(EntityPart(msg.index.root))]))
            return None
        section = imapsections.partial(part, imapsections.locate(msg, part))
        return self._send_section(_label(part), msg, section, _w, _f)

    def spew_bodystructure(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        # Of the content (whose sizes are of bodies), not of the message (whose size is RFC822.SIZE).
        structure = imap4.getBodyStructure(EntityPart(msg.index.root), True)
        _w(b"BODYSTRUCTURE " + imap4.collapseNestedLists([structure]))

    def spew_rfc822(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        _w(b"RFC822 ")
        return self._whole_message(msg, _w, _f)

    def _whole_message(self, msg: Any, _w: Any, _f: Any) -> Deferred | None:
        """
        A whole message as a literal: written at once when it was read ahead
        (the FETCH goes on without a Deferred unless the transport's buffer
        is full), else streamed from its file (L{_stream}).
        """
        ahead = self.mbox.read_ahead
        first = ahead.ready(msg.entry) if ahead is not None and not self.closed else None
        if first is None:
            return Deferred.fromCoroutine(self._stream(msg, _w, _f))
        pacer = Pacer()
        # Registered before the write, so that a full buffer pauses it: the next message waits.
        self.transport.registerProducer(pacer, True)
        _w(b"{%d}\r\n" % first.size + first.first)
        _f()
        if pacer.paused:
            return Deferred.fromCoroutine(self._drained(pacer))
        self._unregister()
        return None

    async def _drained(self, pacer: Pacer) -> None:
        try:
            await pacer.wait()
        finally:
            self._unregister()

    def _unregister(self) -> None:
        # Not "transport.producer is pacer": a TLS transport holds it wrapped, so that test
        # never unregistered it there, and the next literal's registration raised.
        if self.transport.producer is not None:
            self.transport.unregisterProducer()

    def spew_rfc822header(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        data = msg.content.header_bytes
        _w(b"RFC822.HEADER {%d}\r\n" % len(data) + data)

    def spew_rfc822text(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        root = msg.index.root
        return self._send_section(b"RFC822.TEXT", msg, (root.body_start, root.body_end), _w, _f)

    def _send_section(self, label: bytes, msg: Any, section: bytes | imapsections.Range, _w: Any, _f: Any) -> Any:
        """A section as a literal: bytes, or a range of the message cut from its bytes or streamed from its file."""
        if isinstance(section, tuple) and msg.data is not None:
            section = msg.data[section[0]:section[1]]
        if isinstance(section, bytes):
            _w(label + b" {%d}\r\n" % len(section) + section)
            return None
        _w(label + b" ")
        return Deferred.fromCoroutine(self._stream_range(msg, section[0], section[1], _w, _f))

    async def _stream_range(self, msg: Any, start: int, end: int | None, _w: Any, _f: Any) -> None:
        """
        Octets C{[start, end)} of a message's file (end None: to its end) as a
        literal, read a block at a time in the I/O pool as the client takes them.
        """
        run = self.mbox.account.run
        if self.closed:
            return  # the client is gone: nothing more is read for it
        try:
            file, start, end, block = await run(imapsections.open_range, self.mbox.path, msg.entry, start, end)
        except OSError as e:  # gone meanwhile (as in _stream): NIL, the session goes on
            self.log.info("IMAP FETCH: message {unique} unreadable: {error}", unique=msg.entry.unique,
                          error=type(e).__name__)
            _w(b"NIL")
            return
        pacer = Pacer()
        registered = False
        try:
            self.transport.registerProducer(pacer, True)
            registered = True
            _w(b"{%d}\r\n" % (end - start) + block)
            _f()
            remaining = end - start - len(block)
            while remaining > 0 and not self.closed:
                await pacer.wait()
                block = b"" if pacer.stopped else await run(file.read, min(BLOCK, remaining))
                if not block:  # the file is shorter than it was: the literal cannot be completed
                    self.transport.abortConnection()
                    self.closed = True
                    return
                self.transport.write(block)
                remaining -= len(block)
            await pacer.wait()
        finally:
            if file is not None:
                file.close()
            if registered:
                self._unregister()

    async def _first_block(self, entry: Any) -> FirstBlock:
        """A message's first block: read ahead with the FETCH's next messages, or now (one I/O-pool job)."""
        ahead = self.mbox.read_ahead
        if ahead is not None:
            read = await ahead.take(entry)
            if read is not None:
                return read
        return await self.mbox.account.run(open_first, self.mbox.path, entry, BLOCK)  # type: ignore[no-any-return]

    async def _stream(self, msg: Any, _w: Any, _f: Any) -> None:
        """A whole message as a literal, read from its file in blocks in the I/O pool, as fast as the client takes it."""
        run = self.mbox.account.run
        if self.closed:
            return  # the client is gone: nothing more is read for it
        try:
            first = await self._first_block(msg.entry)
        except OSError as e:
            # Gone since the FETCH began (another session's EXPUNGE, a POP3 DELE), or no
            # regular file: NIL for this message, the session goes on (an error here dropped it).
            self.log.info("IMAP FETCH: message {unique} unreadable: {error}", unique=msg.entry.unique,
                          error=type(e).__name__)
            _w(b"NIL")
            return
        file: Any = first.file  # open over the rest of a message longer than a block, else None
        size, block = first.size, first.first
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
            if registered:
                self._unregister()

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        def sendPositiveResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendNegativeResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendBadResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendUntaggedResponse(self, message: bytes, isAsync: Any = None) -> None: ...

        def _answer_failure(self, tag: Any, failure: Any = None) -> None: ...


__all__ = ["IMAPFetchMixin", "content_needed", "sets_seen"]
