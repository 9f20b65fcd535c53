# -*- test-case-name: tests.test_state -*-
"""
An L{IStateStore} in Redis, shared by every gomail process that uses the same
server, database and prefix.

Operations that read and write are single commands or Lua scripts run with
C{EVAL}, so they are atomic on the server. Every operation is bounded by
C{timeout} seconds and every failure (refused, not connected, timed out, an
error reply) fails the Deferred with L{StateStoreError}, whose text names the
operation and the cause but never a key's value.

Clocks: TTLs (C{EX}, C{EXPIRE}, C{PEXPIRE}) are counted by the Redis server's
clock, while the timestamps of sliding-window events are read from the store's
own clock, so a window's contents follow the gomail host's time and its
expiry follows the server's.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

# txredisapi imports the global reactor: import this module only once the
# reactor is chosen (make_state_store imports it lazily).
import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gomail.state.interface import IStateStore, StateStoreError
from gomail.state.memory import positive_window, whole_seconds

#: Connections kept open; commands are pipelined on them, so a few are plenty.
POOL_SIZE = 4

# The TTL is set only when the counter has none, i.e. when INCR created it.
INCR = """
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""

# ARGV: the new value, its TTL in seconds. 1 when stored, 0 when the key holds as much or more.
ADVANCE = """
local current = redis.call('GET', KEYS[1])
if current then
  local number = tonumber(current)
  if not number then
    return redis.error_reply('the key does not hold a number')
  end
  if number >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# ARGV: cutoff (events at or before it have left the window).
WINDOW_COUNT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""

# ARGV: cutoff, now (the score), a unique member, the log's TTL in milliseconds.
WINDOW_ADD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
"""


def parse_url(url: str) -> tuple[str, int, str | None, int]:
    """
    Read C{redis://[:password@]host[:port][/db]}.

    @return: (host, port, password or None, db)
    @raise ValueError: another scheme, a user name, a bad port or database.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError("a Redis URL starts with redis://")
    if parts.username:
        raise ValueError("a Redis URL takes a password only (redis://:password@host)")
    if not parts.hostname:
        raise ValueError("a Redis URL names a host")
    port = parts.port if parts.port is not None else 6379  # ValueError for a bad one
    path = parts.path.strip("/")
    if not path:
        db = 0
    elif path.isdigit():
        db = int(path)
    else:
        raise ValueError("the path of a Redis URL is a database number")
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, password, db


@implementer(IStateStore)
class RedisStateStore:
    """
    The state store in a Redis server, through a small txredisapi connection pool.

    The pool connects at construction and reconnects on its own (with backoff)
    whenever a connection is lost. Until the very first connection is made,
    operations wait for it (within C{timeout}); once connected, while no
    connection is up they fail at once, so an outage costs callers no time.

    txredisapi stops reconnecting for good when AUTH or SELECT fails on a new
    connection (a wrong password); the store then fails every operation until
    it is replaced.

    @param clock: the time source of window timestamps.
    @param reactor: connects and bounds every operation; defaults to C{clock},
        which is the reactor outside of tests.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, host: str, port: int, password: str | None, db: int,
                 prefix: str = "gomail:", timeout: float = 2.0, reactor: Any = None) -> None:
        self.clock = clock
        self.reactor = reactor if reactor is not None else clock
        self.prefix = prefix
        self.timeout = timeout
        self._members = 0
        self._instance = os.urandom(6).hex()
        self._connected_once = False
        self._refused: str | None = None
        self._waiters: list[defer.Deferred] = []
        # None until disconnect(); then who waits for it, and [] once closed.
        self._closing: list[defer.Deferred] | None = None
        # Bytes in and out (charset=None) and no number guessing: GET returns what SET
        # stored. Database 0 needs no SELECT, one less step that can fail a reconnection.
        self._factory = txredisapi.RedisFactory(
            f"{host}:{port}", db or None, POOL_SIZE, isLazy=True, charset=None,
            password=password or None, replyTimeout=timeout, convertNumbers=False)
        self._factory.reconnect = True
        self._factory.deferred.addCallbacks(self._first_connection, self._connection_refused)
        self._factory.startConnecting(HostnameEndpoint(self.reactor, host, port, timeout=timeout))
        self._redis = self._factory.handler

    @classmethod
    def from_url(cls, url: str, clock: IReactorTime, prefix: str = "gomail:", timeout: float = 2.0,
                 reactor: Any = None) -> RedisStateStore:
        """A store for C{redis://[:password@]host[:port][/db]} (see L{parse_url})."""
        host, port, password, db = parse_url(url)
        return cls(clock, host, port, password, db, prefix=prefix, timeout=timeout, reactor=reactor)

    def _first_connection(self, handler: Any) -> None:
        self._connected_once = True
        self._wake(None)

    def _connection_refused(self, failure: Failure) -> None:
        # txredisapi's message: authentication or SELECT failed; it stops reconnecting.
        self._refused = str(failure.value).removeprefix("Redis error: ")[:120]
        self._wake(StateStoreError(self._refused))

    def _wake(self, error: Exception | None) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def _ready(self) -> defer.Deferred:
        """Fires when a connection is up, fails with L{StateStoreError} when none will be soon."""
        if self._factory.size:
            self._connected_once = True
            return defer.succeed(None)
        if self._closing is not None:
            return defer.fail(StateStoreError("disconnected"))
        if self._refused is not None:
            return defer.fail(StateStoreError(self._refused))
        if self._factory.stopped:
            return defer.fail(StateStoreError("stopped reconnecting: AUTH or SELECT failed"))
        if self._connected_once:
            return defer.fail(StateStoreError("not connected"))
        waiter: defer.Deferred = defer.Deferred(self._waiters.remove)
        self._waiters.append(waiter)
        return waiter

    def _call(self, operation: str, command: Callable[[], Awaitable[Any]]) -> defer.Deferred:
        """Run C{command} once a connection is up, bounded by the timeout, failures translated."""
        async def run() -> Any:
            await self._ready()
            return await command()
        d = defer.Deferred.fromCoroutine(run())
        d.addTimeout(self.timeout, self.reactor)
        d.addErrback(self._failed, operation)
        return d

    def _failed(self, failure: Failure, operation: str) -> Failure:
        if failure.check(defer.CancelledError):
            return failure  # the caller cancelled: not a store failure
        if failure.check(StateStoreError):
            reason = str(failure.value)
        elif failure.check(defer.TimeoutError, txredisapi.TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        elif failure.check(txredisapi.ConnectionError):
            reason = "not connected"
        elif failure.check(txredisapi.ResponseError):
            # Redis's own error text names the problem, not the arguments.
            reason = "error reply: " + str(failure.value).splitlines()[0][:120]
        else:
            self.log.error("unexpected {error_type} in Redis {operation}",
                           error_type=failure.type.__name__, operation=operation)
            reason = f"unexpected {failure.type.__name__}"
        raise StateStoreError(f"Redis {operation}: {reason}")

    def _key(self, key: str) -> str:
        return self.prefix + key

    def incr(self, key: str, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)
        return self._call("incr", lambda: self._redis.eval(INCR, [self._key(key)], [seconds]))

    def get(self, key: str) -> defer.Deferred:
        return self._call("get", lambda: self._redis.get(self._key(key)))

    def set(self, key: str, value: bytes, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)

        async def command() -> None:
            await self._redis.set(self._key(key), bytes(value), expire=seconds)
        return self._call("set", command)

    def add(self, key: str, value: bytes, ttl: int) -> defer.Deferred:
        # SET NX EX is a single command, hence atomic without a script.
        seconds = whole_seconds(ttl)

        async def command() -> bool:
            reply = await self._redis.set(self._key(key), bytes(value), expire=seconds,
                                          only_if_not_exists=True)
            return reply is not None
        return self._call("add", command)

    def advance(self, key: str, value: int, ttl: int) -> defer.Deferred:
        seconds = whole_seconds(ttl)

        async def command() -> bool:
            return bool(int(await self._redis.eval(ADVANCE, [self._key(key)], [int(value), seconds])))
        return self._call("advance", command)

    def delete(self, *keys: str) -> defer.Deferred:
        if not keys:
            return defer.succeed(None)

        async def command() -> None:
            await self._redis.delete([self._key(key) for key in keys])
        return self._call("delete", command)

    def window_count(self, key: str, window: float) -> defer.Deferred:
        window = positive_window(window)
        cutoff = _score(self.clock.seconds() - window)
        return self._call("window_count",
                          lambda: self._redis.eval(WINDOW_COUNT, [self._key(key)], [cutoff]))

    def window_add(self, key: str, window: float) -> defer.Deferred:
        window = positive_window(window)
        now = self.clock.seconds()
        self._members += 1
        # Unique even for two events in the same microsecond, from any process.
        member = f"{_score(now)}:{self._instance}:{self._members}"
        ttl_ms = max(1, int(window * 1000))
        args = [_score(now - window), _score(now), member, ttl_ms]
        return self._call("window_add",
                          lambda: self._redis.eval(WINDOW_ADD, [self._key(key)], args))

    def ping(self) -> defer.Deferred:
        async def command() -> None:
            await self._redis.ping()
        return self._call("ping", command)

    def disconnect(self) -> defer.Deferred:
        """
        Close the pool and stop reconnecting; fires once every connection is
        closed. Calling it again (a service stop, then a test's cleanup) is fine.
        """
        waiter: defer.Deferred = defer.Deferred()
        if self._closing is None:
            self._closing = [waiter]
            self._wake(StateStoreError("disconnected"))
            # txredisapi cannot disconnect a pool twice, hence the one call.
            self._factory.disconnect().addBoth(self._disconnected)
        elif self._closing:
            self._closing.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _disconnected(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure("closing the Redis connections", result)
        waiters, self._closing = self._closing or [], []
        for waiter in waiters:
            waiter.callback(None)


def _score(seconds: float) -> str:
    """A window timestamp as a sorted-set score, to the microsecond."""
    return f"{seconds:.6f}"


__all__ = ["POOL_SIZE", "RedisStateStore", "parse_url"]
