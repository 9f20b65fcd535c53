"""
Which database and spool a C{gomail} command uses (issue 15 item 12): run
from another directory than the server's, C{gomail user list} found no
C{conf/gomail.toml}, silently created an empty database and printed "0
users". Now -v names what is used, and only commands that create things
create a database. The commands run as real processes from another directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import gomail

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))


class ElsewhereTests(SynchronousTestCase):
    """A server directory (conf/gomail.toml, data/) and another, empty directory the operator is in."""

    def setUp(self) -> None:
        self.server = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.server, "conf"))
        with open(os.path.join(self.server, "conf", "gomail.toml"), "w") as f:
            f.write(f"dataDir = {json.dumps(os.path.join(self.server, 'data'))}\n")
        self.elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(self.elsewhere)

    def gomail(self, *argv: str, cwd: str, stdin: str = "") -> subprocess.CompletedProcess:
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8", "GOMAIL_AUTH_BCRYPTROUNDS": "4"}
        return subprocess.run([sys.executable, "-m", "gomail.cli", *argv], cwd=cwd, env=env, input=stdin,
                              capture_output=True, text=True, timeout=60)

    def assertRefused(self, result: subprocess.CompletedProcess, text: str) -> None:
        """Exit status 1, nothing on stdout, one line on stderr containing C{text}; nothing created."""
        self.assertEqual((result.returncode, result.stdout), (1, ""))
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertIn(text, result.stderr)
        self.assertEqual(os.listdir(self.elsewhere), [])

    def test_reading_commands_refuse_a_missing_database(self) -> None:
        """
        From another directory, commands that only read or change existing
        things refuse, naming the database they would have used and why
        (the built-in defaults, no conf/gomail.toml here); no data/ appears.
        """
        would_be = os.path.join(self.elsewhere, "data", "gomail.db")
        for argv in (("user", "list"), ("user", "delete", "alice"), ("user", "app-password", "list", "alice"),
                     ("alias", "list"), ("alias", "remove", "info@example.com"),
                     ("blacklist", "list"), ("blacklist", "remove", "192.0.2.1")):
            result = self.gomail(*argv, cwd=self.elsewhere)
            self.assertRefused(result, f"gomail: no user database at {would_be} (configuration: the built-in "
                                       f"defaults: no --config, and no conf/gomail.toml in {self.elsewhere})")

    def test_verbose_names_configuration_and_database(self) -> None:
        """-v (before or after the command) says which configuration and database are used, on stderr."""
        database = os.path.join(self.server, "data", "gomail.db")
        added = self.gomail("user", "add", "alice", "--password-stdin", "-v", cwd=self.server,
                            stdin="s3cret-Horse-battery\n")
        self.assertEqual(added.returncode, 0, added.stderr)
        self.assertIn(f"gomail: user database: {database} (new)\n", added.stderr)
        for argv in (("-v", "user", "list"), ("user", "list", "-v")):
            result = self.gomail(*argv, cwd=self.server)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("1 user", result.stdout)
            self.assertEqual(result.stderr.splitlines(), [
                f"gomail: configuration: {os.path.join(self.server, 'conf', 'gomail.toml')}",
                f"gomail: user database: {database}"])
        quiet = self.gomail("user", "list", cwd=self.server)
        self.assertEqual(quiet.stderr, "")

    def test_creating_commands_create(self) -> None:
        """user add, alias add and blacklist add create the database where the configuration says."""
        for argv, stdin in ((("user", "add", "bob", "--password-stdin"), "s3cret-Horse-battery\n"),
                            (("alias", "add", "info@mx.example", "bob@example.com"), ""),
                            (("blacklist", "add", "192.0.2.7"), "")):
            config = os.path.join(self.elsewhere, argv[0] + ".toml")
            data = os.path.join(self.elsewhere, argv[0])
            with open(config, "w") as f:
                f.write(f"dataDir = {json.dumps(data)}\n")
            result = self.gomail(*argv, "--config", config, cwd=self.elsewhere, stdin=stdin)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(os.path.exists(os.path.join(data, "gomail.db")))

    def test_queue_names_the_spool(self) -> None:
        """
        gomail queue from another directory: one line naming the spool it
        looked for and where that came from; with -v, the spool used.
        """
        spool = os.path.join(self.elsewhere, "data", "spool")
        result = self.gomail("queue", "list", cwd=self.elsewhere)
        self.assertRefused(result, f"gomail: no spool in {spool} (tmp/ is missing) (configuration: the built-in "
                                   f"defaults: no --config, and no conf/gomail.toml in {self.elsewhere})")
        for name in ("tmp", "queue", "failed"):
            os.makedirs(os.path.join(self.server, "data", "spool", name))
        result = self.gomail("queue", "list", "-v", cwd=self.server)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"gomail: spool: {os.path.join(self.server, 'data', 'spool')}\n", result.stderr)
