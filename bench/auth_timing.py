"""
How long each kind of login refusal takes (issue 14, item 11): the time to a
refusal must not tell which kind it was, nor that the password was right.

Runs gomail's real credential checker (L{gomail.auth.checker.LoginChecker})
on the real reactor, bcrypt at the configured cost (C{auth.bcryptRounds} of
C{--config}, or C{--rounds}) in a real thread pool of gomail's size, and the
in-memory state store. Users: alice (password), ida (disabled), tom and tina
(TOTP; tina logged in once, so her password is in the auth cache). The
checker's clock is fixed at the start (TOTP codes stay valid, locks and cache
entries stay), while times are measured with C{perf_counter}.

Each round tries every refusal kind once, in a new random order (one attempt
at a time, so the pool is idle when each starts), and times one bare bcrypt
verification in the same pool. Kinds that are not about locks use a new client
IP each time, so the failures lock nothing. Every attempt's refusal reason is
checked: a kind that was refused for another reason stops the run.

Prints, per kind, the median, p10 and p90 in milliseconds, then the largest
gap between two kinds' medians as a share of the bcrypt verification's median,
and exits 1 when it is 10 % or more.

Usage: .venv/bin/python bench/auth_timing.py [--config FILE] [--rounds N] [--trials 200] [--warmup 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import random
import statistics
import sys
import time
from time import perf_counter
from typing import Any

import pyotp
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.python.threadpool import ThreadPool

from gomail.auth.blacklist import Blacklist
from gomail.auth.checker import AuthFailure, LoginAttempt, LoginChecker, ThreadPoolVerifier
from gomail.auth.passwords import hash_password
from gomail.auth.records import BlacklistEntry, UserRecord
from gomail.auth.service import bcrypt_threads, usable_cpus
from gomail.configload import load_config
from gomail.state.memory import MemoryStateStore

PASSWORD = "s3cret-Horse"
TOTP_SECRET_TOM, TOTP_SECRET_TINA = pyotp.random_base32(), pyotp.random_base32()
LOCKED_IP, BLACKLISTED = "198.51.100.1", "203.0.113.0/24"


class Users:
    """The user store's interface, from a dict (no database: the checker is what is measured)."""

    def __init__(self, users: list[UserRecord]) -> None:
        self.users = {user.name: user for user in users}

    def get_user(self, name: str) -> Any:
        return succeed(self.users.get(name))

    def touch_app_password(self, app_id: int, now: float) -> Any:
        return succeed(None)

    def list_blacklist(self, now: float) -> Any:
        return succeed([BlacklistEntry(BLACKLISTED, None)])


class Addresses:
    """A new client IP per attempt (10.0.0.0/8), so failures never reach a lock."""

    def __init__(self) -> None:
        self.next = int(ipaddress.ip_address("10.0.0.1"))

    def __call__(self) -> str:
        self.next += 1
        return str(ipaddress.ip_address(self.next))


def wrong_code(code: str) -> str:
    return f"{(int(code) + 500_000) % 1_000_000:06d}"


async def run(reactor: Any, options: argparse.Namespace) -> int:
    config = load_config(options.config)
    rounds = options.rounds or config.auth.bcryptRounds
    settings = dataclasses.replace(config.auth, bcryptRounds=rounds)
    print(f"hashing the users' passwords (bcrypt cost {rounds})...", file=sys.stderr)
    hashed = hash_password(PASSWORD, rounds)
    users = Users([
        UserRecord("alice", hashed), UserRecord("ida", hashed, enabled=False),
        UserRecord("tom", hashed, totp_secret=TOTP_SECRET_TOM, totp_enabled=True),
        UserRecord("tina", hashed, totp_secret=TOTP_SECRET_TINA, totp_enabled=True)])
    clock = task.Clock()
    clock.advance(time.time())
    threads = bcrypt_threads(config.auth.cpuThreads, usable_cpus())
    pool = ThreadPool(threads, threads, "bench-bcrypt")
    pool.start()
    try:
        return await measure(reactor, options, settings, users, hashed, clock, pool)
    finally:
        pool.stop()


async def measure(reactor: Any, options: argparse.Namespace, settings: Any, users: Users, hashed: bytes,
                  clock: task.Clock, pool: ThreadPool) -> int:
    threads = pool.max
    verifier = ThreadPoolVerifier(reactor, pool)
    auth = LoginChecker(users, MemoryStateStore(clock), Blacklist(users, clock, settings.blacklistRefresh),
                         verifier, clock, os.urandom(32), settings)
    ip = Addresses()
    tom_code = pyotp.TOTP(TOTP_SECRET_TOM).at(clock.seconds())
    tina_code = pyotp.TOTP(TOTP_SECRET_TINA).at(clock.seconds())
    # Tina logs in once: her password is cached and her code is used.
    await auth.check(LoginAttempt("tina", PASSWORD + tina_code, ip(), "imap"))
    # Alice is locked on LOCKED_IP.
    for _ in range(settings.maxFailAttempts):
        try:
            await auth.check(LoginAttempt("alice", "wrong", LOCKED_IP, "imap"))
        except AuthFailure:
            pass

    # kind -> (reason expected, attempt maker)
    kinds: dict[str, tuple[str, Any]] = {
        "wrong password": ("bad-password", lambda: ("alice", "wrong-" + PASSWORD, ip())),
        "right password, wrong code": ("bad-totp", lambda: ("tom", PASSWORD + wrong_code(tom_code), ip())),
        "cached password, wrong code": ("bad-totp", lambda: ("tina", PASSWORD + wrong_code(tina_code), ip())),
        "cached password, reused code": ("totp-replay", lambda: ("tina", PASSWORD + tina_code, ip())),
        "right password, no code": ("bad-totp", lambda: ("tom", PASSWORD, ip())),
        "locked (user, IP)": ("locked", lambda: ("alice", PASSWORD, LOCKED_IP)),
        "blacklisted": ("blacklisted", lambda: ("alice", PASSWORD, "203.0.113.7")),
        "unknown user": ("unknown-user", lambda: ("nobody", PASSWORD, ip())),
        "disabled user": ("disabled", lambda: ("ida", PASSWORD, ip())),
        "bad user name": ("bad-username", lambda: ("", PASSWORD, ip())),
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    bcrypt_times: list[float] = []
    success_times: list[float] = []
    print(f"{options.warmup} + {options.trials} rounds of {len(kinds)} kinds, {threads} bcrypt thread(s)...",
          file=sys.stderr)
    for round_number in range(options.warmup + options.trials):
        keep = round_number >= options.warmup
        order = list(kinds)
        random.shuffle(order)
        for kind in order:
            reason, make = kinds[kind]
            user, password, client = make()
            started = perf_counter()
            try:
                await auth.check(LoginAttempt(user, password, client, "imap"))
            except AuthFailure as failure:
                elapsed = perf_counter() - started
                if failure.reason != reason:
                    raise SystemExit(f"{kind}: refused as {failure.reason}, not {reason}") from None
            else:
                raise SystemExit(f"{kind}: the login succeeded")
            if keep:
                times[kind].append(elapsed)
        started = perf_counter()
        await verifier.verify("wrong-" + PASSWORD, hashed)
        if keep:
            bcrypt_times.append(perf_counter() - started)
        started = perf_counter()
        await auth.check(LoginAttempt("alice", PASSWORD, ip(), "imap"))
        if keep:
            success_times.append(perf_counter() - started)
    return report(times, bcrypt_times, success_times, settings.bcryptRounds, threads)


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 in milliseconds."""
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values) * 1000, deciles[0] * 1000, deciles[-1] * 1000


def report(times: dict[str, list[float]], bcrypt_times: list[float], success_times: list[float],
           rounds: int, threads: int) -> int:
    print(f"\nbcrypt cost {rounds}, {threads} thread(s), {len(bcrypt_times)} trials per kind (ms)\n")
    print("| kind | median | p10 | p90 |")
    print("|---|---:|---:|---:|")
    medians = {}
    for kind, values in times.items():
        median, p10, p90 = spread(values)
        medians[kind] = median
        print(f"| {kind} | {median:.2f} | {p10:.2f} | {p90:.2f} |")
    median, p10, p90 = spread(bcrypt_times)
    print(f"| *bcrypt verification alone* | {median:.2f} | {p10:.2f} | {p90:.2f} |")
    s_median, s_p10, s_p90 = spread(success_times)
    print(f"| *success from the auth cache* | {s_median:.2f} | {s_p10:.2f} | {s_p90:.2f} |")
    slowest, fastest = max(medians, key=medians.__getitem__), min(medians, key=medians.__getitem__)
    gap = medians[slowest] - medians[fastest]
    share = gap / median
    verdict = "OK, under 10 %" if share < 0.10 else "NOT OK, 10 % or more"
    print(f"\nlargest gap between medians: {gap:.2f} ms ({slowest} vs {fastest}) = "
          f"{share * 100:.1f} % of a bcrypt verification ({median:.2f} ms): {verdict}")
    return 0 if share < 0.10 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="conf/gomail.toml" if os.path.exists("conf/gomail.toml") else None,
                        help="configuration whose [auth] to use (default: conf/gomail.toml)")
    parser.add_argument("--rounds", type=int, default=0, help="bcrypt cost (default: auth.bcryptRounds)")
    parser.add_argument("--trials", type=int, default=200, help="measured rounds (default 200)")
    parser.add_argument("--warmup", type=int, default=5, help="rounds run first and not measured (default 5)")
    options = parser.parse_args()

    async def react(reactor: Any) -> None:
        status = await run(reactor, options)
        if status:
            raise SystemExit(status)
    task.react(lambda reactor: Deferred.fromCoroutine(react(reactor)))


if __name__ == "__main__":
    main()
