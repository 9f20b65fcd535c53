"""
The smarthost of the relay integration tests, run as its own process::

    python -m tests.smarthost --port P --spool DIR [--reject-local-part reject] [--tempfail-local-part busy]
                              [--no-pipelining] [--dot-delay SECONDS] [--stall STEP] [--offer-auth]

Any sender is accepted; a recipient whose local part is the --reject-local-part
value gets 550 5.1.1, the --tempfail-local-part value 451 4.2.1, any other 250.
Each message becomes C{DIR/<counter>.eml}: C{X-Envelope: <sender> <rcpt1,rcpt2>},
CRLF, then the DATA bytes as received (dot-unstuffed). Prints C{smarthost ready}
once listening, C{received N} after each message and, when a connection
ends, C{session: <its command verbs>}. EHLO offers PIPELINING unless
--no-pipelining (commands are answered in order either way).

Misbehaving as smarthosts do: --dot-delay stores each message when its final
dot arrives but answers the dot that many seconds later (C{dot delayed}
printed meanwhile), as a slow smarthost that delivers before it replies;
--stall STEP never answers that step (C{greeting}, C{EHLO}, C{MAIL},
C{RCPT}, C{DATA}, C{dot}: the dot's message is still stored); --offer-auth
offers AUTH PLAIN LOGIN in the clear (and no STARTTLS). In tests the factory
is also used in the test's own process, on a C{task.Clock}.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.task import react
from twisted.protocols.basic import LineReceiver

_COMMAND = re.compile(rb"^(MAIL FROM|RCPT TO):\s*<([^>]*)>", re.IGNORECASE)


class SmarthostProtocol(LineReceiver):
    """Just enough ESMTP for a relaying client: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    MAX_LENGTH = 1024 * 1024
    factory: SmarthostFactory

    def connectionMade(self) -> None:
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.data: list[bytes] | None = None
        self.verbs: list[str] = []
        self.connected_now = True
        self.stalled = False
        if "greeting" not in self.factory.stall:
            self.sendLine(b"220 smarthost.test ESMTP test smarthost")

    def connectionLost(self, reason: Any = None) -> None:
        self.connected_now = False
        self.factory.announce(f"session: {' '.join(self.verbs)}")

    def lineReceived(self, line: bytes) -> None:
        if self.stalled:
            return
        if self.data is not None:
            self.data_line(line)
            return
        verb = line.split(b" ", 1)[0].upper()
        self.verbs.append(verb.decode("ascii", "replace"))
        match = _COMMAND.match(line)
        if self.stalled or verb.decode("ascii", "replace") in self.factory.stall:
            self.stalled = True  # this and everything after it is never answered
            return
        if verb == b"EHLO":
            extensions = [b"PIPELINING"] if self.factory.pipelining else []
            if self.factory.offer_auth:
                extensions.append(b"AUTH PLAIN LOGIN")
            extensions.append(b"8BITMIME")
            self.sendLine(b"\r\n".join([b"250-smarthost.test"] + [b"250-" + e for e in extensions[:-1]]
                                        + [b"250 " + extensions[-1]]))
        elif verb == b"HELO":
            self.sendLine(b"250 smarthost.test")
        elif verb == b"MAIL" and match:
            self.sender, self.recipients = match.group(2).decode(), []
            self.sendLine(b"250 2.1.0 Ok")
        elif verb == b"RCPT" and match and self.sender is not None:
            self.rcpt(match.group(2).decode())
        elif verb == b"DATA" and self.recipients:
            self.data = []
            self.sendLine(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb == b"RSET":
            self.sender, self.recipients = None, []
            self.sendLine(b"250 2.0.0 Ok")
        elif verb == b"NOOP":
            self.sendLine(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"503 5.5.1 Bad sequence of commands or syntax")

    def rcpt(self, address: str) -> None:
        local = address.rpartition("@")[0]
        if local == self.factory.reject:
            self.sendLine(f"550 5.1.1 <{address}>: Recipient address rejected".encode())
        elif local == self.factory.tempfail:
            self.sendLine(f"451 4.2.1 <{address}>: Mailbox busy, try again later".encode())
        else:
            self.recipients.append(address)
            self.sendLine(b"250 2.1.5 Ok")

    def data_line(self, line: bytes) -> None:
        if line == b".":
            content = b"".join(part + b"\r\n" for part in self.data)
            self.data = None
            number = self.factory.store(self.sender or "", self.recipients, content)
            self.sender, self.recipients = None, []
            reply = f"250 2.0.0 Ok: stored as {number}".encode()
            if "dot" in self.factory.stall:
                return
            if self.factory.dot_delay:
                # Delivered already; the client hears of it only later (if it still listens).
                self.factory.announce(f"dot delayed {number}")
                self.factory.clock.callLater(self.factory.dot_delay, self.late_reply, reply)
                return
            self.sendLine(reply)
        else:
            self.data.append(line[1:] if line.startswith(b".") else line)

    def late_reply(self, reply: bytes) -> None:
        if self.connected_now:
            self.sendLine(reply)


class SmarthostFactory(ServerFactory):
    """Settings and the message counter shared by all connections."""

    protocol = SmarthostProtocol

    def __init__(self, spool: str, reject: str | None, tempfail: str | None, pipelining: bool = True,
                 dot_delay: float = 0.0, stall: tuple[str, ...] = (), offer_auth: bool = False,
                 clock: Any = None, announce: Callable[[str], None] | None = None) -> None:
        self.spool, self.reject, self.tempfail = spool, reject, tempfail
        self.pipelining = pipelining
        self.dot_delay = dot_delay
        self.stall = frozenset(stall)
        self.offer_auth = offer_auth
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        #: Where progress lines go: stdout (the integration tests wait on them), or a test's list.
        self.announce = announce or (lambda text: print(text, flush=True))
        self.received = 0

    def store(self, sender: str, recipients: list[str], data: bytes) -> int:
        """Write one message (via a temporary name, so readers never see half a file); its number."""
        self.received += 1
        name = os.path.join(self.spool, f"{self.received:06d}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(f"X-Envelope: <{sender}> <{','.join(recipients)}>\r\n".encode() + data)
        os.rename(name + ".tmp", name)
        self.announce(f"received {self.received}")
        return self.received


def serve(reactor: Any, argv: list[str]) -> Deferred:
    """Parse the arguments, listen on 127.0.0.1 and serve until SIGTERM (run by task.react)."""
    parser = argparse.ArgumentParser(prog="python -m tests.smarthost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--reject-local-part")
    parser.add_argument("--tempfail-local-part")
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--dot-delay", type=float, default=0.0)
    parser.add_argument("--stall", action="append", default=[],
                        choices=["greeting", "EHLO", "MAIL", "RCPT", "DATA", "dot"])
    parser.add_argument("--offer-auth", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.spool, exist_ok=True)
    reactor.listenTCP(args.port, SmarthostFactory(args.spool, args.reject_local_part, args.tempfail_local_part,
                                                     pipelining=not args.no_pipelining, dot_delay=args.dot_delay,
                                                     stall=tuple(args.stall), offer_auth=args.offer_auth,
                                                     clock=reactor),
                      interface="127.0.0.1")
    print("smarthost ready", flush=True)
    return Deferred()  # never fires: SIGTERM stops the reactor


if __name__ == "__main__":
    react(serve, (sys.argv[1:],))
