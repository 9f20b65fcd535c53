"""
DKIM signing (gomail.delivery.dkimsign, gomail.delivery.signing): signatures
gomail makes verify with dkimpy's verifier, for both key types, small and
large messages, dot-stuffed lines and 8-bit bodies, also after crossing a
real relay in a real twistd; a message is signed once, whatever the retries;
an unreadable key stops the start naming it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import smtplib

import dkim
from dkim.canonicalization import Relaxed
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.threads import deferToThread
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.configload import ConfigError, load_config
from gomail.delivery.dkimsign import (
    DEFAULT_HEADERS,
    RelaxedBodyHash,
    SigningKey,
    read_key,
    sign_file,
)
from gomail.delivery.signing import SigningAgent
from gomail.spool.envelope import Envelope, Recipient
from tests.dkimtesting import (
    ED25519_PRIVATE,
    ED25519_RECORD,
    RSA_PRIVATE,
    RSA_RECORD,
    dns_for,
    write_key,
)
from tests.dnsserver import DNSServer, MemoryAuthority
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll
from tests.smarthost import SmarthostFactory

MESSAGE = ("From: Alice <alice@example.com>\r\nTo: bob@remote.test\r\nSubject: caf\u00e9  tabs\t \r\n"
           "Date: Fri, 04 Dec 2026 05:00:00 +0000\r\n\r\n.leading dot\r\n8-bit: \u00e9t\u00e9\r\n"
           "trailing spaces   \r\n\r\n\r\n").encode("utf-8")
RECORDS = {"mail._domainkey.example.com": RSA_RECORD, "ed._domainkey.other.example": ED25519_RECORD}


class BodyHashTests(SynchronousTestCase):
    """The streamed relaxed body hash is dkimpy's, however the body is cut."""

    def test_equal_to_dkimpy(self) -> None:
        """Random CRLF bodies of spaces, tabs, dots and letters, split at random points."""
        chooser = random.Random(7)
        for _ in range(300):
            body = bytes(chooser.choice(b"ab \t\n.") for _ in range(chooser.randint(0, 300))).replace(b"\n", b"\r\n")
            body += b"\r\n"
            hasher = RelaxedBodyHash()
            cuts = sorted(chooser.randint(0, len(body)) for _ in range(3))
            for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
                hasher.update(body[start:end])
            expected = base64.b64encode(hashlib.sha256(Relaxed.canonicalize_body(body)).digest())
            self.assertEqual(hasher.digest(), expected, body)


class SignatureTests(SynchronousTestCase):
    """sign_file's signatures, checked by dkimpy."""

    def sign(self, message: bytes, key: SigningKey, expiry: int = 0) -> bytes:
        field = sign_file(io.BytesIO(message), key, DEFAULT_HEADERS, 1_700_000_000, expiry)
        assert field is not None
        return field

    def test_rsa_and_ed25519_verify(self) -> None:
        """Both key types, relaxed/relaxed, From oversigned; dkimpy verifies."""
        for key, domain, selector in ((SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256"),
                                       "example.com", "mail"),
                                      (SigningKey("other.example", "ed", ED25519_PRIVATE, "ed25519-sha256"),
                                       "other.example", "ed")):
            field = self.sign(MESSAGE, key)
            self.assertIn(f"d={domain};".encode(), field)
            self.assertIn(b"c=relaxed/relaxed", field)
            self.assertIn(b"h=from : subject : date : to : from", field.replace(b"\r\n ", b" "))
            self.assertTrue(dkim.verify(field + MESSAGE, dnsfunc=dns_for(RECORDS)), key.algorithm)

    def test_expiry_tag(self) -> None:
        """signatureExpiry becomes x= = t= + expiry."""
        field = self.sign(MESSAGE, SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256"), expiry=86400)
        self.assertIn(b"t=1700000000; x=1700086400;", field.replace(b"\r\n ", b" "))

    def test_large_message(self) -> None:
        """A 5 MB body (read in blocks) verifies."""
        message = MESSAGE + (b"line of a large message with  spaces \r\n" * 130_000)
        field = self.sign(message, SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256"))
        self.assertTrue(dkim.verify(field + message, dnsfunc=dns_for(RECORDS)))

    def test_from_signed_whatever_headers_to_sign_says(self) -> None:
        """headersToSign without From still signs From (twice): the signature verifies."""
        key = SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256")
        field = sign_file(io.BytesIO(MESSAGE), key, ["To", "Subject"], 1_700_000_000, 0)
        assert field is not None
        self.assertIn(b"h=from : to : subject : from", field.replace(b"\r\n ", b" "))
        self.assertTrue(dkim.verify(field + MESSAGE, dnsfunc=dns_for(RECORDS)))

    def test_no_from_no_signature(self) -> None:
        """Without From: (which must be signed) nothing is signed."""
        key = SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256")
        self.assertIsNone(sign_file(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n"), key, DEFAULT_HEADERS, 1, 0))

    def test_unusable_key(self) -> None:
        """A file that is no key is a ValueError naming the problem."""
        path = os.path.join(os.path.abspath(self.mktemp()))
        with open(path, "wb") as f:
            f.write(b"-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----\n")
        self.assertRaises(ValueError, read_key, "example.com", "mail", path)


class SignOnceTests(SynchronousTestCase):
    """The signature is made once and stored with the envelope before the first send."""

    def test_signed_once_across_attempts(self) -> None:
        """Two attempts: one signing, one envelope update before the first send, the same field both times."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(MESSAGE)
        sent: list[str] = []
        updates: list[str] = []

        class Inner:
            name = "relay"

            def deliver(self, envelope: Envelope, message_path: str, recipients: list) -> Deferred:
                sent.append(envelope.extra["dkim"])
                return succeed({r.address: (250, "2.0.0 ok") for r in recipients})

        runs: list[object] = []

        def run(f, *args):  # type: ignore[no-untyped-def]
            runs.append(f)
            return succeed(f(*args))

        agent = SigningAgent(Inner(), [SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256")],
                             DEFAULT_HEADERS, 0, run=run, update=lambda e: succeed(updates.append(e.extra["dkim"])),
                             now=lambda: 1_700_000_000.0)
        envelope = Envelope("q1", "alice@example.com", [Recipient("bob@remote.test")], 0.0)
        for _ in range(2):
            self.successResultOf(agent.deliver(envelope, path, envelope.recipients))
        self.assertEqual(len(runs), 1)
        self.assertEqual(len(updates), 1)
        self.assertEqual(sent[0], sent[1])
        self.assertTrue(sent[0].startswith("DKIM-Signature: "))
        self.assertEqual(agent.name, "relay")

    def test_domain_without_key_goes_unsigned(self) -> None:
        """A From: domain without a key: sent unsigned (recorded as tried, not tried again)."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(MESSAGE.replace(b"alice@example.com", b"alice@nokey.example"))

        class Inner:
            def deliver(self, envelope: Envelope, message_path: str, recipients: list) -> Deferred:
                return succeed({})

        agent = SigningAgent(Inner(), [SigningKey("example.com", "mail", RSA_PRIVATE, "rsa-sha256")],
                             DEFAULT_HEADERS, 0, run=lambda f, *a: succeed(f(*a)), update=lambda e: succeed(None))
        envelope = Envelope("q1", "alice@nokey.example", [Recipient("bob@remote.test")], 0.0)
        self.successResultOf(agent.deliver(envelope, path, envelope.recipients))
        self.assertEqual(envelope.extra["dkim"], "")


class KeyConfigurationTests(SynchronousTestCase):
    """Keys are checked at start."""

    def test_unreadable_key_is_a_configuration_error(self) -> None:
        """dkim.enabled with a key file that does not exist: ConfigError naming dkim.privateKeyPath and the path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "gomail.toml")
        with open(path, "w") as f:
            f.write(f'[dkim]\nenabled = true\ndomain = "example.com"\nprivateKeyPath = "{directory}/absent.key"\n')
        error = self.assertRaises(ConfigError, load_config, path, {})
        self.assertEqual(error.key, "dkim.privateKeyPath")
        self.assertIn("absent.key", str(error))

    def test_default_path_and_domain(self) -> None:
        """The Go relay's layout keys/<domain>/<selector>.private, the domain from defaultUsername."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        write_key(directory, "example.com", "mail", RSA_PRIVATE)
        path = os.path.join(directory, "gomail.toml")
        with open(path, "w") as f:
            f.write('defaultUsername = "relay@example.com"\ndefaultPassword = "x"\n[dkim]\nenabled = true\n')
        cwd = os.getcwd()
        os.chdir(directory)
        self.addCleanup(os.chdir, cwd)
        self.assertTrue(load_config(path, {}).dkim.enabled)


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
hostname = "mx.example.com"
localDomains = ["example.com"]
verifyRecipients = false
[directDelivery]
enabled = true
dnsServers = ["127.0.0.1:{dns}"]
port = {mx_port}
[dkim]
enabled = true
domain = "example.com"
selector = "mail"
privateKeyPath = "{rsa}"
signatureExpiry = 604800
[[dkim.keys]]
domain = "other.example"
selector = "ed"
privateKeyPath = "{ed}"
"""


class RelayedSignatureTests(TestCase):
    """A real twistd signs, relays to an MX sink; the sink's copies verify."""

    timeout = 60

    def test_signatures_verify_after_the_relay(self) -> None:
        """RSA (example.com) and Ed25519 (other.example) senders, a 2 MB body: each copy verifies at the MX."""
        server = DNSServer(reactor, MemoryAuthority("test", {
            "remote.test": [dns.Record_MX(10, b"mx.remote.test", ttl=300)],
            "mx.remote.test": [dns.Record_A("127.0.0.3", ttl=300)]}))
        self.addCleanup(server.stop)
        workdir = os.path.abspath(self.mktemp())
        sink = os.path.join(workdir, "sink")
        os.makedirs(sink)
        mx_port, port = free_port(), free_port()
        listening = reactor.listenTCP(mx_port, SmarthostFactory(sink, None, None, announce=lambda _: None),
                                      interface="127.0.0.3")
        self.addCleanup(listening.stopListening)
        node = GomailNode(self, CONFIG, workdir=workdir, port=port, dns=server.port, mx_port=mx_port,
                          rsa=write_key(workdir, "example.com", "mail", RSA_PRIVATE),
                          ed=write_key(workdir, "other.example", "ed", ED25519_PRIVATE))
        large = MESSAGE.replace(b"alice@example.com", b"carol@other.example") + (b"x" * 998 + b"\r\n") * 2000

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.sendmail("alice@example.com", ["bob@remote.test"], MESSAGE)
                client.sendmail("carol@other.example", ["bob@remote.test"], large)

        def stored() -> list[bytes]:
            return [open(os.path.join(sink, n), "rb").read() for n in sorted(os.listdir(sink)) if n.endswith(".eml")]

        async def run() -> None:
            await node.start()
            await deferToThread(send)
            await poll(reactor, lambda: len(stored()) == 2)
            for copy in stored():
                message = copy.split(b"\r\n", 1)[1]  # the sink's X-Envelope line off
                self.assertTrue(message.startswith(b"DKIM-Signature: "))
                self.assertTrue(dkim.verify(message, dnsfunc=dns_for(RECORDS)), message[:400])
            await node.stop_cleanly()
        return ensureDeferred(run())
