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
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gomail.configschema import PluginSettings
from gomail.extension.loader import PluginError, discover, load_plugins
from gomail.extension.runner import HookRunner, plugin_metrics
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
