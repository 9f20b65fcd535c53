# -*- test-case-name: tests.test_dkim -*-
"""
Signing outgoing mail once (C{dkim.enabled}): L{SigningAgent} wraps the
agent that sends mail away (the smarthost relay or direct delivery).

Before a message's first remote attempt its C{DKIM-Signature:} field is made
off the reactor (L{gomail.delivery.dkimsign}: the file read in blocks) with
the key of its From: domain, and stored in the envelope (C{extra["dkim"]})
before anything is sent, so every attempt, also after a restart, sends the
same signed bytes; the relay puts the field in front of the content as it
sends (L{gomail.delivery.content.content_opener}). A message whose From:
domain has no key goes unsigned (a debug line); one that cannot be signed
(no From:, a header section that never ends) too, with a warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from email.utils import getaddresses
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from gomail.delivery.dkimsign import BLOCK, SigningKey, sign_file
from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import Envelope, Recipient

#: Where the signature is kept in the envelope ("" once tried without a signature to show for it).
DKIM_FIELD = "dkim"


def from_domain(path: str) -> str | None:
    """The domain of the (first) From: address of the message at C{path}, lower case; None without one."""
    with open(path, "rb") as f:
        head = f.read(BLOCK)
    head = head.split(b"\r\n\r\n", 1)[0]
    value = None
    for line in head.split(b"\r\n"):
        if value is not None and line[:1] in (b" ", b"\t"):
            value += line
        elif value is not None:
            break
        elif line[:5].lower() == b"from:":
            value = line[5:]
    if value is None:
        return None
    addresses = getaddresses([value.decode("utf-8", "replace")])
    address = addresses[0][1] if addresses else ""
    return address.rpartition("@")[2].lower().rstrip(".") or None


def signature(path: str, keys: dict[str, SigningKey], headers: Iterable[str], expiry: int,
              now: float) -> tuple[str, str]:
    """(I/O pool) The signature for the message at C{path} (or "") and a word on why not."""
    domain = from_domain(path)
    key = keys.get(domain or "")
    if key is None:
        return "", f"no key for the From: domain {domain or '(none)'}"
    with open(path, "rb") as f:
        field = sign_file(f, key, headers, int(now), expiry)
    if field is None:
        return "", "its header section cannot be signed (no From:, or too large)"
    return field.decode("ascii"), f"signed for {key.domain} (s={key.selector})"


@implementer(IDeliveryAgent)
class SigningAgent:
    """An L{IDeliveryAgent} that signs each message once, then lets C{agent} send it."""

    log = Logger()

    def __init__(self, agent: Any, keys: Iterable[SigningKey], headers: Iterable[str], expiry: int,
                 run: Callable[..., Deferred], update: Callable[[Envelope], Any],
                 now: Callable[[], float] = time.time) -> None:
        self.agent = agent
        self.keys = {key.domain.lower(): key for key in keys}
        self.headers, self.expiry = tuple(headers), expiry
        self.run, self.update, self.now = run, update, now

    def __getattr__(self, name: str) -> Any:
        # name, idempotent, attempt_grace, failing, close, possible_duplicates: the wrapped agent's.
        return getattr(self.agent, name)

    def deliver(self, envelope: Envelope, message_path: str, recipients: list[Recipient]) -> Deferred:
        return Deferred.fromCoroutine(self._deliver(envelope, message_path, recipients))

    async def _deliver(self, envelope: Envelope, path: str, recipients: list[Recipient]) -> dict:
        if DKIM_FIELD not in envelope.extra:
            try:
                field, why = await self.run(signature, path, self.keys, self.headers, self.expiry, self.now())
            except OSError:
                raise  # the file cannot be read: the attempt fails (retried), as any delivery would
            except Exception as e:  # noqa: BLE001 -- a message dkimpy cannot sign goes unsigned, said once
                field, why = "", f"signing failed: {type(e).__name__}: {e}"
            if field:
                self.log.debug("{queue_id}: DKIM {why}", queue_id=envelope.id, why=why)
            else:
                self.log.info("{queue_id}: not DKIM-signed: {why}", queue_id=envelope.id, why=why)
            # Stored before anything is sent: every attempt sends these same bytes (the dict is replaced,
            # never changed in place: empty ones are shared).
            envelope.extra = {**envelope.extra, DKIM_FIELD: field}
            await self.update(envelope)
        return await self.agent.deliver(envelope, path, recipients)
