# -*- test-case-name: tests.test_flow -*-
"""
Output-bounded reading (issue 14 item 1): a connection whose unsent output is
over a bound stops being read, and one that stays over it past a timeout is
cut off.

A client that pipelines requests and never reads the answers makes a server
buffer every answer: memory grows as fast as the client can send. Twisted's
transports already know how much they hold unsent: a transport with a
I{streaming producer} registered calls its C{pauseProducing()} once its write
buffer is over C{bufferSize} (64 KiB for TCP) and C{resumeProducing()} once it
has drained. L{OutputBound} is that producer. On pause it stops the
connection being read and tells the protocol to stop working through input it
has already buffered (the two together bound what one connection can cost),
and starts a timer on the injected clock; on resume it cancels the timer, reads
again and tells the protocol to go on. When the timer expires the connection is
aborted (C{abortConnection}: the unsent output is dropped, not waited for).

Contract for a protocol using it::

    def connectionMade(self):
        self.flow = OutputBound(clock, timeout, on_paused=..., on_resumed=...)
        self.flow.attach(self.transport)

    def connectionLost(self, reason):
        self.flow.detach()

  - C{on_paused()} / C{on_resumed()} are called once per pause and once per
    resume (the transport's repeated pauses while full are folded into one).
    C{on_paused} must stop reading and stop processing buffered input;
    C{on_resumed} must read again and go on with buffered input. Without them,
    L{OutputBound} pauses and resumes the transport's reading itself (enough
    for a protocol that parses only inside C{dataReceived}).
  - A protocol that also pauses reading for reasons of its own must keep one
    set of reasons, so that one reason's end does not resume reading another
    still holds: pass callbacks that add and remove an C{"output"} reason
    (gomail.smtp.framing's C{_pause}/C{_resume}, or a L{ReadPauses}).
  - Call L{OutputBound.detach} before C{loseConnection()}. A transport with a
    registered producer waits for it: the TLS layer does not start its
    shutdown, and a TCP transport whose producer is paused resumes it instead
    of closing once drained.
  - A transport takes one producer. A protocol that is already its
    transport's producer (twisted.web's C{HTTPChannel}) attaches with
    C{register=False} and passes its own C{pauseProducing}/C{resumeProducing}
    calls on to L{OutputBound} (L{gomail.web.http.BoundedHTTPChannel}).

TLS. Both of Twisted's TLS transports take a producer: the
C{TLSMemoryBIOFactory} wrapper (implicit TLS listeners) and a TCP transport
after C{startTLS} (STARTTLS). Between them and L{OutputBound} sits the TLS
layer's C{_ProducerMembrane}, which passes the socket's pauses on; the bound
is then on the encrypted bytes waiting for the socket, plus what Twisted's TLS
layer aggregates before encrypting (C{BufferingTLSTransport}: up to 64000
bytes, flushed at the next reactor turn).

  - At C{startTLS} Twisted moves a registered producer into the new TLS layer
    itself (C{twisted.internet._newtls.startTLS} unregisters it and registers
    it again through the TLS protocol): L{attach} before STARTTLS stays in
    force after it. But a producer paused at that moment stays paused: the new
    layer's membrane starts unpaused and ignores the socket's resume. Call
    L{OutputBound.tls_started} right after C{startTLS}: it ends such a pause
    (the next write over the bound pauses again).
  - The TLS layer also pauses its producer when the application writes before
    the handshake is done (OpenSSL wants to read first: C{WantReadError}) and
    resumes it once the handshake lets the write through. Stopping the socket
    then would stop the handshake itself, so L{OutputBound} does not stop
    reading (nor call C{on_paused}) for a pause while the TLS handshake is
    still under way; the handshake's own end resumes the layer's producer,
    which L{OutputBound} then ignores as it never paused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["OutputBound", "ReadPauses"]


class ReadPauses:
    """
    The reasons a connection is not read just now: its transport's reading is
    paused while any reason is held, resumed when the last one is released.

    @param transport: an L{IPushProducer} transport (a TCP or TLS transport).
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._reasons: set[str] = set()

    @property
    def reasons(self) -> frozenset[str]:
        """The reasons held now."""
        return frozenset(self._reasons)

    def __contains__(self, reason: str) -> bool:
        return reason in self._reasons

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def pause(self, reason: str) -> None:
        """Hold C{reason}: reading stops if it was going on."""
        if not self._reasons:
            self.transport.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> bool:
        """Release C{reason}; return whether reading goes on now (no reason left)."""
        if reason not in self._reasons:
            return not self._reasons
        self._reasons.discard(reason)
        if not self._reasons:
            self.transport.resumeProducing()
            return True
        return False


@implementer(IPushProducer)
class OutputBound:
    """
    The streaming producer that bounds one connection's unsent output (see the
    module docstring for the contract).

    @param clock: the L{IReactorTime} the timeout runs on.
    @param timeout: seconds a connection may stay over the bound before it is
        aborted; None: never aborted for it (still not read while over).
    @param on_paused: called when the output goes over the bound (see above);
        None: pause the transport's reading.
    @param on_resumed: called when the output has drained; None: resume the
        transport's reading.
    @param on_timeout: called instead of C{transport.abortConnection()} when
        the timeout expires (after the abort is logged).
    @param name: what the log calls the connection's listener.
    """

    log = Logger()

    def __init__(self, clock: Any, timeout: float | None,
                 on_paused: Callable[[], None] | None = None, on_resumed: Callable[[], None] | None = None,
                 on_timeout: Callable[[], None] | None = None, name: str = "connection") -> None:
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (or None)")
        self.clock, self.timeout, self.name = clock, timeout, name
        self._on_paused, self._on_resumed, self._on_timeout = on_paused, on_resumed, on_timeout
        self.transport: Any = None
        #: Whether the output is over the bound (and the connection not read) now.
        self.paused = False
        #: Whether the timeout has aborted the connection.
        self.timed_out = False
        self._timer: Any = None  # an IDelayedCall while paused
        self._registered = False

    # -- the owner's side ---------------------------------------------------------

    def attach(self, transport: Any, register: bool = True) -> None:
        """
        Register on C{transport} as its streaming producer (from the protocol's
        C{connectionMade}); with C{register=False}, only watch C{transport}:
        the protocol, itself the registered producer, passes the transport's
        calls on.
        """
        self.transport = transport
        self._registered = register
        if register:
            transport.registerProducer(self, True)

    def detach(self) -> None:
        """
        Unregister and cancel the timer (before C{loseConnection()}, and from
        C{connectionLost}); calls no callback. Safe to call again.
        """
        self._cancel_timer()
        transport, self.transport = self.transport, None
        if transport is not None and self._registered:
            transport.unregisterProducer()

    def tls_started(self) -> None:
        """
        Call right after C{transport.startTLS()}: a pause from before it would
        never be resumed by the new TLS layer, so it ends here.
        """
        if self.paused:
            self.resumeProducing()

    # -- IPushProducer: the transport's side ----------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is over its bound: stop reading, start the timer."""
        if self.paused or self.transport is None or self._handshaking():
            return
        self.paused = True
        if self.timeout is not None:
            self._timer = self.clock.callLater(self.timeout, self._expired)
        if self._on_paused is not None:
            self._on_paused()
        else:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """The transport's buffer has drained: cancel the timer, read again."""
        if not self.paused or self.transport is None:
            return
        self.paused = False
        self._cancel_timer()
        if self._on_resumed is not None:
            self._on_resumed()
        else:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone: nothing more to time."""
        self._cancel_timer()
        self.transport = None

    # -- helpers -----------------------------------------------------------------------

    def _handshaking(self) -> bool:
        """
        Whether the transport's TLS handshake is still under way (a pause then
        is the TLS layer waiting to read, not the client not reading).
        """
        tls = _tls_layer(self.transport)
        # TLSMemoryBIOProtocol says so only in a private flag (IHandshakeListener would tell the
        # application protocol, not us); tests.test_flow's TLS loopback tests fail if it ever goes.
        return tls is not None and not getattr(tls, "_handshakeDone", True)

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or not self.paused:
            return
        peer = transport.getPeer()
        self.log.info("{listener}: output to {peer} over the bound for {timeout} s: connection aborted",
                      listener=self.name, peer=getattr(peer, "host", str(peer)), timeout=self.timeout)
        self.timed_out = True
        if self._on_timeout is not None:
            self._on_timeout()
        else:
            transport.abortConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _tls_layer(transport: Any) -> Any:
    """
    The C{TLSMemoryBIOProtocol} under C{transport}: the transport itself (the
    C{TLSMemoryBIOFactory} wrapper), its C{protocol} (a TCP transport after
    C{startTLS}), or None.
    """
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    if isinstance(transport, TLSMemoryBIOProtocol):
        return transport
    if getattr(transport, "TLS", False):
        protocol = getattr(transport, "protocol", None)
        if isinstance(protocol, TLSMemoryBIOProtocol):
            return protocol
    return None
