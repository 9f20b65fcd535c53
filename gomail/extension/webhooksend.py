# -*- test-case-name: tests.test_plugin_webhook -*-
"""
The sending side of the C{webhook} plugin (L{gomail.plugins.webhook}): one
bounded queue of signed JSON bodies per URL, one POST in flight per URL, in
order, retried with a doubling backoff on the reactor's clock.

Kept out of the plugin module: every module in C{gomail/plugins/} is
imported to look for plugins, so only plugin modules live there.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.logger import Logger

#: The longest wait between two tries of one event.
MAX_RETRY_DELAY = 300.0


@dataclass(frozen=True)
class WebhookSettings:
    """What the webhook plugin's table says (checked by the plugin)."""

    urls: tuple[str, ...]
    secret: bytes
    events: frozenset[str]
    timeout: float
    max_retries: int
    retry_delay: float
    queue_size: int


def signature(secret: bytes, body: bytes) -> str:
    """The C{X-Gomail-Signature} value: C{sha256=} and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class WebhookSender:
    """
    Posts bodies to the configured URLs (see the module docstring). Counters:
    C{sent}, C{retries}, C{dropped} (the queue was full), C{failed} (given up
    after C{max_retries}).

    @param http: what posts: C{treq}, or a C{treq.testing.StubTreq} in tests.
    """

    log = Logger()

    def __init__(self, settings: WebhookSettings, clock: Any, http: Any) -> None:
        self.settings, self.clock, self.http = settings, clock, http
        self.queues: dict[str, deque[tuple[str, bytes]]] = {url: deque() for url in settings.urls}
        self._busy: dict[str, Deferred] = {}
        self._stopped = False
        self.sent = self.retries = self.dropped = self.failed = 0

    @property
    def pending(self) -> int:
        """Bodies waiting, over all URLs."""
        return sum(len(queue) for queue in self.queues.values())

    def add(self, kind: str, body: bytes) -> None:
        """Queue C{body} for every URL (or count it dropped where the queue is full); returns at once."""
        if self._stopped:
            return
        for url, queue in self.queues.items():
            if len(queue) >= self.settings.queue_size:
                # Each URL's queue is bounded on its own: a slow receiver never costs another its events.
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    self.log.warn("webhook: queue for {url} full ({size} events), {count} dropped so far",
                                  url=_where(url), size=self.settings.queue_size, count=self.dropped)
                continue
            queue.append((kind, body))
            if url not in self._busy:
                draining = Deferred.fromCoroutine(self._drain(url))
                if not draining.called:  # it may be over already (a post that failed at once, no retries)
                    self._busy[url] = draining

    def replace(self, settings: WebhookSettings) -> None:
        """New settings (SIGHUP): queues of URLs kept stay; those of removed URLs are dropped and counted."""
        for url in set(self.queues) - set(settings.urls):
            self.dropped += len(self.queues.pop(url))
            busy = self._busy.pop(url, None)
            if busy is not None:
                busy.cancel()
        for url in settings.urls:
            self.queues.setdefault(url, deque())
        self.settings = settings

    def stop(self) -> None:
        """Stop sending (gomail is stopping): what is queued is given up (not persisted)."""
        self._stopped = True
        for busy in list(self._busy.values()):
            busy.cancel()

    async def _drain(self, url: str) -> None:
        try:
            queue = self.queues.get(url)
            while queue and not self._stopped:
                kind, body = queue[0]
                await self._deliver(url, kind, body)
                if queue and queue[0][1] is body:
                    queue.popleft()
        except CancelledError:
            pass
        finally:
            self._busy.pop(url, None)

    async def _deliver(self, url: str, kind: str, body: bytes) -> None:
        settings = self.settings
        delay = settings.retry_delay
        for attempt in range(settings.max_retries + 1):
            problem = await self._post(url, kind, body)
            if problem is None:
                self.sent += 1
                return
            if attempt == settings.max_retries:
                break
            self.retries += 1
            await deferLater(self.clock, delay, lambda: None)
            delay = min(delay * 2, MAX_RETRY_DELAY)
        self.failed += 1
        self.log.warn("webhook: gave up on a {kind} event to {url} after {tries} tries: {problem}", kind=kind,
                      url=_where(url), tries=settings.max_retries + 1, problem=problem)

    async def _post(self, url: str, kind: str, body: bytes) -> str | None:
        """One POST: None when the receiver took it (2xx), else why not."""
        headers = {b"Content-Type": [b"application/json"], b"User-Agent": [b"gomail-webhook"],
                   b"X-Gomail-Event": [kind.encode("ascii")],
                   b"X-Gomail-Signature": [signature(self.settings.secret, body).encode("ascii")]}
        try:
            # A redirect is an answer like any other non-2xx (a 303 would turn the POST into a GET).
            request = self.http.post(url, data=body, headers=headers, allow_redirects=False,
                                     unbuffered=True)
            request.addTimeout(self.settings.timeout, self.clock)
            response = await request
            # Read it all (the connection goes back to the pool), keeping none of it.
            reading = self.http.collect(response, _discard)
            reading.addTimeout(self.settings.timeout, self.clock)
            await reading
        except CancelledError:
            raise
        except Exception as e:  # any failure to post: retried, named in the log
            if self._stopped or url not in self.queues:
                # Cancelled by stop() or replace(): the HTTP client reports that as its own error.
                raise CancelledError() from e
            return "timed out" if isinstance(e, (TimeoutError, DeferredTimeout)) else f"{type(e).__name__}: {e}"
        if 200 <= response.code < 300:
            return None
        return f"HTTP {response.code}"


def _discard(data: bytes) -> None:
    """A receiver's answer body: read, not kept."""


def _where(url: str) -> str:
    """A URL for the log: scheme, host and port only (its path or query may hold a token)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."
