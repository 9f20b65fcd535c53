"""
The inbound-checks plugin: SPF, DKIM and DMARC of mail from an untrusted
client for a local domain, against a real DNS server started by the test,
recorded in Authentication-Results (or refused, with policy = "reject").
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.trial.unittest import TestCase

from gomail.delivery.dkimsign import DEFAULT_HEADERS, SigningKey, sign_file
from gomail.testing import SMTPTestServer, build_plugin
from tests.dkimtesting import RSA_PRIVATE, RSA_RECORD
from tests.dnsserver import DNSServer, MemoryAuthority

CLIENT = "192.0.2.10"
MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.com\r\nSubject: checked\r\n"
           b"Date: Fri, 04 Dec 2026 05:00:00 +0000\r\nMessage-ID: <1@sender.test>\r\n\r\nhello\r\n")


def txt(text: bytes) -> dns.Record_TXT:
    return dns.Record_TXT(*[text[i:i + 200] for i in range(0, len(text), 200)], ttl=60)


class InboundChecksTests(TestCase):
    """Through a real SMTP session (gomail.testing), the plugin built by the loader."""

    timeout = 30

    def setUp(self) -> None:
        zone = {"sender.test": [txt(b"v=spf1 ip4:" + CLIENT.encode() + b" -all")],
                "mail._domainkey.sender.test": [txt(RSA_RECORD)],
                "_dmarc.sender.test": [txt(b"v=DMARC1; p=reject")]}
        self.dns = DNSServer(reactor, MemoryAuthority("test", zone))
        self.addCleanup(self.dns.stop)

    async def send(self, message: bytes, policy: str = "record", client: str = CLIENT,
                   dns_timeout: float = 2) -> tuple[bytes, Any]:
        hook = build_plugin("inbound-checks", {"policy": policy, "dnsServers": [f"127.0.0.1:{self.dns.port}"],
                                               "dnsTimeout": dns_timeout}, clock=reactor)
        server = SMTPTestServer(self.mktemp(), hooks=[("inbound-checks", hook)])
        connection = server.connect(client)
        connection.take()
        replies = connection.send_message("alice@sender.test", ["bob@example.com"], message, helo="mail.sender.test")
        for _ in range(500):  # the checks run in threads: their answer comes back through the reactor
            if b"\r\n250 2.0.0" in replies or b"\r\n5" in replies or b"\r\n4" in replies:
                break
            await deferLater(reactor, 0.02, lambda: None)
            replies += connection.take()
        return replies, server

    def signed(self, message: bytes) -> bytes:
        field = sign_file(io.BytesIO(message), SigningKey("sender.test", "mail", RSA_PRIVATE, "rsa-sha256"),
                          DEFAULT_HEADERS, 1_700_000_000, 0)
        assert field is not None
        return field + message

    async def test_all_pass_recorded(self) -> None:
        """A signed message from an SPF-allowed address: spf, dkim and dmarc pass, in the stored message."""
        replies, server = await self.send(self.signed(MESSAGE))
        self.assertIn(b"250 2.0.0 Ok: queued", replies)
        [(_, content)] = server.queued()
        head = content.split(b"\r\nReceived:", 1)[0]
        self.assertTrue(head.startswith(b"Authentication-Results: mx.test;"), head)
        for result in (b"spf=pass", b"dkim=pass", b"dmarc=pass"):
            self.assertIn(result, head)

    async def test_arriving_results_removed(self) -> None:
        """An Authentication-Results field the message arrives with (forged "pass") is removed; ours stays."""
        forged = b"Authentication-Results: mx.test; dkim=pass; dmarc=pass\r\n" + MESSAGE
        _, server = await self.send(forged, client="198.51.100.7")
        [(_, content)] = server.queued()
        self.assertEqual(content.count(b"Authentication-Results:"), 1)
        self.assertIn(b"dmarc=fail", content.split(b"\r\nReceived:", 1)[0])

    async def test_dmarc_failure_recorded_or_refused(self) -> None:
        """Unsigned, from an address SPF does not allow, p=reject: recorded as dmarc=fail, or refused with 550."""
        replies, server = await self.send(MESSAGE, client="198.51.100.7")
        [(_, content)] = server.queued()
        self.assertIn(b"dmarc=fail", content.split(b"\r\nReceived:", 1)[0])
        replies, server = await self.send(MESSAGE, policy="reject", client="198.51.100.7")
        self.assertIn(b"550 5.7.1 Message refused: DMARC policy", replies)
        self.assertEqual(server.queued(), [])

    async def test_trusted_client_not_checked(self) -> None:
        """Mail from a trusted network (outgoing) gets no Authentication-Results."""
        _, server = await self.send(MESSAGE, client="127.0.0.1")
        [(_, content)] = server.queued()
        self.assertNotIn(b"Authentication-Results", content)

    async def test_dns_down_is_temperror_not_refusal(self) -> None:
        """With the DNS server gone the message is accepted; the failure is recorded, not a refusal."""
        await self.dns.stop()
        replies, server = await self.send(MESSAGE, policy="reject", dns_timeout=0.2)
        self.assertIn(b"250 2.0.0 Ok: queued", replies)
        [(_, content)] = server.queued()
        head = content.split(b"\r\nReceived:", 1)[0]
        self.assertIn(b"Authentication-Results:", head)
        self.assertNotIn(b"=pass", head)




class KeyLookupFailureTests(TestCase):
    """The DKIM key lookup fails (SERVFAIL) for a correctly signed, forwarded message."""

    timeout = 30
    send = InboundChecksTests.send
    signed = InboundChecksTests.signed

    def setUp(self) -> None:
        zone = {"sender.test": [txt(b"v=spf1 ip4:" + CLIENT.encode() + b" -all")],
                "mail._domainkey.sender.test": [txt(RSA_RECORD)],
                "_dmarc.sender.test": [txt(b"v=DMARC1; p=reject")]}
        self.dns = DNSServer(reactor, MemoryAuthority("test", zone, servfail={"mail._domainkey.sender.test"}))
        self.addCleanup(self.dns.stop)

    async def test_temperror_never_refused(self) -> None:
        """dkim=temperror is recorded (not fail), and policy = "reject" does not refuse on it."""
        replies, server = await self.send(self.signed(MESSAGE), policy="reject", client="198.51.100.7")
        self.assertIn(b"250 2.0.0 Ok: queued", replies)
        [(_, content)] = server.queued()
        self.assertIn(b"dkim=temperror", content.split(b"\r\nReceived:", 1)[0])

