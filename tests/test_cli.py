"""
Tests for C{gomail check-config} (L{gomail.cli}): what an operator sees on the
terminal and the exit status.

The command reads the real process environment, so each test runs it as its
own process with an environment the test controls (this process's environment
is neither read for the result nor changed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import gomail

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))


class CheckConfigTests(SynchronousTestCase):
    """C{gomail check-config FILE}."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def gomail(self, *args: str, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the gomail command in the test directory with only C{environ} (plus PYTHONPATH)."""
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8", **(environ or {})}
        return subprocess.run([sys.executable, "-m", "gomail.cli", *args], cwd=self.directory, env=env,
                              capture_output=True, text=True, timeout=60)

    def test_valid_file(self) -> None:
        """A valid file exits 0, says 'configuration ok' and prints the summary on stdout."""
        path = self.write("gomail.toml", 'smtpPort = 2525\nforwardPassword = "cli-secret-1"\n'
                                         '[smtp]\nhostname = "mx.example"\nlocalDomains = ["example.com"]\n')
        result = self.gomail("check-config", path)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"{path}: configuration ok")
        self.assertIn("smtp listen: tcp:2525:interface=127.0.0.1", lines)
        self.assertIn("hostname: mx.example", lines)
        self.assertIn(f"spool: {os.path.join(self.directory, 'data', 'spool')}", lines)
        self.assertNotIn("cli-secret-1", result.stdout)

    def test_go_config_json(self) -> None:
        """The Go relay's config.json is checked as JSON."""
        path = self.write("config.json", json.dumps({"smtpPort": 2500, "forwardSMTP": True,
                                                     "forwardHost": "relay.example",
                                                     "forwardPassword": "cli-secret-2"}))
        result = self.gomail("check-config", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("delivery: smarthost relay.example", result.stdout)
        self.assertNotIn("cli-secret-2", result.stdout)

    def test_everything_local_is_warned(self) -> None:
        """forwardSMTP false and no localDomains: valid (exit 0), with a warning saying all mail stays local."""
        path = self.write("gomail.toml", "smtpPort = 2525\n")
        result = self.gomail("check-config", path)
        self.assertEqual(result.returncode, 0)
        self.assertIn("gomail: warning: forwardSMTP is false and smtp.localDomains is empty", result.stderr)

    def test_production_example_relays_outside_mail(self) -> None:
        """
        conf/production.toml (its TLS files pointed at files that exist) is valid,
        warns of nothing, relays to a smarthost and keeps example.com local.
        """
        with open(os.path.join(_SOURCE_ROOT, "conf", "production.toml"), encoding="utf-8") as f:
            text = f.read()
        for name in ("fullchain.pem", "privkey.pem"):
            text = text.replace(f"/etc/gomail/tls/{name}", self.write(name, "placeholder\n"))
        path = self.write("production.toml", text)
        result = self.gomail("check-config", path)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("delivery: smarthost smtp.provider.example", result.stdout)

    def test_invalid_file(self) -> None:
        """A bad value exits 1 with one line on stderr naming the file and the key, nothing on stdout."""
        path = self.write("gomail.toml", 'smtpPort = "25"\nforwardPassword = "cli-secret-3"\n')
        result = self.gomail("check-config", path)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr,
                         f"gomail: configuration error: {path}: smtpPort: must be a whole number, got a string\n")

    def test_environment_is_checked(self) -> None:
        """An override from the environment is validated too, naming the variable."""
        path = self.write("gomail.toml", "")
        result = self.gomail("check-config", path, environ={"GOMAIL_SMTP_MAXRECIPIENTS": "0"})
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.count("\n"), 1)
        self.assertIn("environment variable GOMAIL_SMTP_MAXRECIPIENTS: smtp.maxRecipients: ", result.stderr)

    def test_environment_override_shows_in_summary(self) -> None:
        """A valid override appears in the summary of what would run."""
        path = self.write("gomail.toml", "smtpPort = 2525\n")
        result = self.gomail("check-config", path, environ={"SMTP_PORT": "2600", "SMTP_HOST": "192.0.2.7"})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("smtp listen: tcp:2600:interface=192.0.2.7", result.stdout.splitlines())

    def test_missing_file(self) -> None:
        """A file that does not exist exits 1 with a message naming it."""
        path = os.path.join(self.directory, "absent.toml")
        result = self.gomail("check-config", path)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"gomail: configuration error: {path}: cannot read the configuration file", result.stderr)

    def test_no_command(self) -> None:
        """Without a command the help is printed and the exit status is 2."""
        result = self.gomail()
        self.assertEqual(result.returncode, 2)
        self.assertIn("check-config", result.stdout)
