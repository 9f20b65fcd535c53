"""
The built-in webhook plugin: delivery events POSTed as signed JSON, against a
real HTTP receiver on loopback (real treq), and with treq's StubTreq on a
task.Clock for the queue bound, the backoff, giving up and timeouts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gomail.configschema import PluginSettings
from gomail.extension.loader import LoadedPlugin, PluginError, Plugins, discover, load_plugins
from gomail.extension.reloading import PluginReloader
from gomail.extension.runner import HookRunner, plugin_metrics
from gomail.extension.smtphooks import SMTPHooks
from gomail.extension.wiring import PluginParts, plugin_services
from gomail.interfaces import IDeliveryObserver
from gomail.plugin import DeliveryEvent, PluginContext, Settings
from gomail.plugins.webhook import Webhook

SECRET = "webhook-test-secret"


def event(kind: str = "delivered", queue_id: str = "q1") -> DeliveryEvent:
    return DeliveryEvent(kind, queue_id, "alice@example.org", ("bob@example.com",), 1700000000.0,
                         "bob@example.com", "250 2.0.0 ok")


class Receiver(Resource):
    """Records POSTs; answers the codes in C{codes} in turn (then 200); C{hang}: never answers."""

    isLeaf = True

    def __init__(self, codes: list[int] | None = None) -> None:
        super().__init__()
        self.codes = list(codes or [])
        self.requests: list[tuple[dict[bytes, bytes], bytes]] = []
        self.hang = False
        self.waiting: list[tuple[int, Deferred]] = []

    def render_POST(self, request: Any) -> Any:
        body = request.content.read()
        headers = {name.lower(): values[0] for name, values in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((headers, body))
        for count, waiting in list(self.waiting):
            if len(self.requests) >= count:
                self.waiting.remove((count, waiting))
                waiting.callback(None)
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"ok"

    def wait(self, count: int) -> Deferred:
        """Fires once C{count} requests arrived."""
        d: Deferred = Deferred()
        if len(self.requests) >= count:
            d.callback(None)
        else:
            self.waiting.append((count, d))
        return d


class Redirecting(Resource):
    """Answers every POST with a 303 to /elsewhere, and counts the GETs that would follow it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posts = self.gets = 0

    def render_POST(self, request: Any) -> bytes:
        self.posts += 1
        request.setResponseCode(303)
        request.setHeader(b"Location", b"/elsewhere")
        return b""

    def render_GET(self, request: Any) -> bytes:
        self.gets += 1
        return b"ok"


class Answered:
    """A response that has been read already (for L{FakeHTTP})."""

    def __init__(self, code: int) -> None:
        self.code = code


class FakeHTTP:
    """
    The two calls the sender makes of treq: C{post} gives, in turn, each of
    C{outcomes} (an exception to raise at once, a Deferred, or a status code).
    """

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.posted: list[bytes] = []

    def post(self, url: str, data: bytes, **kwargs: Any) -> Deferred:
        self.posted.append(data)
        outcome = self.outcomes.pop(0) if self.outcomes else 200
        if isinstance(outcome, Exception):
            raise outcome
        return outcome if isinstance(outcome, Deferred) else succeed(Answered(outcome))

    def collect(self, response: Any, collector: Any) -> Deferred:
        return succeed(None)


def webhook(clock: Any, http: Any, **settings: Any) -> Webhook:
    table = {"urls": ["http://127.0.0.1/hook"], "secret": SECRET, **settings}
    return Webhook(Settings("webhook", table), PluginContext(clock, "mx.test", "/data", "webhook"), http=http)


class RealReceiverTests(TestCase):
    """A real HTTP receiver on 127.0.0.1, the real treq."""

    def setUp(self) -> None:
        self.receiver = Receiver()
        port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/hook"

    def make(self, **settings: Any) -> Webhook:
        import treq

        hook = Webhook(Settings("webhook", {"urls": [self.url], "secret": SECRET, **settings}),
                       PluginContext(reactor, "mx.test", "/data", "webhook"), http=treq)
        self.addCleanup(hook.stop)
        return hook

    async def test_signed_json_body(self) -> None:
        """The body is the event's JSON; the signature header verifies with the secret; kind and type are set."""
        hook = self.make()
        hook.delivery_event(event())
        await self.receiver.wait(1)
        headers, body = self.receiver.requests[0]
        self.assertEqual(json.loads(body)["event"], "delivered")
        self.assertEqual(json.loads(body)["queue_id"], "q1")
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        self.assertTrue(hmac.compare_digest(headers[b"x-gomail-signature"].decode(), expected))
        self.assertEqual(headers[b"x-gomail-event"], b"delivered")
        self.assertEqual(headers[b"content-type"], b"application/json")
        self.assertEqual(headers[b"user-agent"], b"gomail-webhook")

    async def test_retried_after_500(self) -> None:
        """A 500 is tried again (after retryDelay); after the 200 nothing more is sent."""
        self.receiver.codes = [500]
        hook = self.make(retryDelay=0.01)
        hook.delivery_event(event())
        await self.receiver.wait(2)
        self.assertEqual(self.receiver.requests[0][1], self.receiver.requests[1][1])
        hook.delivery_event(event("failed", "q2"))
        await self.receiver.wait(3)  # one POST at a time, in order: the retry's 200 was read first
        self.assertEqual(json.loads(self.receiver.requests[2][1])["queue_id"], "q2")
        self.assertEqual((hook.sender.retries, len(self.receiver.requests)), (1, 3))


class StubTests(SynchronousTestCase):
    """StubTreq over the same receiver, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.receiver = Receiver()
        self.stub = StubTreq(self.receiver)

    def test_only_configured_events(self) -> None:
        """Events not listed in events are not sent (queued is off by default)."""
        hook = webhook(self.clock, self.stub)
        hook.delivery_event(event("queued"))
        hook.delivery_event(event("bounced"))
        self.stub.flush()
        self.assertEqual([json.loads(body)["event"] for _, body in self.receiver.requests], ["bounced"])

    def test_backoff_doubles_then_gives_up(self) -> None:
        """Failures are retried after 2, 4, 8 s; after maxRetries it gives up, counted, and the next event goes."""
        self.receiver.codes = [500] * 4
        hook = webhook(self.clock, self.stub, maxRetries=3, retryDelay=2)
        hook.delivery_event(event(queue_id="doomed"))
        hook.delivery_event(event(queue_id="next"))
        self.stub.flush()
        for wait, expected in ((1.9, 1), (0.1, 2), (3.9, 2), (0.1, 3), (8.0, 5)):
            self.clock.advance(wait)
            self.stub.flush()
            self.assertEqual(len(self.receiver.requests), expected, wait)
        self.stub.flush()
        self.assertEqual(hook.sender.failed, 1)
        self.assertEqual(json.loads(self.receiver.requests[-1][1])["queue_id"], "next")
        self.assertEqual(hook.sender.sent, 1)

    def test_queue_bound(self) -> None:
        """Past queueSize, events are dropped and counted; delivery_event never waits."""
        self.receiver.hang = True
        hook = webhook(self.clock, self.stub, queueSize=3)
        for number in range(5):
            hook.delivery_event(event(queue_id=str(number)))
        self.assertEqual((hook.sender.pending, hook.sender.dropped), (3, 2))
        runner = HookRunner(self.clock, 1.0)
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        plugins = load_plugins(PluginSettings(), None, "h", "/d")
        plugins.loaded.append(type("Loaded", (), {"name": "webhook", "extension": hook})())
        registry.register(plugin_metrics(runner, plugins))
        self.assertIn('gomail_plugin_value{name="dropped",plugin="webhook"} 2.0', generate_latest(registry).decode())

    def test_timeout(self) -> None:
        """A receiver that never answers is cut off after timeout and tried again."""
        self.receiver.hang = True
        hook = webhook(self.clock, self.stub, timeout=5, retryDelay=1)
        hook.delivery_event(event())
        self.stub.flush()
        self.assertEqual(len(self.receiver.requests), 1)
        self.clock.advance(5)
        self.assertEqual(hook.sender.retries, 1)
        self.clock.advance(1)
        self.stub.flush()
        self.assertEqual(len(self.receiver.requests), 2)
        hook.stop()


class FailureTests(SynchronousTestCase):
    """Connection errors, answers that are not 2xx, and stopping, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()

    def test_redirect_not_followed(self) -> None:
        """A 303 is a failed POST like any other non-2xx: never followed (it would become a GET)."""
        receiver = Redirecting()
        stub = StubTreq(receiver)
        hook = webhook(self.clock, stub, maxRetries=0)
        hook.delivery_event(event())
        stub.flush()
        self.assertEqual((receiver.posts, receiver.gets), (1, 0))
        self.assertEqual((hook.sender.sent, hook.sender.failed), (0, 1))

    def test_connection_refused_retried_then_logged_without_secret(self) -> None:
        """A refused connection is tried again after retryDelay; giving up is logged, the secret never is."""
        http = FakeHTTP(fail(ConnectionRefusedError()), fail(ConnectionRefusedError()))
        hook = webhook(self.clock, http, maxRetries=1, retryDelay=1)
        with capturedLogs() as events:
            hook.delivery_event(event())
            self.assertEqual(len(http.posted), 1)
            self.clock.advance(1)
        self.assertEqual(len(http.posted), 2)
        self.assertEqual((hook.sender.retries, hook.sender.failed, hook.sender.sent), (1, 1, 0))
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("gave up on a delivered event", text)
        self.assertIn("ConnectionRefusedError", text)
        self.assertNotIn(SECRET, text)
        hook.delivery_event(event(queue_id="next"))  # the sender goes on with the next event
        self.assertEqual((len(http.posted), hook.sender.sent), (3, 1))

    def test_post_raising_at_once_does_not_stall(self) -> None:
        """An HTTP client that raises instead of failing its Deferred: given up (no retries), the next goes."""
        http = FakeHTTP(ValueError("bad request"))
        hook = webhook(self.clock, http, maxRetries=0)
        hook.delivery_event(event(queue_id="first"))
        hook.delivery_event(event(queue_id="second"))
        self.assertEqual([json.loads(body)["queue_id"] for body in http.posted], ["first", "second"])
        self.assertEqual((hook.sender.failed, hook.sender.sent, hook.sender.pending), (1, 1, 0))

    def test_stop_cancels_pending_retry(self) -> None:
        """stop() cancels the retry waiting on the clock; nothing is posted after it, new events are ignored."""
        http = FakeHTTP(500)
        hook = webhook(self.clock, http, retryDelay=5)
        hook.delivery_event(event())
        self.assertTrue(self.clock.getDelayedCalls())
        hook.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        hook.delivery_event(event(queue_id="late"))
        self.clock.advance(1000)
        self.assertEqual(len(http.posted), 1)

    def test_stopped_with_gomail(self) -> None:
        """The service gomail adds for plugins with stop() stops the webhook: its pending retry is cancelled."""
        http = FakeHTTP(500)
        hook = webhook(self.clock, http, retryDelay=5)
        parts = PluginParts(Plugins([LoadedPlugin("webhook", hook, (IDeliveryObserver,), "webhook.py")]),
                            HookRunner(self.clock, 1.0), SMTPHooks(HookRunner(self.clock, 1.0), [], []))
        services = plugin_services(parts, None)
        for service in services:
            service.startService()
        hook.delivery_event(event())
        self.assertTrue(self.clock.getDelayedCalls())
        for service in reversed(services):
            service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReconfigureTests(SynchronousTestCase):
    """SIGHUP: new webhook settings, through gomail's plugin reloader."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.receiver = Receiver()
        self.receiver.hang = True  # what is posted stays in flight: the queues keep their events
        self.stub = StubTreq(self.receiver)
        self.table = {"urls": ["http://a.test/hook"], "secret": SECRET}
        self.hook = webhook(self.clock, self.stub, **self.table)
        parts = PluginParts(Plugins([LoadedPlugin("webhook", self.hook, (IDeliveryObserver,), "webhook.py")]),
                            HookRunner(self.clock, 1.0), SMTPHooks(HookRunner(self.clock, 1.0), [], []))
        self.reloader = PluginReloader(parts, PluginSettings(enabled=(("webhook", self.table),)), self.clock,
                                       "mx.test", "/data")

    def test_new_urls_and_events(self) -> None:
        """A removed URL's queue is dropped (counted); a new URL gets the next events; events changes at once."""
        self.hook.delivery_event(event(queue_id="1"))
        self.hook.delivery_event(event(queue_id="2"))
        self.stub.flush()
        new = {"urls": ["http://b.test/hook"], "secret": SECRET, "events": ["queued"]}
        applied, restart, apply = self.reloader.prepare(PluginSettings(enabled=(("webhook", new),)))
        self.assertEqual((applied, restart), (["plugins.webhook"], []))
        apply()
        self.assertEqual((self.hook.sender.dropped, self.hook.sender.pending), (2, 0))
        self.hook.delivery_event(event("delivered", "3"))
        self.hook.delivery_event(event("queued", "4"))
        self.stub.flush()
        self.assertEqual([(h[b"host"], json.loads(body)["queue_id"]) for h, body in self.receiver.requests],
                         [(b"a.test", "1"), (b"b.test", "4")])

    def test_refused_changes_nothing(self) -> None:
        """A bad new table stops the reload when it is prepared (before anything applies), named; the
        running settings stay."""
        before = self.hook.sender.settings
        for table, expected in (
                ({"urls": ["ftp://b.test/"], "secret": SECRET}, "plugins.webhook.urls[0]: "),
                ({"urls": ["http://b.test/"], "secret": SECRET, "colour": "red"}, "plugins.webhook.colour: ")):
            error = self.assertRaises(PluginError, self.reloader.prepare,
                                      PluginSettings(enabled=(("webhook", table),)))
            self.assertTrue(str(error).startswith(expected), str(error))
        self.assertIs(self.hook.sender.settings, before)


class ConfigurationTests(SynchronousTestCase):
    """Found and built by the loader; bad settings named."""

    def build(self, table: dict) -> Any:
        return load_plugins(PluginSettings(enabled=(("webhook", table),)), Clock(), "h", "/d")

    def test_found_and_built(self) -> None:
        """discover() finds webhook; a good table builds an IDeliveryObserver."""
        self.assertIn("webhook", discover())
        [loaded] = self.build({"urls": ["https://hooks.example.com/x"], "secret": "s"}).loaded
        self.assertEqual([i.__name__ for i in loaded.interfaces], ["IDeliveryObserver"])

    def test_errors_name_the_key(self) -> None:
        """A missing secret, a bad URL, a bad event or an unknown key: plugins.webhook.<key>."""
        for table, expected in (
                ({"urls": ["https://h.example/x"]}, "plugins.webhook.secret: must be set"),
                ({"urls": ["ftp://h.example/x"], "secret": "s"}, "plugins.webhook.urls[0]: 'ftp://h.example/x'"),
                ({"urls": ["https://h.example/x"], "secret": "s", "events": ["sent"]}, "plugins.webhook.events[0]"),
                ({"urls": ["https://h.example/x"], "secret": "s", "retries": 3}, "plugins.webhook.retries: unknown key"),
                ({"secret": "s"}, "plugins.webhook.urls: give at least one URL")):
            error = self.assertRaises(PluginError, self.build, table)
            self.assertTrue(str(error).startswith(expected), str(error))

    def test_bad_urls(self) -> None:
        """URLs gomail could not post to are refused when read, each named with its index; no password echoed."""
        for url, problem in (("http://h.example /x", "has spaces or control characters"),
                             ("http://h.example:99999/", "is not a URL"),
                             ("http://[::1/", "is not a URL"),
                             ("mailto:a@h.example", "is not an http:// or https:// URL"),
                             ("https://user:pw@h.example/x", "must not hold a user name or password")):
            error = self.assertRaises(PluginError, self.build, {"urls": ["https://ok.example/", url],
                                                                "secret": "s"})
            self.assertTrue(str(error).startswith("plugins.webhook.urls[1]: "), str(error))
            self.assertIn(problem, str(error))
            self.assertNotIn("pw", str(error))

    def test_retry_delay_within_the_cap(self) -> None:
        """retryDelay above the 300 s cap on the wait between tries is refused, not silently shortened later."""
        error = self.assertRaises(PluginError, self.build, {"urls": ["https://h.example/x"], "secret": "s",
                                                            "retryDelay": 301})
        self.assertTrue(str(error).startswith("plugins.webhook.retryDelay: "), str(error))
