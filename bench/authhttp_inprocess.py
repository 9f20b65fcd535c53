"""
The auth_http hot path without the network: gomail's real auth_http listener
factory (built from a config, as `twistd gomail` builds it, listening on
an ephemeral loopback port it is never asked on) and a bare twisted.web
resource answering the same headers, each fed N keep-alive requests
through a StringTransport in one process, alternating, several rounds.

It shows what gomail's own Python costs per login, without wrk, the kernel
and the other core in the figure; `bench/authhttp.sh` stays the benchmark.

  .venv/bin/python bench/authhttp_inprocess.py [-n REQUESTS] [-r ROUNDS] [--profile] [--new-connections]

--profile adds one cProfile'd gomail round (cumulative, gomail and Deferred
frames); AUDIT=false in the environment turns gomail's audit log off. Prints
microseconds of CPU per request and the ratio peer/gomail.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from authhttp_helper import freeports, klein_peer_site, make_users, peer_site
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

USER, PASSWORD, SECRET = "alice@example.org", "bench-pass-1", "bench-shared-secret"
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
REQUEST = (b"GET /api/auth HTTP/1.1\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
           b"Auth-User: " + USER.encode() + b"\r\nAuth-Pass: " + PASSWORD.encode() + b"\r\n"
           b"Auth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n"
           b"X-Auth-Key: " + SECRET.encode() + b"\r\n\r\n")
#: nginx's way: HTTP/1.0, so the server closes after the answer.
CLOSING_REQUEST = REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0", 1)
CONFIG = """\
smtpHost = "127.0.0.1"
smtpPort = {smtp_port}
dataDir = "{data}"
enableHealthCheck = false

[security]
requireAuth = false

[spool]
minFreeSpaceMB = 0

[auth]
bcryptRounds = 4
cacheTTL = 86400

[nginxAuth]
listen = ["tcp:0:interface=127.0.0.1"]
sharedSecret = "{secret}"
auditLog = {audit}
healthCheckInterval = 0

[[nginxAuth.backends]]
protocol = "imap"
address = "127.0.0.1"
port = 143
"""


def connect(factory: Factory) -> tuple:
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER, hostAddress=IPv4Address("TCP", "127.0.0.1", 8090))
    protocol.makeConnection(transport)
    return protocol, transport


def answer(protocol, transport, request: bytes = REQUEST) -> bytes:
    """One request; waits on the reactor when the answer is not immediate (a refresh in a thread)."""
    protocol.dataReceived(request)
    deadline = time.monotonic() + 5
    while not transport.io.tell():
        if time.monotonic() > deadline:
            raise RuntimeError("no answer within 5 s")
        reactor.iterate(0.001)
    out = transport.value()
    transport.clear()
    return out


def drive(factory: Factory, n: int, profile: bool = False, new_connections: bool = False) -> float:
    """Microseconds of CPU per request over C{n} keep-alive requests (or a connection each)."""
    protocol, transport = connect(factory)
    first = answer(protocol, transport)
    if b"Auth-Status: OK" not in first:
        raise RuntimeError(f"not a success: {first!r}")
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    for i in range(n):
        if new_connections:
            protocol, transport = connect(factory)
            answer(protocol, transport, CLOSING_REQUEST)
            protocol.connectionLost(Failure(ConnectionDone()))
        else:
            answer(protocol, transport)
        if i % 500 == 0:
            reactor.iterate(0)  # timers and thread results (the audit log's flushes) run, as in a server
    if profiler:
        profiler.disable()
    spent = time.process_time() - started
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats("gomail|defer", 40)
    return spent / n * 1e6


def auth_factory(service) -> Factory:
    """The protocol factory of the service's auth_http listener."""
    def walk(node):
        for child in getattr(node, "services", ()):
            yield child
            yield from walk(child)

    for child in walk(service):
        if getattr(child, "kind", None) == "nginx auth_http":
            return child.factory
    raise RuntimeError("no auth_http listener found")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per round (default 20000)")
    parser.add_argument("-r", type=int, default=3, help="rounds, each gomail then the peer (default 3)")
    parser.add_argument("--profile", action="store_true", help="one more, profiled gomail round")
    parser.add_argument("--new-connections", action="store_true",
                        help="a connection per request, HTTP/1.0 (as nginx asks), instead of keep-alive")
    args = parser.parse_args()

    from gomail.configload import load_config
    from gomail.root import build_service

    work = tempfile.mkdtemp(prefix="gomail-authhttp-inprocess.")
    data = os.path.join(work, "data")
    make_users(os.path.join(data, "gomail.db"), USER, PASSWORD, 4)
    path = os.path.join(work, "gomail.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(data=data, secret=SECRET, smtp_port=freeports(1)[0], audit=os.environ.get("AUDIT", "true")))
    service = build_service(load_config(path), reactor)
    status = [1]

    def run() -> None:
        try:
            site = auth_factory(service)
            peer, klein_peer = peer_site(), klein_peer_site()
            for round_number in range(1, args.r + 1):
                gomail_us = drive(site, args.n, new_connections=args.new_connections)
                peer_us = drive(peer, args.n, new_connections=args.new_connections)
                klein_us = drive(klein_peer, args.n, new_connections=args.new_connections)
                print(f"round {round_number}: gomail {gomail_us:.1f} us/request, bare twisted.web {peer_us:.1f},"
                      f" bare Klein {klein_us:.1f}; ratio to twisted.web {peer_us / gomail_us:.2f},"
                      f" to Klein {klein_us / gomail_us:.2f}", flush=True)
            if args.profile:
                drive(site, args.n, profile=True, new_connections=args.new_connections)
            status[0] = 0
        finally:
            # The service's threads stop with it: the reactor stops after them, or the process never exits.
            maybeDeferred(service.stopService).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(service.startService)
    reactor.callWhenRunning(reactor.callLater, 0.5, run)
    reactor.run()
    shutil.rmtree(work, ignore_errors=True)
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
