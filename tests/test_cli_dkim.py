"""`gomail dkim keygen`, run as an operator runs it: the key it writes signs, the record it prints verifies."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import dkim
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.delivery.dkimsign import DEFAULT_HEADERS, read_key, sign_file
from tests.dkimtesting import dns_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n"


class KeygenTests(SynchronousTestCase):
    """Both key types, and never over an existing key."""

    def gomail(self, directory: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gomail.cli", "dkim", "keygen", *args, "--directory", directory],
                              env={"PYTHONPATH": ROOT, "LC_ALL": "C.UTF-8"}, capture_output=True, text=True,
                              timeout=60)

    def test_key_signs_and_record_verifies(self) -> None:
        """The written key (0600, keys/<domain>/<selector>.private) signs; the printed TXT record verifies it."""
        for kind, selector in (("rsa", "mail"), ("ed25519", "ed")):
            directory = os.path.abspath(self.mktemp())
            result = self.gomail(directory, "Example.COM", "--selector", selector, "--type", kind)
            self.assertEqual(result.returncode, 0, result.stderr)
            path = os.path.join(directory, "keys", "example.com", f"{selector}.private")
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            record = re.search(r"^v=DKIM1; .*$", result.stdout, re.MULTILINE).group(0).encode()
            self.assertIn(f"{selector}._domainkey.example.com".encode(), result.stdout.encode())
            field = sign_file(io.BytesIO(MESSAGE), read_key("example.com", selector, path), DEFAULT_HEADERS,
                              1_700_000_000, 0)
            self.assertTrue(dkim.verify(field + MESSAGE,
                                        dnsfunc=dns_for({f"{selector}._domainkey.example.com": record})), kind)

    def test_existing_key_kept(self) -> None:
        """A second keygen for the same selector refuses (exit 1, one line) and leaves the key alone."""
        directory = os.path.abspath(self.mktemp())
        self.assertEqual(self.gomail(directory, "example.com").returncode, 0)
        path = os.path.join(directory, "keys", "example.com", "mail.private")
        with open(path, "rb") as f:
            before = f.read()
        result = self.gomail(directory, "example.com")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)


class CheckTests(TestCase):
    """`gomail dkim check DOMAIN` against a real DNS server started by the test."""

    def run_check(self, published: bytes) -> subprocess.CompletedProcess:
        from twisted.internet import reactor
        from twisted.names import dns as names_dns

        from tests.dkimtesting import RSA_PRIVATE, write_key
        from tests.dnsserver import DNSServer, MemoryAuthority

        record = names_dns.Record_TXT(*[published[i:i + 200] for i in range(0, len(published), 200)], ttl=60)
        server = DNSServer(reactor, MemoryAuthority("com", {"mail._domainkey.example.com": [record]}))
        self.addCleanup(server.stop)
        directory = os.path.abspath(self.mktemp())
        key = write_key(directory, "example.com", "mail", RSA_PRIVATE)
        config = os.path.join(directory, "gomail.toml")
        with open(config, "w") as f:
            f.write(f'[dkim]\ndomain = "example.com"\nprivateKeyPath = "{key}"\n'
                    f'[directDelivery]\ndnsServers = ["127.0.0.1:{server.port}"]\ndnsTimeout = 5\n')
        return deferToThread(subprocess.run, [sys.executable, "-m", "gomail.cli", "dkim", "check", "example.com",
                                              "--config", config],
                             env={"PYTHONPATH": ROOT, "LC_ALL": "C.UTF-8"}, capture_output=True, text=True,
                             timeout=60)

    async def test_matching_record(self) -> None:
        """The published record of the configured key: exit 0, says it matches."""
        from tests.dkimtesting import RSA_RECORD

        result = await self.run_check(RSA_RECORD)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("mail._domainkey.example.com: the published rsa key matches", result.stdout)

    async def test_other_key_published(self) -> None:
        """Another key published: exit 1, one line with the record to publish instead."""
        from tests.dkimtesting import ED25519_RECORD

        result = await self.run_check(ED25519_RECORD)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1)
        self.assertIn("does not publish the key", result.stderr)
        self.assertIn("v=DKIM1; k=rsa; p=", result.stderr)
