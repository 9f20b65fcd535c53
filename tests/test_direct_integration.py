"""
Direct delivery in a real twistd: gomail asks a DNS server started by the
test for the recipient domain's MX and delivers there (an SMTP sink on
127.0.0.3); a null-MX domain's recipient is bounced to the sender.
"""

from __future__ import annotations

import os
import smtplib

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial.unittest import TestCase

from tests.dnsserver import DNSServer, MemoryAuthority
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll
from tests.smarthost import SmarthostFactory

CONFIG = """
dataDir = "{data}"
smtpPort = {port}
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
enabled = false
[smtp]
hostname = "mx.gomail.test"
localDomains = ["gomail.test"]
verifyRecipients = false
[directDelivery]
enabled = true
dnsServers = ["127.0.0.1:{dns}"]
dnsTimeout = 5
port = {mx_port}
"""

ZONE = {
    "remote.test": [dns.Record_MX(10, b"mx.remote.test", ttl=300)],
    "mx.remote.test": [dns.Record_A("127.0.0.3", ttl=300)],
    "nullmx.test": [dns.Record_MX(0, b"", ttl=300)],
}


class DirectDeliveryProcessTests(TestCase):
    """twistd gomail with directDelivery.enabled."""

    timeout = 60

    def test_route_takes_its_domain(self) -> None:
        """[[routes]]: partner.test's mail goes to its own smarthost; remote.test's still to its MX."""
        server = DNSServer(reactor, MemoryAuthority("test", ZONE))
        self.addCleanup(server.stop)
        workdir = os.path.abspath(self.mktemp())
        sinks = {name: os.path.join(workdir, name) for name in ("mx", "route")}
        ports = {name: free_port() for name in sinks}
        for name, directory in sinks.items():
            os.makedirs(directory)
            listening = reactor.listenTCP(ports[name], SmarthostFactory(directory, None, None,
                                                                        announce=lambda _: None),
                                          interface="127.0.0.3")
            self.addCleanup(listening.stopListening)
        port = free_port()
        node = GomailNode(self, CONFIG + '[[routes]]\ndomain = "partner.test"\nhost = "127.0.0.3"\n'
                          f'port = {ports["route"]}\n', workdir=workdir, port=port, dns=server.port,
                          mx_port=ports["mx"])

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.sendmail("alice@gomail.test", ["bob@remote.test", "pat@partner.test"],
                                b"Subject: routed\r\n\r\nhello\r\n")

        def envelopes(name: str) -> list[bytes]:
            found = []
            for entry in sorted(os.listdir(sinks[name])):
                if entry.endswith(".eml"):
                    with open(os.path.join(sinks[name], entry), "rb") as f:
                        found.append(f.read().split(b"\r\n", 1)[0])
            return found

        async def run() -> None:
            await node.start()
            await deferToThread(send)
            await poll(reactor, lambda: envelopes("mx") and envelopes("route"))
            self.assertEqual(envelopes("mx"), [b"X-Envelope: <alice@gomail.test> <bob@remote.test>"])
            self.assertEqual(envelopes("route"), [b"X-Envelope: <alice@gomail.test> <pat@partner.test>"])
            await node.stop_cleanly()
        return ensureDeferred(run())

    def test_mail_reaches_the_mx_and_null_mx_bounces(self) -> None:
        """The remote recipient's mail is at the MX sink; the null-MX one comes back as a DSN to the sender."""
        server = DNSServer(reactor, MemoryAuthority("test", ZONE))
        self.addCleanup(server.stop)
        sink = os.path.abspath(self.mktemp())
        os.makedirs(sink)
        mx_port, port = free_port(), free_port()
        listening = reactor.listenTCP(mx_port, SmarthostFactory(sink, None, None, announce=lambda _: None),
                                      interface="127.0.0.3")
        self.addCleanup(listening.stopListening)
        node = GomailNode(self, CONFIG, port=port, dns=server.port, mx_port=mx_port)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.sendmail("alice@gomail.test", ["bob@remote.test", "x@nullmx.test"],
                                b"Subject: to the MX\r\n\r\nhello\r\n")

        def stored() -> list[bytes]:
            found = []
            for name in sorted(os.listdir(sink)):
                if name.endswith(".eml"):
                    with open(os.path.join(sink, name), "rb") as f:
                        found.append(f.read())
            return found

        maildir = os.path.join(node.data, "spool", "mailbox", "alice@gomail.test", "new")

        async def run() -> None:
            await node.start()
            await deferToThread(send)
            await poll(reactor, lambda: len(stored()) == 1 and os.path.isdir(maildir) and os.listdir(maildir))
            [message] = stored()
            self.assertTrue(message.startswith(b"X-Envelope: <alice@gomail.test> <bob@remote.test>\r\n"))
            self.assertIn(b"Subject: to the MX", message)
            [dsn] = os.listdir(maildir)
            with open(os.path.join(maildir, dsn), "rb") as f:
                report = f.read()
            self.assertIn(b"x@nullmx.test", report)
            self.assertIn(b"5.1.10", report)
            await node.stop_cleanly()
        return ensureDeferred(run())


MX_CONFIG = """
dataDir = "{data}"
enableHealthCheck = false
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
enabled = false
[smtp]
listen = ["tcp:{mx_port}:interface=127.0.0.3"]
hostname = "mx.remote.test"
localDomains = ["remote.test"]
verifyRecipients = false
"""


class OpportunisticTLSTests(TestCase):
    """Another gomail as the MX: it offers STARTTLS with a self-signed certificate."""

    timeout = 90

    def deliver_through(self, insecure: bool, level: str | None = None) -> Deferred:
        server = DNSServer(reactor, MemoryAuthority("test", ZONE))
        self.addCleanup(server.stop)
        mx_port, port = free_port(), free_port()
        mx = GomailNode(self, MX_CONFIG, name="mx", mx_port=mx_port)
        policy = f'[[directDelivery.tlsPolicies]]\ndomain = "remote.test"\nlevel = "{level}"\n' if level else ""
        sender = GomailNode(self, CONFIG + f"insecureSkipVerify = {'true' if insecure else 'false'}\n" + policy,
                            port=port, dns=server.port, mx_port=mx_port)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.sendmail("alice@gomail.test", ["bob@remote.test"], b"Subject: tls\r\n\r\nhello\r\n")

        maildir = os.path.join(mx.data, "spool", "mailbox", "bob@remote.test", "new")

        async def run() -> tuple[bytes, bytes]:
            await mx.start()
            await sender.start()
            await deferToThread(send)
            if level == "verify":  # the self-signed certificate never verifies: deferred, not delivered
                await poll(reactor, lambda: b"deferred" in sender.output)
                self.assertFalse(os.path.isdir(maildir) and os.listdir(maildir))
                output = sender.output
                await sender.stop_cleanly()
                await mx.stop_cleanly()
                return b"", output
            await poll(reactor, lambda: os.path.isdir(maildir) and bool(os.listdir(maildir)))
            [name] = os.listdir(maildir)
            with open(os.path.join(maildir, name), "rb") as f:
                received = b"\r\n".join(f.read().split(b"\r\n")[:2])  # the MX's Received: field
            output = sender.output
            await sender.stop_cleanly()
            await mx.stop_cleanly()
            return received, output
        return ensureDeferred(run())

    async def test_failed_verification_falls_back_to_plaintext(self) -> None:
        """The MX's certificate does not verify: the same address again without TLS, delivered, logged."""
        received, output = await self.deliver_through(insecure=False)
        self.assertIn(b"mx.remote.test [127.0.0.3]", output)
        self.assertIn(b"TLS none", output)
        self.assertIn(b"with ESMTP id", received)  # RFC 3848: ESMTPS would say TLS

    async def test_insecure_skip_verify_uses_tls(self) -> None:
        """insecureSkipVerify: TLS without the certificate check, counted as unverified."""
        received, output = await self.deliver_through(insecure=True)
        self.assertIn(b"TLS unverified", output)
        self.assertIn(b"with ESMTPS id", received)

    async def test_policy_none_never_starttls(self) -> None:
        """tlsPolicies level none: plaintext although the MX offers STARTTLS."""
        received, output = await self.deliver_through(insecure=True, level="none")
        self.assertIn(b"TLS none", output)
        self.assertIn(b"with ESMTP id", received)

    async def test_policy_encrypt_requires_tls_unchecked(self) -> None:
        """level encrypt: TLS, the self-signed certificate accepted (not checked)."""
        received, output = await self.deliver_through(insecure=False, level="encrypt")
        self.assertIn(b"TLS unverified", output)
        self.assertIn(b"with ESMTPS id", received)

    async def test_policy_verify_defers_on_a_bad_certificate(self) -> None:
        """level verify: a certificate that does not verify means no delivery (deferred), never plaintext."""
        _, output = await self.deliver_through(insecure=True, level="verify")
        self.assertNotIn(b"(no TLS)", output)
