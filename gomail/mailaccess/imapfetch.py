# -*- test-case-name: tests.test_imap,tests.test_imap_readahead,tests.test_imap_sections_fetch -*-
"""
FETCH over twisted's own code, with the disk reads moved off the reactor:
before twisted formats a message, what the request needs is read in the I/O
pool (L{content_needed}: nothing, the header, or the header and the MIME
index, L{gomail.mailaccess.imapsections}) and dropped after it. A whole
message (C{BODY[]}, C{RFC822}) of one block is read ahead with the FETCH's
next ones, several to an I/O-pool job (L{gomail.mailaccess.imapreadahead}),
or comes with its index when that read it whole; a larger one is sent from
its file block by block, read in the I/O pool and paced by the transport
(a streaming producer), never held whole; so are sections (C{BODY[1]},
C{TEXT}, C{MIME}, partial ranges: byte ranges of the file the index gives),
sent as stored (twisted's header formatting re-folds and drops the blank
line), and BODYSTRUCTURE is built from the index
(L{gomail.mailaccess.imapstructure}). FETCH of a body section without
C{.PEEK} sets C{\\Seen} (RFC 3501 6.4.5). SEARCH: L{gomail.mailaccess.imapsearch}.

A FETCH works on the folder and read-ahead its messages came with, never
on the session's C{mbox} (None once the client is gone), and ends as soon
as the session is closed (the client gone, or C{BYE} sent): nothing more is
read for it, and no response is written in part
(L{gomail.mailaccess.imapoutput.Output}).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4

from gomail.mailaccess import imapsections, imapstructure
from gomail.mailaccess.imapoutput import Output, Pacer
from gomail.mailaccess.imapsearch import IMAPSearchMixin
from gomail.mailaccess.imapsections import FirstBlock
from gomail.mailaccess.imapstore import BLOCK

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


def structures_wanted(query: list[Any]) -> list[bool]:
    """The structures a FETCH asks for: True for BODYSTRUCTURE, False for BODY (each once)."""
    wanted = []
    for part in query:
        if part.type == "bodystructure":
            wanted.append(True)
        elif part.type == "body" and not _whole(part) and not (part.header or part.text or part.mime or part.empty):
            wanted.append(False)
    return sorted(set(wanted))


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


class IMAPFetchMixin(IMAPSearchMixin):
    """FETCH's message output, and SEARCH (uses the session's C{transport}, C{closed}...)."""

    transport: Any
    closed: bool
    log: Any
    _scheduler: Any
    server: Any
    settings: Any
    client_host: str

    #: Messages answered one after another without the reactor getting a turn, at most.
    _in_a_row = 0
    #: Whether a structure twisted could not encode was logged (once a session).
    _structure_failed = False

    def spewMessage(self, id: int, msg: Any, query: list[Any], uid: Any) -> Deferred:
        """
        One message's FETCH response (twisted's C{__cbFetch} asks for each in
        turn). Once the session is closed (before or while this message is
        answered) the FETCH ends: the Deferred never fires, so twisted asks
        for no more messages and does not re-arm the idle timer of a session
        that is gone (it did, 30 minutes, once it had run through the rest).
        """
        if self.closed:
            return Deferred()
        if content_needed(query) is None and not sets_seen(query):
            # Nothing to read or change first (FLAGS, UID, BODY.PEEK[]...): written now (a whole
            # message read ahead, or streamed by spew_body), without the coroutine that reads first.
            d = self._write_message(id, msg, query, uid)
        else:
            d = Deferred.fromCoroutine(self._spew_message(id, msg, query, uid))
        if not d.called:
            self._in_a_row = 0
            return d.addCallback(self._unless_closed)
        if self.closed:
            return Deferred()
        # Done at once (read ahead): twisted's __cbFetch then starts the next message inside
        # this call, so a run of them nests ~5 frames each; a reactor turn now and then ends
        # the nesting (and lets the transport send what the run wrote).
        self._in_a_row += 1
        if self._in_a_row < MAX_IN_A_ROW:
            return d
        self._in_a_row = 0
        clock = msg.folder.account.clock

        def later(result: Any) -> Deferred:
            turn: Deferred = Deferred()
            clock.callLater(0, turn.callback, result)
            return turn

        return d.addCallback(later)

    def _unless_closed(self, result: Any) -> Any:
        return Deferred() if self.closed else result

    async def _spew_message(self, id: int, msg: Any, query: list[Any], uid: Any) -> None:
        folder = msg.folder
        try:
            need = content_needed(query)
            if need:
                await folder.content(msg, header_only=need == "header")
            if need == "all":
                wanted = [e for e in structures_wanted(query) if e not in msg.index.structures]
                if wanted:
                    made = await folder.account.run(imapstructure.encode_structures, msg.index.root, wanted)
                    msg.index.structures.update(made)  # kept with the index: asked again, made once
            if self.closed:
                return  # the client is gone: nothing is sent, so \Seen is not set either
            if sets_seen(query) and folder.isWriteable() and "\\Seen" not in msg.entry.flags:
                await folder.set_flags([(msg.entry, msg.entry.flags | {"\\Seen"})])
                if not any(p.type == "flags" for p in query):
                    query = [*query, imap4._FetchParser.Flags()]
        except FileNotFoundError:
            return  # removed meanwhile (another session's EXPUNGE): reported at the next NOOP
        try:
            if not self.closed:
                await self._write_message(id, msg, query, uid)
        finally:
            msg.load(None)

    def _write_message(self, id: int, msg: Any, query: list[Any], uid: Any) -> Deferred:
        """twisted's C{spewMessage}, its response written through an L{Output}."""
        out = Output(self)

        def steps() -> Any:
            out.write(b"* %d FETCH (" % id)
            seen_uid = False
            for n, part in enumerate(query):
                if n:
                    out.write(b" ")
                seen_uid = seen_uid or part.type == "uid"
                if part.type == "body":
                    yield self.spew_body(part, id, msg, out.write, out.flush)
                else:
                    yield getattr(self, "spew_" + part.type)(id, msg, out.write, out.flush)
            if uid and not seen_uid:
                out.write(b" ")
                yield self.spew_uid(id, msg, out.write, out.flush)
            out.write(b")\r\n")
            out.flush()

        return self._scheduler(steps())  # type: ignore[no-any-return]

    def spew_body(self, part: Any, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        """C{BODY[...]}: a whole message, a section (bytes or a range of the file), or BODY's structure."""
        if _whole(part):
            _w(part.getBytes() + b" ")  # a whole message has no <partial> to leave out of its label
            return self._whole_message(msg, _w, _f)
        if not (part.header or part.text or part.mime or part.empty):
            _w(b"BODY " + self._structure(msg, False))
            return None
        section = imapsections.partial(part, imapsections.locate(msg, part))
        return self._send_section(_label(part), msg, section, _w, _f)

    def spew_bodystructure(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> None:
        """BODYSTRUCTURE, from the message's index."""
        # Of the content (whose sizes are of bodies), not of the message (whose size is RFC822.SIZE).
        _w(b"BODYSTRUCTURE " + self._structure(msg, True))

    def _structure(self, msg: Any, extended: bool) -> bytes:
        """BODYSTRUCTURE or BODY from the index; never fails (a plain text structure when twisted's code does)."""
        made = msg.index.structures.get(extended, b"")
        try:
            if isinstance(made, Exception):
                raise made  # from the I/O pool (imapstructure.encode_structures): logged here
            return made or imapstructure.body_structure(msg.index.root, extended)
        except Exception:  # noqa: BLE001 - a message must not end the session, whatever twisted makes of it
            if not self._structure_failed:
                self._structure_failed = True
                self.log.failure("IMAP FETCH: the structure of message {unique} could not be encoded; "
                                 "answered as one text part (logged once a session)", unique=msg.entry.unique)
            return imapstructure.plain_structure(msg.index.root)

    def spew_rfc822(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        """RFC822: the whole message."""
        _w(b"RFC822 ")
        return self._whole_message(msg, _w, _f)

    def _whole_message(self, msg: Any, _w: Any, _f: Any) -> Deferred | None:
        """
        A whole message as a literal: written at once when its bytes are
        here (read with its index, or read ahead; the FETCH goes on without a
        Deferred unless the transport's buffer is full), else streamed from its file.
        """
        if msg.data is not None:
            return self._write_literal(msg.data, _w, _f)
        ahead = msg.read_ahead
        first = ahead.ready(msg.entry) if ahead is not None and not self.closed else None
        if first is None:
            return Deferred.fromCoroutine(self._stream(msg, 0, None, _w, _f))
        return self._write_literal(first.first, _w, _f)

    def _write_literal(self, data: bytes, _w: Any, _f: Any) -> Deferred | None:
        if self.closed:
            return None
        pacer = self._pacer()
        # Registered before the write, so that a full buffer pauses it: the next message waits.
        self.transport.registerProducer(pacer, True)
        _w(b"{%d}\r\n" % len(data) + data)
        _f()
        if pacer.paused:
            return Deferred.fromCoroutine(self._drained(pacer))
        self._unregister()
        return None

    def _pacer(self) -> Pacer:
        """A literal's producer; a client that takes nothing for imap.idleTimeout seconds is cut off."""
        return Pacer(self.server.clock, self.settings.idleTimeout, self._write_stalled)

    def _write_stalled(self) -> None:
        if not self.closed:
            self.log.info("IMAP session with {client} took no output for {seconds} s during a FETCH: aborted",
                          client=self.client_host, seconds=self.settings.idleTimeout)
            self.closed = True
            self.transport.abortConnection()

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

    def spew_rfc822header(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        """RFC822.HEADER: the header as stored (paced: up to 1 MiB a message)."""
        _w(b"RFC822.HEADER ")
        return self._write_literal(msg.content.header_bytes, _w, _f)

    def spew_rfc822text(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any:
        """RFC822.TEXT: the body, as stored."""
        root = msg.index.root
        return self._send_section(b"RFC822.TEXT", msg, (root.body_start, root.body_end), _w, _f)

    def _send_section(self, label: bytes, msg: Any, section: bytes | imapsections.Range, _w: Any, _f: Any) -> Any:
        """A section as a literal: bytes, or a range of the message cut from its bytes or streamed from its file."""
        if isinstance(section, tuple) and msg.data is not None:
            section = msg.data[section[0]:section[1]]
        _w(label + b" ")
        if isinstance(section, bytes):
            # Paced like a streamed one: FETCH 1:* of 250 KiB sections to a client that did
            # not read grew the server by 200 MB when each was simply written.
            return self._write_literal(section, _w, _f)
        return Deferred.fromCoroutine(self._stream(msg, section[0], section[1], _w, _f))

    async def _open(self, msg: Any, start: int, end: int | None) -> FirstBlock:
        """Octets C{[start, end)} of a message: read ahead (a whole message), or opened now (one I/O-pool job)."""
        ahead = msg.read_ahead
        if start == 0 and end is None and ahead is not None:
            read = await ahead.take(msg.entry)
            if read is not None:
                return read
        folder = msg.folder
        return await folder.account.run(imapsections.open_range, folder.path, msg.entry,  # type: ignore[no-any-return]
                                        start, end)

    async def _stream(self, msg: Any, start: int, end: int | None, _w: Any, _f: Any) -> None:
        """
        Octets C{[start, end)} of a message's file (end None: to its end) as a
        literal, read a block at a time in the I/O pool as fast as the client
        takes them. Nothing more is read once the session is closed.
        """
        if self.closed:
            return
        try:
            opened = await self._open(msg, start, end)
        except OSError as e:
            # Gone since the FETCH began (another session's EXPUNGE, a POP3 DELE), or no
            # regular file: NIL for this message, the session goes on (an error here dropped it).
            self.log.info("IMAP FETCH: message {unique} unreadable: {error}", unique=msg.entry.unique,
                          error=type(e).__name__)
            _w(b"NIL")
            return
        file: Any = opened.file  # open over the rest of a range longer than a block, else None
        pacer = self._pacer()
        registered = False
        try:
            if self.closed:
                return
            # Registered before the first write, so a full buffer pauses it; the next block
            # (or the next message) waits until the client reads.
            self.transport.registerProducer(pacer, True)
            registered = True
            _w(b"{%d}\r\n" % opened.size + opened.first)
            _f()
            remaining = opened.size - len(opened.first)
            run = msg.folder.account.run
            while remaining > 0 and not self.closed:
                await pacer.wait()
                block = b"" if pacer.stopped else await run(file.read, min(BLOCK, remaining))
                if self.closed:
                    return
                if not block:  # the file is shorter than it was (it never changes): the literal cannot be completed
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

    if TYPE_CHECKING:  # provided by the session (L{gomail.mailaccess.imap.GomailIMAP4})
        def spew_uid(self, id: int, msg: Any, _w: Any = None, _f: Any = None) -> Any: ...


__all__ = ["MAX_IN_A_ROW", "IMAPFetchMixin", "content_needed", "sets_seen"]
