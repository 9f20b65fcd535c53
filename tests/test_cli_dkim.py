"""`gomail dkim keygen`, run as an operator runs it: the key it writes signs, the record it prints verifies."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import dkim
from twisted.trial.unittest import SynchronousTestCase

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
