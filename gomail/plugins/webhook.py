# -*- test-case-name: tests.test_plugin_webhook -*-
"""
The built-in C{webhook} plugin: delivery events POSTed as JSON to URLs.

    [plugins.webhook]
    urls = ["https://hooks.example.com/gomail"]
    secret = "a long random string"      # the HMAC-SHA256 key of X-Gomail-Signature
    events = ["delivered", "deferred", "bounced", "failed"]   # also "queued"
    timeout = 10          # seconds per POST
    maxRetries = 5        # tries after the first, 2 s apart and doubling (retryDelay), at most 300 s
    retryDelay = 2
    queueSize = 10000     # events waiting for each URL; past it new ones are dropped (counted)

Each POST carries one event (L{gomail.plugin.DeliveryEvent.to_json}) as
compact JSON, with C{X-Gomail-Event: <kind>} and C{X-Gomail-Signature:
sha256=<hex HMAC-SHA256 of the body>}. Delivery never waits for it: the event
is queued in memory and sent in the background (L{gomail.extension.webhooksend});
events still queued when gomail stops are not kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import treq
from zope.interface import implementer

from gomail.extension.webhooksend import MAX_RETRY_DELAY, WebhookSender, WebhookSettings
from gomail.interfaces import IDeliveryObserver
from gomail.plugin import DeliveryEvent, PluginConfigError, PluginContext, Settings, plugin

KINDS = ("queued", "delivered", "deferred", "bounced", "failed")
DEFAULT_EVENTS = ("delivered", "deferred", "bounced", "failed")


def _url_problem(url: str) -> str | None:
    """Why C{url} cannot be a webhook (checked here, not at the first POST), or None."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return f"{url!r} has spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises for a port out of range
    except ValueError as e:
        return f"{url!r} is not a URL: {e}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http:// or https:// URL"
    if parts.username is not None or parts.password is not None:
        # Not sent (the agent does not turn them into Authorization), and logged with the URL.
        return "must not hold a user name or password: receivers check X-Gomail-Signature"
    return None


def read_settings(settings: Settings) -> WebhookSettings:
    """Check the plugin's table; every problem names its key."""
    urls = settings.texts("urls")
    if not urls:
        raise PluginConfigError("urls", "give at least one URL")
    for index, url in enumerate(urls):
        problem = _url_problem(url)
        if problem:
            raise PluginConfigError(f"urls[{index}]", problem)
    secret = settings.text("secret")
    if not secret:
        raise PluginConfigError("secret", "must be set: receivers check the signature made with it")
    events = settings.texts("events", DEFAULT_EVENTS)
    for index, kind in enumerate(events):
        if kind not in KINDS:
            raise PluginConfigError(f"events[{index}]", f"{kind!r} is not one of {', '.join(KINDS)}")
    return WebhookSettings(
        urls=tuple(dict.fromkeys(urls)), secret=secret.encode("utf-8"), events=frozenset(events),
        timeout=settings.number("timeout", 10.0, low=0.1, high=600),
        max_retries=settings.integer("maxRetries", 5, low=0, high=100),
        retry_delay=settings.number("retryDelay", 2.0, low=0.001, high=MAX_RETRY_DELAY),
        queue_size=settings.integer("queueSize", 10000, low=1, high=10_000_000))


@implementer(IDeliveryObserver)
class Webhook:
    """Queues the configured delivery events for L{WebhookSender}."""

    def __init__(self, settings: Settings, context: PluginContext, http: Any = treq) -> None:
        self.sender = WebhookSender(read_settings(settings), context.reactor, http)

    def delivery_event(self, event: DeliveryEvent) -> None:
        """Queue the event when its kind is one of C{events}."""
        if event.kind in self.sender.settings.events:
            body = json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")
            self.sender.add(event.kind, body)

    def reconfigure(self, settings: Settings) -> Callable[[], None]:
        """SIGHUP: check the new settings; the function returned applies them."""
        new = read_settings(settings)
        return lambda: self.sender.replace(new)

    def counters(self) -> dict[str, int]:
        """For /metrics: events sent, retried, dropped (queue full) and given up."""
        sender = self.sender
        return {"sent": sender.sent, "retries": sender.retries, "dropped": sender.dropped,
                "failed": sender.failed, "queued": sender.pending}

    def stop(self) -> None:
        """gomail is stopping: no more posts."""
        self.sender.stop()


webhook = plugin("webhook", Webhook, "POSTs delivery events as signed JSON to URLs")
