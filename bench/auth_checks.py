"""
Authentication checks per second, and whether bcrypt stalls the reactor.

Runs gomail's real credential checker (L{gomail.auth.checker.LoginChecker})
on the real reactor: an SQLite user store in a temporary directory holding
one user (bcrypt hash of cost C{--rounds}; its record cache on, as in the
server, unless C{--no-user-cache}), the in-memory state store, the IP
blacklist, and bcrypt in a thread pool of gomail's automatic size (one thread
fewer than the CPUs; C{--threads N} to choose). Lockout limits are set out
of reach. Each of C{--repeat}
repeats measures, in this order:

1. cached: the auth cache warmed once, then C{--cached-checks} checks with at
   most 50 in flight (DeferredSemaphore): checks/s (count / wall time) and
   per-check latency p50/p99 (from the check's start, i.e. after it got a
   semaphore slot, to its result). Peer: the user lookup alone
   (C{store.get_user}: from memory, or one SQLite round trip without the
   cache), the same way;
2. uncached (C{cacheTTL = 0}, every check runs bcrypt): the same with
   C{--checks} checks. Peer: bcrypt alone (C{verifier.verify}) in the same pool;
3. reactor liveness: a tiny C{twisted.web} site on a free 127.0.0.1 port
   serves C{/health} (a small JSON body). Sequential GETs (new connection,
   HTTP/1.0, raw client protocol on the same reactor) for C{--duration}
   seconds: with nothing else running (baseline), while 50 bare bcrypt
   verifications are kept outstanding (peer), and while 50 uncached checks
   are kept outstanding. Reported: requests, latency p50/p99/max, and the
   reactor's lag (how late a 10 ms timer fires).

Each peer runs next to its gomail figure, the order alternating by repeat.

Prints a markdown table: per figure the median and min-max over the repeats.
Usage: .venv/bin/python bench/auth_checks.py [--rounds 10] [--checks N] [--repeat 3]
"""

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import tempfile
import time
from time import perf_counter
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from gomail.auth.blacklist import Blacklist
from gomail.auth.checker import LoginAttempt, LoginChecker, ThreadPoolVerifier
from gomail.auth.passwords import hash_password
from gomail.auth.service import bcrypt_threads, usable_cpus
from gomail.auth.users import SQLiteUserStore
from gomail.configschema import AuthSettings
from gomail.state.memory import MemoryStateStore

INFLIGHT = 50
USER, PASSWORD = "alice", "correct horse battery staple"


def pct(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    return sorted(values)[max(0, math.ceil(q / 100 * len(values)) - 1)]


class Peer:
    """One step of the checker alone (bcrypt, or the user lookup), as the reference for the whole."""

    def __init__(self, step):
        self.step = step

    def authenticate(self, attempt):
        return self.step(attempt).addCallback(lambda _: SimpleNamespace(via=None))


class Health(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b'{"status": "ok"}'


class Get(Protocol):
    """One HTTP/1.0 GET /health; C{done} fires with the whole response when the server closes."""

    def __init__(self):
        self.done, self.data = Deferred(), []

    def connectionMade(self):
        self.transport.write(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.done.callback(b"".join(self.data))


async def http_get(reactor, port):
    proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Get())
    response = await proto.done
    if not (response.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")) and response.endswith(b'{"status": "ok"}')):
        raise RuntimeError(f"unexpected /health response: {response[:200]!r}")


class LagMonitor:
    """How late a timer due every C{interval} seconds actually fires (reactor stalls show here)."""

    def __init__(self, reactor, interval=0.01):
        self.reactor, self.interval = reactor, interval

    def start(self):
        self.lags, self.due = [], perf_counter() + self.interval
        self.call = self.reactor.callLater(self.interval, self._tick)

    def _tick(self):
        now = perf_counter()
        self.lags.append(max(0.0, now - self.due))
        self.due = now + self.interval
        self.call = self.reactor.callLater(self.interval, self._tick)

    def stop(self):
        self.call.cancel()
        return self.lags


async def run_checks(auth, attempt, n, expect):
    """C{n} checks, at most INFLIGHT at once: (checks/s, per-check latencies)."""
    sem, latencies = DeferredSemaphore(INFLIGHT), []

    async def one():
        started = perf_counter()
        result = await auth.authenticate(attempt)
        latencies.append(perf_counter() - started)
        if expect and result.via != expect:
            raise RuntimeError(f"check went via {result.via!r}, expected {expect!r}")

    started = perf_counter()
    await gatherResults([sem.run(lambda: Deferred.fromCoroutine(one())) for _ in range(n)], consumeErrors=True)
    return n / (perf_counter() - started), latencies


async def probe(reactor, port, duration, lag):
    """Sequential GETs for C{duration} s: their latencies, and the reactor lag over the same time."""
    latencies, until = [], perf_counter() + duration
    lag.start()
    while perf_counter() < until:
        started = perf_counter()
        await http_get(reactor, port)
        latencies.append(perf_counter() - started)
    return latencies, lag.stop()


async def liveness(reactor, auth, attempt, port, duration, lag):
    """Probe while INFLIGHT checks of C{auth} are outstanding all the time: (GET latencies, lags, checks/s)."""
    until, done = perf_counter() + duration + 0.5, []

    async def worker():
        while perf_counter() < until:
            await auth.authenticate(attempt)
            done.append(perf_counter())

    started = perf_counter()
    workers = [Deferred.fromCoroutine(worker()) for _ in range(INFLIGHT)]
    await task.deferLater(reactor, 0.5, lambda: None)  # let the load settle before probing
    latencies, lags = await probe(reactor, port, duration, lag)
    await gatherResults(workers, consumeErrors=True)
    in_window = sum(1 for t in done if started <= t <= until)
    return latencies, lags, in_window / (until - started)


def source_info():
    """HEAD, and whether gomail/ has uncommitted changes (read-only git calls)."""
    git = ["git", "-C", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "gomail"], capture_output=True, text=True).stdout.strip()
    return f"{head}{' + uncommitted changes in gomail/' if dirty else ''}"


async def main(reactor, args):
    load = os.getloadavg()
    print(f"# auth_checks: rounds={args.rounds} checks={args.checks} cached-checks={args.cached_checks} "
          f"repeat={args.repeat} duration={args.duration}s; cpu_count={os.cpu_count()}, "
          f"loadavg at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; gomail {source_info()}; "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    tmp = tempfile.TemporaryDirectory(prefix="gomail-auth-bench.")
    threads = args.threads or bcrypt_threads(0, usable_cpus())  # gomail's default (auth.cpuThreads = 0)
    print(f"# bcrypt threads: {threads}; user record cache: {'on' if args.user_cache else 'off'}", flush=True)
    pool = ThreadPool(0, threads, name="bench-bcrypt")
    pool.start()
    store = SQLiteUserStore(os.path.join(tmp.name, "users.sqlite3"), reactor=reactor,
                            refresh=1.0 if args.user_cache else 0.0)
    listener = None
    try:
        await store.start()
        await store.add_user(USER, hash_password(PASSWORD, args.rounds), reactor.seconds())
        state, blacklist, secret = MemoryStateStore(reactor), Blacklist(store, reactor, 10), os.urandom(32)
        base = dataclasses.replace(AuthSettings(), bcryptRounds=args.rounds, maxFailAttempts=10**9,
                                   maxFailAttemptsPerIP=10**9)
        verifier, hashed = ThreadPoolVerifier(reactor, pool), (await store.get_user(USER)).password_hash
        lookup = Peer(lambda a: store.get_user(a.username))
        bare = Peer(lambda a: verifier.verify(a.password, hashed))
        cached = LoginChecker(store, state, blacklist, verifier, reactor, secret, base)
        uncached = LoginChecker(store, state, blacklist, verifier, reactor, secret,
                                 dataclasses.replace(base, cacheTTL=0))
        attempt = LoginAttempt(USER, PASSWORD, "127.0.0.1", "imap")
        site = Site(Health())
        site.log = lambda request: None  # no access log
        listener = reactor.listenTCP(0, site, interface="127.0.0.1")
        port, lag = listener.getHost().port, LagMonitor(reactor)
        await http_get(reactor, port)  # warm-up
        assert (await cached.authenticate(attempt)).via == "password"  # warms the cache once

        rows = {}  # figure -> one value per repeat, in the order first seen

        def add(name, value):
            rows.setdefault(name, []).append(value)

        def ordered(i, *pairs):  # peer first on even repeats, gomail first on odd ones
            return [p for pair in pairs for p in (pair if i % 2 == 0 else pair[::-1])]

        for i in range(args.repeat):
            for label, auth, n, expect in ordered(
                    i, (("user lookup alone", lookup, args.cached_checks, None),
                        ("cached", cached, args.cached_checks, "cache")),
                    ((f"bcrypt alone (cost {args.rounds})", bare, args.checks, None),
                     (f"uncached (cost {args.rounds})", uncached, args.checks, "password"))):
                rate, lat = await run_checks(auth, attempt, n, expect)
                add(f"{label}: checks/s", rate)
                add(f"{label}: latency p50 (ms)", pct(lat, 50) * 1e3)
                add(f"{label}: latency p99 (ms)", pct(lat, 99) * 1e3)
            phases = [("idle", None)] + ordered(i, (("50 bare bcrypt in flight", bare),
                                                    ("50 uncached checks in flight", uncached)))
            for label, load_with in phases:
                if load_with:
                    gets, lags, rate = await liveness(reactor, load_with, attempt, port, args.duration, lag)
                    add(f"/health, {label}: checks/s meanwhile", rate)
                else:
                    gets, lags = await probe(reactor, port, args.duration, lag)
                add(f"/health, {label}: requests", len(gets))
                for q in (50, 99):
                    add(f"/health, {label}: p{q} (ms)", pct(gets, q) * 1e3)
                add(f"/health, {label}: max (ms)", max(gets) * 1e3)
                add(f"/health, {label}: reactor lag max (ms)", max(lags) * 1e3)
            print(f"# repeat {i + 1}/{args.repeat} done, loadavg {os.getloadavg()[0]:.2f}", flush=True)

        r = args.rounds
        for name, num, den in (("cached / user lookup alone", "cached", "user lookup alone"),
                               (f"uncached / bcrypt alone (cost {r})", f"uncached (cost {r})", f"bcrypt alone (cost {r})")):
            rows[f"ratio {name}: checks/s"] = [a / b for a, b in zip(rows[f"{num}: checks/s"], rows[f"{den}: checks/s"])]
        print("\n| figure | median | min–max | per repeat |\n|---|---|---|---|")
        for name, values in rows.items():
            big = max(values)
            fmt = (lambda v: f"{v:,.0f}") if big >= 100 else (lambda v: f"{v:.1f}") if big >= 10 else (lambda v: f"{v:.2f}")
            print(f"| {name} | {fmt(statistics.median(values))} | {fmt(min(values))}–{fmt(max(values))} | "
                  f"{', '.join(fmt(v) for v in values)} |")
    finally:
        if listener is not None:
            await listener.stopListening()
        store.close()
        pool.stop()
        tmp.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="bcrypt cost (default 10, gomail's default)")
    parser.add_argument("--checks", type=int, default=200, help="uncached checks per repeat (default 200)")
    parser.add_argument("--cached-checks", type=int, default=5000, help="cached checks per repeat (default 5000)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    parser.add_argument("--threads", type=int, default=0,
                        help="bcrypt threads (default 0: gomail's automatic size, one fewer than the CPUs)")
    parser.add_argument("--no-user-cache", dest="user_cache", action="store_false",
                        help="read the user database at every check (gomail's auth.userRefresh = 0)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of /health probing per phase (default 5)")
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, parser.parse_args())))
