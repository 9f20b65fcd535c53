"""
The state store contract, run against the memory store (on a task.Clock) and
the Redis store (on a real redis-server), plus what only Redis can do: survive
the server going away and coming back, refuse a wrong password, share keys
between stores under a prefix.

Window timestamps come from the store's clock, so the sliding-window tests
drive a task.Clock for both stores. TTLs are counted by the Redis server's own
clock, which a test cannot advance: where the memory variant lets the time
pass, the Redis variant reads the key's PTTL on the server instead.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from gomail.state import IStateStore, StateStoreError
from gomail.state.memory import MemoryStateStore
from gomail.state.redis import RedisStateStore, parse_url
from tests.processes import free_port, poll
from tests.redisserver import RedisServer, start_redis

#: Far longer than any TTL in these tests: a window that sees every event of a log.
EVERYTHING = 10**9


def async_test(f: Any) -> Any:
    """Run an C{async def} test method as a Deferred-returning one for trial."""
    def wrapper(self: Any) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(f(self))
    wrapper.__name__, wrapper.__doc__ = f.__name__, f.__doc__
    return wrapper


class StateStoreContractMixin:
    """
    What every L{IStateStore} does. A test case using it sets C{self.store} and
    C{self.clock} (the store's clock) and implements L{pass_ttl}.
    """

    store: Any
    clock: task.Clock

    async def pass_ttl(self, key: str, seconds: int, log: bool = False) -> None:
        """
        Check that C{key} (a value, or a window log when C{log}) lives C{seconds}
        more and no longer, then make that time pass so the key is gone.
        """
        raise NotImplementedError()

    async def present(self, key: str, log: bool) -> bool:
        """Whether C{key} exists, through the store's own API."""
        if log:
            return await self.store.window_count(key, EVERYTHING) > 0
        return await self.store.get(key) is not None

    def test_interface(self) -> None:
        """The store provides IStateStore."""
        verifyObject(IStateStore, self.store)

    @async_test
    async def test_ping(self) -> None:
        """A working store answers ping with None."""
        self.assertIsNone(await self.store.ping())

    @async_test
    async def test_incr_counts(self) -> None:
        """A counter starts at 1 and each incr returns the new value; counters are independent."""
        self.assertEqual([await self.store.incr("c", 60) for _ in range(3)], [1, 2, 3])
        self.assertEqual(await self.store.incr("other", 60), 1)
        self.assertEqual(await self.store.get("c"), b"3")

    @async_test
    async def test_incr_ttl_set_at_creation(self) -> None:
        """The TTL of the first incr stands: later ones neither shorten nor extend it."""
        await self.store.incr("c", 100)
        await self.store.incr("c", 5)
        await self.store.incr("c", 1000)
        await self.pass_ttl("c", 100)
        self.assertEqual(await self.store.incr("c", 10), 1)
        await self.pass_ttl("c", 10)

    @async_test
    async def test_incr_of_a_value_fails(self) -> None:
        """incr of a key holding a non-number fails with StateStoreError."""
        await self.store.set("v", b"text", 60)
        with self.assertRaises(StateStoreError):
            await self.store.incr("v", 60)

    @async_test
    async def test_get_set(self) -> None:
        """get returns the bytes set (any bytes), None for an absent key; set overwrites."""
        self.assertIsNone(await self.store.get("v"))
        self.assertIsNone(await self.store.set("v", b"\x00\xff one", 60))
        self.assertEqual(await self.store.get("v"), b"\x00\xff one")
        await self.store.set("v", b"two", 60)
        self.assertEqual(await self.store.get("v"), b"two")

    @async_test
    async def test_set_expiry(self) -> None:
        """A value lives for its TTL; setting it again starts a new TTL."""
        await self.store.set("v", b"one", 1000)
        await self.store.set("v", b"two", 30)
        await self.pass_ttl("v", 30)
        self.assertIsNone(await self.store.get("v"))

    @async_test
    async def test_add_if_absent(self) -> None:
        """add stores only when the key is absent, and says whether it did."""
        self.assertTrue(await self.store.add("m", b"first", 60))
        self.assertFalse(await self.store.add("m", b"second", 60))
        self.assertEqual(await self.store.get("m"), b"first")

    @async_test
    async def test_add_expiry(self) -> None:
        """A failed add does not extend the TTL; once the mark has expired, add succeeds again."""
        await self.store.add("m", b"first", 20)
        await self.store.add("m", b"second", 1000)
        await self.pass_ttl("m", 20)
        self.assertTrue(await self.store.add("m", b"third", 60))
        self.assertEqual(await self.store.get("m"), b"third")

    @async_test
    async def test_advance(self) -> None:
        """advance stores a number only above the one held, and says whether it did."""
        self.assertTrue(await self.store.advance("mark", 56_666_666, 120))
        self.assertFalse(await self.store.advance("mark", 56_666_666, 120))
        self.assertFalse(await self.store.advance("mark", 56_666_665, 120))
        self.assertEqual(await self.store.get("mark"), b"56666666")
        self.assertTrue(await self.store.advance("mark", 56_666_667, 120))
        self.assertEqual(await self.store.get("mark"), b"56666667")

    @async_test
    async def test_advance_expiry(self) -> None:
        """A refused advance keeps the TTL; a stored one starts its own; once expired, any number is stored."""
        await self.store.advance("mark", 10, 100)
        await self.store.advance("mark", 9, 1000)
        await self.pass_ttl("mark", 100)
        self.assertTrue(await self.store.advance("mark", 1, 60))
        await self.store.advance("mark", 2, 10)
        await self.pass_ttl("mark", 10)

    @async_test
    async def test_advance_of_a_value_fails(self) -> None:
        """advance of a key holding a non-number fails with StateStoreError and leaves the value."""
        await self.store.set("v", b"text", 60)
        with self.assertRaises(StateStoreError):
            await self.store.advance("v", 1, 60)
        self.assertEqual(await self.store.get("v"), b"text")

    @async_test
    async def test_delete(self) -> None:
        """delete removes the keys named, values and logs alike; absent or no keys are fine."""
        for key in ("a", "b", "c"):
            await self.store.set(key, b"x", 60)
        await self.store.window_add("log", 60)
        self.assertIsNone(await self.store.delete("a", "b", "log", "absent"))
        self.assertIsNone(await self.store.delete())
        self.assertEqual([await self.store.get(k) for k in ("a", "b", "c")], [None, None, b"x"])
        self.assertEqual(await self.store.window_count("log", 60), 0)
        self.assertEqual(await self.store.incr("a", 60), 1)

    @async_test
    async def test_window_empty(self) -> None:
        """A log nobody wrote counts 0."""
        self.assertEqual(await self.store.window_count("log", 60), 0)

    @async_test
    async def test_window_slides(self) -> None:
        """Events leave the window one by one, each C{window} seconds after it happened."""
        self.assertEqual(await self.store.window_add("log", 60), 1)
        self.clock.advance(10)
        self.assertEqual(await self.store.window_add("log", 60), 2)
        self.clock.advance(10)
        self.assertEqual(await self.store.window_add("log", 60), 3)
        self.clock.advance(39)  # t=59
        self.assertEqual(await self.store.window_count("log", 60), 3)
        self.clock.advance(1)  # t=60: the event of t=0 has left
        self.assertEqual(await self.store.window_count("log", 60), 2)
        self.clock.advance(10)
        self.assertEqual(await self.store.window_count("log", 60), 1)
        self.assertEqual(await self.store.window_add("log", 60), 2)
        self.clock.advance(10)  # t=80
        self.assertEqual(await self.store.window_count("log", 60), 1)

    @async_test
    async def test_window_same_instant(self) -> None:
        """Several events at the same instant all count."""
        counts = [await self.store.window_add("log", 60) for _ in range(5)]
        self.assertEqual(counts, [1, 2, 3, 4, 5])
        self.assertEqual(await self.store.window_count("log", 60), 5)

    @async_test
    async def test_window_no_reset_on_the_hour(self) -> None:
        """An hour window across a clock hour keeps its events: nothing resets at :00."""
        self.clock.advance(3590)
        await self.store.window_add("log", 3600)
        self.clock.advance(9)
        await self.store.window_add("log", 3600)
        self.clock.advance(2)  # t=3601, past the hour
        self.assertEqual(await self.store.window_add("log", 3600), 3)
        self.clock.advance(3588)  # t=7189
        self.assertEqual(await self.store.window_count("log", 3600), 3)
        self.clock.advance(1)  # t=7190
        self.assertEqual(await self.store.window_count("log", 3600), 2)

    @async_test
    async def test_windows_are_per_key(self) -> None:
        """Two logs do not share events."""
        await self.store.window_add("one", 60)
        await self.store.window_add("one", 60)
        self.assertEqual(await self.store.window_add("two", 60), 1)
        self.assertEqual(await self.store.window_count("one", 60), 2)

    @async_test
    async def test_window_log_expiry(self) -> None:
        """A log expires C{window} seconds after its newest event."""
        await self.store.window_add("log", 300)
        self.clock.advance(100)
        await self.store.window_add("log", 60)
        await self.pass_ttl("log", 60, log=True)
        self.assertEqual(await self.store.window_count("log", EVERYTHING), 0)

    def test_bad_ttl(self) -> None:
        """A TTL that is not a whole number of seconds >= 1 is a caller's bug: ValueError."""
        for ttl in (0, -1, 1.5):
            self.assertRaises(ValueError, self.store.set, "v", b"x", ttl)
            self.assertRaises(ValueError, self.store.incr, "c", ttl)
            self.assertRaises(ValueError, self.store.add, "m", b"x", ttl)
            self.assertRaises(ValueError, self.store.advance, "m", 1, ttl)
        self.assertRaises(ValueError, self.store.window_add, "log", 0)


class MemoryStateStoreTests(StateStoreContractMixin, TestCase):
    """The contract, for the memory store on a task.Clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.store = MemoryStateStore(self.clock)

    async def pass_ttl(self, key: str, seconds: int, log: bool = False) -> None:
        self.clock.advance(seconds - 0.001)
        self.assertTrue(await self.present(key, log), f"{key} expired before {seconds} s")
        self.clock.advance(0.001)
        self.assertFalse(await self.present(key, log), f"{key} still there after {seconds} s")


class MemoryStateStoreSweepTests(SynchronousTestCase):
    """Expired entries do not accumulate in the memory store."""

    def test_sweep(self) -> None:
        """Keys touched once and never again are dropped by the periodic sweep."""
        clock = task.Clock()
        store = MemoryStateStore(clock)
        for n in range(store.SWEEP_EVERY // 2):
            store.set(f"v{n}", b"x", 10)
            store.window_add(f"log{n}", 10)
        self.assertEqual(len(store), store.SWEEP_EVERY)
        clock.advance(10)
        for _ in range(store.SWEEP_EVERY):
            self.successResultOf(store.get("unrelated"))
        self.assertEqual(len(store), 0)

    def test_results_are_synchronous(self) -> None:
        """Every operation returns an already-fired Deferred."""
        store = MemoryStateStore(task.Clock())
        self.assertEqual(self.successResultOf(store.incr("c", 5)), 1)
        self.assertIsNone(self.successResultOf(store.ping()))


class RedisStoreMixin:
    """Start a redis-server, make stores on it, and clean them up."""

    timeout = 60

    async def redis(self, password: str | None = None) -> RedisServer:
        self.server = await start_redis(self, reactor, password)
        return self.server

    def make_store(self, prefix: str = "test:", timeout: float = 2.0, clock: Any = None,
                   port: int | None = None, password: str | None = None) -> RedisStateStore:
        """A store on the test's server (or C{port}), disconnected at cleanup."""
        store = RedisStateStore(clock or task.Clock(), "127.0.0.1", port or self.server.port,
                                password, 0, prefix=prefix, timeout=timeout, reactor=reactor)
        self.addCleanup(store.disconnect)
        return store

    async def raw(self) -> Any:
        """A plain txredisapi connection to the test's server, closed at cleanup."""
        connection = await txredisapi.Connection("127.0.0.1", self.server.port, reconnect=False,
                                                 password=self.server.password)
        self.addCleanup(connection.disconnect)
        return connection


class RedisStateStoreTests(RedisStoreMixin, StateStoreContractMixin, TestCase):
    """The contract, for the Redis store on a real redis-server (window times on a task.Clock)."""

    @async_test
    async def setUp(self) -> None:
        await self.redis()
        self.clock = task.Clock()
        self.store = self.make_store(clock=self.clock)
        self.client = await self.raw()

    async def pass_ttl(self, key: str, seconds: int, log: bool = False) -> None:
        # The server's clock cannot be advanced: check the TTL it holds, and let
        # DEL stand for the expiry that the TTL guarantees.
        remaining = await self.client.execute_command("PTTL", "test:" + key)
        self.assertTrue((seconds - 1) * 1000 < remaining <= seconds * 1000,
                        f"{key} has a TTL of {remaining} ms, not {seconds} s")
        await self.client.delete("test:" + key)

    @async_test
    async def test_prefix(self) -> None:
        """Keys live under the store's prefix; stores with other prefixes do not see them."""
        other = self.make_store(prefix="other:", clock=self.clock)
        await self.store.set("k", b"mine", 60)
        await other.set("k", b"theirs", 60)
        await self.store.incr("c", 60)
        await self.store.window_add("log", 60)
        self.assertEqual(await self.store.get("k"), b"mine")
        self.assertEqual(await other.get("k"), b"theirs")
        self.assertEqual(await other.incr("c", 60), 1)
        self.assertEqual(await other.window_count("log", 60), 0)
        await other.delete("k")
        self.assertEqual(await self.store.get("k"), b"mine")
        self.assertEqual(sorted(await self.client.keys("*")),
                         sorted(["test:k", "test:c", "test:log", "other:c"]))

    @async_test
    async def test_shared(self) -> None:
        """Two stores with the same prefix (two gomail processes) share counters, marks and logs."""
        other = self.make_store(clock=self.clock)
        await self.store.incr("c", 60)
        self.assertEqual(await other.incr("c", 60), 2)
        self.assertTrue(await self.store.advance("mark", 7, 60))
        self.assertFalse(await other.advance("mark", 7, 60))
        await self.store.window_add("log", 60)
        self.assertEqual(await other.window_add("log", 60), 2)


class RedisFailureTests(RedisStoreMixin, TestCase):
    """The Redis store when the server is away, comes back, hangs, or refuses us."""

    async def assert_every_operation_fails(self, store: RedisStateStore, within: float) -> None:
        """Each operation fails with StateStoreError in less than C{within} seconds."""
        operations = [
            lambda: store.incr("c", 60), lambda: store.get("v"), lambda: store.set("v", b"x", 60),
            lambda: store.add("m", b"x", 60), lambda: store.advance("n", 1, 60), lambda: store.delete("a", "b"),
            lambda: store.window_count("log", 60), lambda: store.window_add("log", 60), store.ping,
        ]
        for operation in operations:
            started = reactor.seconds()
            with self.assertRaises(StateStoreError) as caught:
                await operation()
            self.assertLess(reactor.seconds() - started, within, str(caught.exception))

    @async_test
    async def test_never_reachable(self) -> None:
        """With nothing listening, every operation fails with StateStoreError within the timeout."""
        store = self.make_store(timeout=0.5, port=free_port())
        await self.assert_every_operation_fails(store, within=1.0)

    @async_test
    async def test_down_then_back(self) -> None:
        """Once Redis stops, operations fail fast; when it restarts, the store reconnects."""
        server = await self.redis()
        store = self.make_store(timeout=0.5)
        await store.set("v", b"before", 60)
        await server.stop()
        await self.assert_every_operation_fails(store, within=0.6)
        await server.start()
        await poll(reactor, lambda: store._factory.size > 0, timeout=30)
        self.assertIsNone(await store.get("v"))  # the restarted server has no data
        self.assertEqual(await store.incr("c", 60), 1)
        self.assertIsNone(await store.ping())

    @async_test
    async def test_hung_server(self) -> None:
        """A server that accepts but never answers makes every operation fail within the timeout."""
        from twisted.internet.protocol import Factory, Protocol
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        store = self.make_store(timeout=0.5, port=port.getHost().port)
        await self.assert_every_operation_fails(store, within=1.0)

    @async_test
    async def test_wrong_password(self) -> None:
        """A wrong password fails every operation with StateStoreError; the right one works."""
        await self.redis(password="right horse")
        store = self.make_store(timeout=1.0, password="wrong")
        await self.assert_every_operation_fails(store, within=1.5)
        good = self.make_store(password="right horse")
        self.assertEqual(await good.incr("c", 60), 1)

    @async_test
    async def test_disconnect(self) -> None:
        """After disconnect, operations fail with StateStoreError at once."""
        await self.redis()
        # A long timeout, and a bound well under it (a loaded CI machine once took 0.17 s for "at once").
        store = self.make_store(timeout=10.0)
        await store.ping()
        await store.disconnect()
        await self.assert_every_operation_fails(store, within=2.0)


class ParseURLTests(SynchronousTestCase):
    """C{redis://} URLs."""

    def test_full(self) -> None:
        """Password (percent-decoded), host, port and database are read."""
        self.assertEqual(parse_url("redis://:p%40ss@redis.example:6380/3"),
                         ("redis.example", 6380, "p@ss", 3))

    def test_defaults(self) -> None:
        """Without port, password or database: 6379, None, 0."""
        self.assertEqual(parse_url("redis://localhost"), ("localhost", 6379, None, 0))
        self.assertEqual(parse_url("redis://localhost/"), ("localhost", 6379, None, 0))

    def test_invalid(self) -> None:
        """Other schemes, user names, bad ports and databases are refused."""
        for url in ("http://localhost", "rediss://localhost", "redis://user:p@localhost",
                    "redis://localhost:port", "redis://localhost/db", "redis:///0"):
            self.assertRaises(ValueError, parse_url, url)
