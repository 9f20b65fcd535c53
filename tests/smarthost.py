"""
The smarthost of the relay integration tests, run as its own process::

    python -m tests.smarthost --port P --spool DIR [--reject-local-part reject] [--tempfail-local-part busy]
                              [--no-pipelining]

Any sender is accepted; a recipient whose local part is the --reject-local-part
value gets 550 5.1.1, the --tempfail-local-part value 451 4.2.1, any other 250.
Each message becomes C{DIR/<counter>.eml}: C{X-Envelope: <sender> <rcpt1,rcpt2>},
CRLF, then the DATA bytes as received (dot-unstuffed). Prints C{smarthost ready}
once listening, C{received N} after each message and, when a connection
ends, C{session: <its command verbs>}. EHLO offers PIPELINING unless
--no-pipelining (commands are answered in order either way).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

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
        self.sendLine(b"220 smarthost.test ESMTP test smarthost")

    def connectionLost(self, reason: Any = None) -> None:
        print(f"session: {' '.join(self.verbs)}", flush=True)

    def lineReceived(self, line: bytes) -> None:
        if self.data is not None:
            self.data_line(line)
            return
        verb = line.split(b" ", 1)[0].upper()
        self.verbs.append(verb.decode("ascii", "replace"))
        match = _COMMAND.match(line)
        if verb == b"EHLO":
            extensions = b"250 8BITMIME" if not self.factory.pipelining else b"250-PIPELINING\r\n250 8BITMIME"
            self.sendLine(b"250-smarthost.test\r\n" + extensions)
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
            self.sendLine(f"250 2.0.0 Ok: stored as {number}".encode())
        else:
            self.data.append(line[1:] if line.startswith(b".") else line)


class SmarthostFactory(ServerFactory):
    """Settings and the message counter shared by all connections."""

    protocol = SmarthostProtocol

    def __init__(self, spool: str, reject: str | None, tempfail: str | None, pipelining: bool = True) -> None:
        self.spool, self.reject, self.tempfail = spool, reject, tempfail
        self.pipelining = pipelining
        self.received = 0

    def store(self, sender: str, recipients: list[str], data: bytes) -> int:
        """Write one message (via a temporary name, so readers never see half a file); its number."""
        self.received += 1
        name = os.path.join(self.spool, f"{self.received:06d}.eml")
        with open(name + ".tmp", "wb") as f:
            f.write(f"X-Envelope: <{sender}> <{','.join(recipients)}>\r\n".encode() + data)
        os.rename(name + ".tmp", name)
        print(f"received {self.received}", flush=True)
        return self.received


def serve(reactor: Any, argv: list[str]) -> Deferred:
    """Parse the arguments, listen on 127.0.0.1 and serve until SIGTERM (run by task.react)."""
    parser = argparse.ArgumentParser(prog="python -m tests.smarthost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--reject-local-part")
    parser.add_argument("--tempfail-local-part")
    parser.add_argument("--no-pipelining", action="store_true")
    args = parser.parse_args(argv)
    os.makedirs(args.spool, exist_ok=True)
    reactor.listenTCP(args.port, SmarthostFactory(args.spool, args.reject_local_part, args.tempfail_local_part,
                                                     pipelining=not args.no_pipelining),
                      interface="127.0.0.1")
    print("smarthost ready", flush=True)
    return Deferred()  # never fires: SIGTERM stops the reactor


if __name__ == "__main__":
    react(serve, (sys.argv[1:],))
