"""
Tests for C{gomail alias ...} (L{gomail.cli.alias}): what an operator sees,
the exit status, the alias table after each command, and that a running
server's recipient check follows the command's changes without a restart.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.auth import aliases, userdb
from gomail.auth.users import SQLiteUserStore
from gomail.cli import main
from gomail.smtp.address import Path
from gomail.smtp.policy import RelayPolicy
from gomail.smtp.recipients import Accepted, LocalRecipients

START = 1714564800.0  # 2024-05-01T12:00:00Z
HASH = b"$2b$04$" + b"x" * 53


class AliasCommandMixin:
    """A configuration (local domain example.com, host mx.test) in a new directory, and C{gomail} to run."""

    def make_config(self) -> None:
        self.directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(self.directory)
        self.database = os.path.join(self.directory, "data", "gomail.db")
        self.config = os.path.join(self.directory, "gomail.toml")
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"dataDir = {json.dumps(os.path.join(self.directory, 'data'))}\n"
                    "[smtp]\nhostname = \"mx.test\"\nlocalDomains = [\"example.com\"]\n"
                    "[auth]\nuserRefresh = 1.0\n")
        self.clock = Clock()
        self.clock.advance(START)

    def gomail(self, *argv: str) -> tuple[int, str, str]:
        """Run C{gomail ARGV --config FILE} in-process; the exit status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([*argv, "--config", self.config], clock=self.clock)
        return status, out.getvalue(), err.getvalue()

    def table(self) -> list[aliases.Alias]:
        conn = userdb.open_connection(self.database)
        try:
            return userdb.transact(conn, aliases.list_aliases)
        finally:
            conn.close()

    def add_user(self, name: str) -> None:
        conn = userdb.open_connection(self.database)
        try:
            userdb.transact(conn, userdb.migrate)
            userdb.transact(conn, userdb.add_user, name, HASH, START)
        finally:
            conn.close()


class AliasCommandTests(AliasCommandMixin, SynchronousTestCase):
    """gomail alias add / list / remove."""

    def setUp(self) -> None:
        self.make_config()
        self.add_user("bob@example.com")
        self.add_user("carol@example.com")

    def test_add(self):
        """add stores the alias in canonical form with its comma-separated targets, and says so."""
        status, out, err = self.gomail("alias", "add", "Info@Example.COM.", "bob@example.com,Carol@Example.COM",
                                       "friend@example.org")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out, "alias info@example.com -> bob@example.com, Carol@example.com, friend@example.org\n")
        [alias] = self.table()
        self.assertEqual((alias.address, alias.targets, alias.created),
                         ("info@example.com", ("bob@example.com", "Carol@example.com", "friend@example.org"), START))

    def test_add_again_adds_targets(self):
        """add to an existing alias adds the new targets (none twice, whatever their case)."""
        self.gomail("alias", "add", "info@example.com", "bob@example.com")
        self.clock.advance(60)
        status, out, _ = self.gomail("alias", "add", "info@example.com", "BOB@example.com", "carol@example.com")
        self.assertEqual((status, out), (0, "alias info@example.com -> bob@example.com, carol@example.com\n"))
        [alias] = self.table()
        self.assertEqual((alias.created, alias.updated), (START, START + 60))

    def test_catch_all(self):
        """add @domain makes the domain's catch-all."""
        status, out, err = self.gomail("alias", "add", "@Example.com", "bob@example.com")
        self.assertEqual((status, out, err), (0, "catch-all @example.com -> bob@example.com\n", ""))
        self.assertTrue(self.table()[0].catch_all)

    def test_list(self):
        """list prints every alias by name, then the count; --json prints the same as a JSON array."""
        self.gomail("alias", "add", "info@example.com", "bob@example.com,carol@example.com")
        self.gomail("alias", "add", "@example.com", "bob@example.com")
        status, out, _ = self.gomail("alias", "list")
        self.assertEqual((status, out), (0, ("@example.com -> bob@example.com\n"
                                             "info@example.com -> bob@example.com, carol@example.com\n2 aliases\n")))
        status, out, _ = self.gomail("alias", "list", "--json")
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(out), [
            {"alias": "@example.com", "catch_all": True, "targets": ["bob@example.com"],
             "created": "2024-05-01T12:00:00Z", "updated": "2024-05-01T12:00:00Z"},
            {"alias": "info@example.com", "catch_all": False, "targets": ["bob@example.com", "carol@example.com"],
             "created": "2024-05-01T12:00:00Z", "updated": "2024-05-01T12:00:00Z"}])

    def test_remove(self):
        """remove ALIAS TARGET drops that target; remove ALIAS (or its last target) drops the alias."""
        self.gomail("alias", "add", "info@example.com", "bob@example.com,carol@example.com")
        self.assertEqual(self.gomail("alias", "remove", "Info@example.com", "Carol@example.com"),
                         (0, "now info@example.com -> bob@example.com\n", ""))
        self.assertEqual(self.gomail("alias", "remove", "info@example.com"), (0, "removed info@example.com\n", ""))
        self.assertEqual(self.table(), [])

    def test_errors(self):
        """A bad alias or target, or an unknown alias or target, is one line on stderr and status 1."""
        cases = [
            (("add", "info", "bob@example.com"), ("gomail: 'info' is neither an address (info@example.com) "
                                                  "nor a domain's catch-all (@example.com)\n")),
            (("add", "info@example.com", "bob"), ("gomail: the target 'bob' is not an address such as "
                                                  "bob@example.com\n")),
            (("add", "info@example.com", "a@[300.1.1.1]"), ("gomail: the target 'a@[300.1.1.1]' is not an "
                                                            "address such as bob@example.com\n")),
            (("remove", "info@example.com"), "gomail: no alias info@example.com\n"),
        ]
        for argv, message in cases:
            self.assertEqual(self.gomail("alias", *argv), (1, "", message), argv)
        self.gomail("alias", "add", "info@example.com", "bob@example.com")
        self.assertEqual(self.gomail("alias", "remove", "info@example.com", "carol@example.com"),
                         (1, "", "gomail: alias info@example.com has no target carol@example.com\n"))

    def test_warnings(self):
        """
        An alias outside the local domains, and a local target that is no user
        or alias, are stored with a warning on stderr.
        """
        status, _, err = self.gomail("alias", "add", "info@example.net", "bob@example.com")
        self.assertEqual((status, err), (0, ("gomail: warning: example.net is not a local domain "
                                             "(smtp.localDomains or smtp.hostname): the alias has no effect "
                                             "until it is\n")))
        status, _, err = self.gomail("alias", "add", "sales@example.com", "ghost@example.com", "x@example.org",
                                     "abuse@example.com")
        self.assertEqual((status, err), (0, ("gomail: warning: ghost@example.com is neither a user nor an alias: "
                                             "mail for sales@example.com skips it (refused when no target is "
                                             "left)\n")))

    def test_usage(self):
        """alias without an action prints its help, status 2; the help describes catch-alls."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(main(["alias"], clock=self.clock), 2)
        self.assertIn("catch-all", out.getvalue())
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            self.assertEqual(main(["alias", "add", "info@example.com"], clock=self.clock), 2)


class RunningServerTests(AliasCommandMixin, TestCase):
    """A running server's recipient check (the real user database) and the command, side by side."""

    async def test_server_follows_the_command(self) -> None:
        """
        An alias added by the command is used by the running server once its
        copy is auth.userRefresh seconds old, and a removed one stops being used:
        no restart.
        """
        self.make_config()
        self.add_user("bob@example.com")
        store = SQLiteUserStore(self.database)
        self.addCleanup(store.close)
        await store.start()
        server_clock = Clock()
        policy = RelayPolicy((), ("example.com",), require_auth=False, allow_local_only=False)
        recipients = LocalRecipients(policy, "mx.test", users=store,
                                     aliases=aliases.AliasStore(store.pool, server_clock, 1.0))

        async def rcpt(address: str) -> object:
            return await recipients.check(Path(address), [], 100)

        self.assertEqual((await rcpt("info@example.com")).code, 550)
        self.patch(sys, "stdin", io.StringIO())
        self.assertEqual(self.gomail("alias", "add", "info@example.com", "bob@example.com")[0], 0)
        server_clock.advance(1.0)
        self.assertEqual(await rcpt("info@example.com"), Accepted(("bob@example.com",)))
        self.assertEqual(self.gomail("alias", "remove", "info@example.com")[0], 0)
        server_clock.advance(1.0)
        self.assertEqual((await rcpt("info@example.com")).code, 550)
