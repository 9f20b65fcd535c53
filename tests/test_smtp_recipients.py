"""
Tests for who exists in the local domains (L{gomail.smtp.recipients}) and the
relay edge cases of issue 14 (items 5 and 8), through the real SMTP protocol:
the commands the tester sent, the replies, the envelope, and where the mail
lands (the router's choice and the Maildir).

The user store and the alias table are test doubles here (the real ones are
exercised in L{tests.test_cli_alias} and L{AliasStoreTests} below).
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.auth import aliases, userdb
from gomail.auth.names import canonical_username
from gomail.auth.records import UserRecord
from gomail.auth.users import SQLiteUserStore
from gomail.delivery.maildir import MaildirDelivery
from gomail.delivery.router import Router
from gomail.root import build_service
from gomail.smtp.address import Path
from gomail.smtp.policy import RelayPolicy
from gomail.smtp.recipients import MAX_DEPTH, Accepted, LocalRecipients, Refused
from gomail.spool.envelope import Recipient
from gomail.spool.writer import ImmediateWriter
from tests.smtphelpers import HarnessMixin, SMTPHarness, queued_id, replies
from tests.test_service import config_in

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"
UNTRUSTED = "203.0.113.5"
NOW = 1714564800.0


class FakeUsers:
    """A user store: C{get_user} answers from a dict (or fails while C{down}, or waits while C{holding})."""

    def __init__(self, *names: str) -> None:
        self.users = {canonical_username(n): UserRecord(name=canonical_username(n), password_hash=b"x")
                      for n in names}
        self.down = False
        self.holding: list[tuple[str, Deferred]] | None = None
        self.asked: list[str] = []

    def get_user(self, name: str) -> Deferred:
        self.asked.append(name)
        if self.down:
            return fail(RuntimeError("database is locked"))
        try:
            record = self.users.get(canonical_username(name))
        except ValueError as e:
            return fail(e)
        if self.holding is not None:
            d: Deferred = Deferred()
            self.holding.append((name, d))
            d.addCallback(lambda _: record)
            return d
        return succeed(record)

    def release(self) -> None:
        held, self.holding = self.holding or [], None
        for _, d in held:
            d.callback(None)


class FakeAliases:
    """An alias table (canonical names as keys), as L{aliases.AliasStore.table} gives it."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, ...]] = {}
        self.down = False

    def add(self, name: str, *targets: str) -> None:
        self.entries[aliases.alias_name(name)] = aliases.alias_targets(targets)

    def table(self) -> Deferred:
        return fail(RuntimeError("database is locked")) if self.down else succeed(self.entries)


class RelayedTo:
    """A stand-in relay agent: the router's choice is all that is looked at."""

    name = "relay"


class RecipientTestCase(HarnessMixin, SynchronousTestCase):
    """A server for C{example.com} (and its own C{mx.test}) with a user store and aliases."""

    def setUp(self) -> None:
        self.users = FakeUsers("bob@example.com", "carol@example.com", "ops@example.com")
        self.aliases = FakeAliases()

    def server(self, verify: bool = True, postmaster: str = "", users: Any = "default", **kwargs: Any) -> SMTPHarness:
        kwargs.setdefault("local_domains", ("example.com", "mx.test"))
        h = self.harness(**kwargs)
        h.server.recipients = LocalRecipients(
            h.policy, "mx.test", postmaster, users=self.users if users == "default" else users,
            aliases=self.aliases, verify=verify)
        return h

    def rcpt(self, h: SMTPHarness, *recipients: bytes, host: str = UNTRUSTED) -> list[bytes]:
        """The replies to EHLO, MAIL and one RCPT per recipient, sent one by one from C{host}."""
        client = h.connect(host)
        client.send(b"EHLO client.test\r\n")
        client.send(b"MAIL FROM:<alice@example.org>\r\n")
        self.client = client
        return [client.send(b"RCPT TO:<" + r + b">\r\n") for r in recipients]

    def send(self, h: SMTPHarness, *recipients: bytes, host: str = UNTRUSTED) -> Any:
        """Send a message to C{recipients} (each must be accepted); the stored envelope."""
        for reply in self.rcpt(h, *recipients, host=host):
            self.assertEqual(reply, b"250 2.1.5 Recipient ok\r\n")
        self.client.send(b"DATA\r\n")
        return h.envelope(queued_id(self.client.send(MESSAGE + b".\r\n")))

    def addresses(self, envelope: Any) -> list[str]:
        return [r.address for r in envelope.recipients]

    def land(self, h: SMTPHarness, envelope: Any) -> tuple[list[str], list[str]]:
        """
        Route the envelope as the server's delivery queue does (relay on) and
        deliver its local part into the Maildirs; the local and the relayed
        addresses.
        """
        mailbox = MaildirDelivery(h.spool.path("mailbox"), "mx.test", ImmediateWriter())
        router = Router(mailbox, RelayedTo(), h.policy.local_domains)
        local: list[str] = []
        relayed: list[str] = []
        for agent, group in router.route(envelope.recipients):
            if agent is mailbox:
                self.successResultOf(mailbox.deliver(envelope, h.spool.message_path(envelope.id), group))
                local += [r.address for r in group]
            else:
                relayed += [r.address for r in group]
        return local, relayed

    def maildir(self, h: SMTPHarness, name: str) -> list[str]:
        path = os.path.join(h.spool.path("mailbox"), name, "new")
        return os.listdir(path) if os.path.isdir(path) else []


class RelayEdgeCaseTests(RecipientTestCase):
    """Issue 14 item 5: one canonical domain for policy, lookup, routing and the envelope."""

    def test_trailing_dot_to_local_domain_stays_local(self):
        """
        The tester's RCPT TO:<relaytest@example.com.> from an untrusted client:
        the user relaytest@example.com gets it in its Maildir, nothing goes to
        the relay, and the envelope holds the address without the dot.
        """
        self.users = FakeUsers("relaytest@example.com")
        h = self.server()
        envelope = self.send(h, b"relaytest@Example.COM.")
        self.assertEqual(self.addresses(envelope), ["relaytest@example.com"])
        self.assertEqual(self.land(h, envelope), (["relaytest@example.com"], []))
        self.assertEqual(len(self.maildir(h, "relaytest@example.com")), 1)

    def test_trailing_dot_unknown_local_user(self):
        """RCPT TO:<relaytest@example.com.> without such a user: 550 5.1.1, naming the canonical address."""
        self.assertEqual(self.rcpt(self.server(), b"relaytest@example.com."),
                         [b"550 5.1.1 <relaytest@example.com>: Recipient address rejected: User unknown\r\n"])

    def test_trailing_dot_to_foreign_domain_refused(self):
        """A foreign domain with a trailing dot is foreign: 554 5.7.1 Relay access denied."""
        self.assertEqual(self.rcpt(self.server(), b"relaytest@example.net.", b"relaytest@EXAMPLE.net"),
                         [b"554 5.7.1 <relaytest@example.net>: Relay access denied\r\n"] * 2)

    def test_postmaster_without_domain_stays_local(self):
        """
        RCPT TO:<postmaster> (RFC 5321 4.5.1) is postmaster@<hostname>, a local
        mailbox: delivered to the Maildir, never relayed, from anyone.
        """
        h = self.server()
        for host in ("127.0.0.1", UNTRUSTED):
            envelope = self.send(h, b"postmaster", host=host)
            self.assertEqual(self.addresses(envelope), ["postmaster@mx.test"])
            self.assertEqual(self.land(h, envelope), (["postmaster@mx.test"], []))
        self.assertEqual(len(self.maildir(h, "postmaster@mx.test")), 2)

    def test_postmaster_at_hostname_accepted(self):
        """<postmaster@hostname> itself (refused before) is accepted from an untrusted client, in any case."""
        self.assertEqual(self.rcpt(self.server(), b"postmaster@mx.test", b"PostMaster@MX.test."),
                         [b"250 2.1.5 Recipient ok\r\n"] * 2)

    def test_bad_address_literals(self):
        """Invalid address literals, as the tester's [300.1.1.1] and [1.2.3], are 501 5.1.3."""
        got = self.rcpt(self.server(), b"postmaster@[300.1.1.1]", b"postmaster@[1.2.3]",
                        b"postmaster@[IPv6:2001:db8::zz]", b"postmaster@1.2.3.4", host="127.0.0.1")
        self.assertEqual([r[:10] for r in got], [b"501 5.1.3 "] * 4)

    def test_address_literal_is_foreign(self):
        """A valid address literal is not a local domain: relay rules apply to it."""
        self.assertEqual(self.rcpt(self.server(), b"postmaster@[192.0.2.1]"),
                         [b"554 5.7.1 <postmaster@[192.0.2.1]>: Relay access denied\r\n"])


class LocalRecipientTests(RecipientTestCase):
    """Issue 14 item 8: only users, aliases and the role accounts exist in a local domain."""

    def test_unknown_user_refused(self):
        """An address of a local domain that is no user or alias: 550 5.1.1 User unknown, counted."""
        h = self.server()
        self.assertEqual(self.rcpt(h, b"nobody@example.com"),
                         [b"550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown\r\n"])
        self.assertEqual(h.server.rejections["unknown_recipient"], 1)

    def test_refused_recipient_skipped(self):
        """An unknown recipient does not end the transaction: the known ones get the message."""
        h = self.server()
        got = self.rcpt(h, b"nobody@example.com", b"bob@example.com")
        self.assertEqual([r[:3] for r in got], [b"550", b"250"])
        self.client.send(b"DATA\r\n")
        envelope = h.envelope(queued_id(self.client.send(MESSAGE + b".\r\n")))
        self.assertEqual(self.addresses(envelope), ["bob@example.com"])

    def test_user_in_any_case(self):
        """A user is found in any case and with the root's dot; the envelope holds its canonical name."""
        h = self.server()
        envelope = self.send(h, b"Bob@EXAMPLE.com.", b"bob@example.com")
        self.assertEqual(self.addresses(envelope), ["bob@example.com"])
        self.assertEqual(self.land(h, envelope), (["bob@example.com"], []))
        self.assertEqual(len(self.maildir(h, "bob@example.com")), 1)

    def test_role_accounts_exist_everywhere(self):
        """postmaster@ and abuse@ of every local domain exist without users: the postmaster's Maildir."""
        h = self.server()
        envelope = self.send(h, b"postmaster@example.com", b"abuse@example.com", b"Abuse@mx.test")
        self.assertEqual(self.addresses(envelope), ["postmaster@mx.test"])
        self.assertEqual(self.land(h, envelope), (["postmaster@mx.test"], []))

    def test_configured_postmaster(self):
        """With smtp.postmaster set, every role account and <postmaster> deliver to that user."""
        h = self.server(postmaster="Ops@Example.COM")
        envelope = self.send(h, b"postmaster", b"postmaster@example.com", b"abuse@mx.test")
        self.assertEqual(self.addresses(envelope), ["ops@example.com"])

    def test_alias_for_postmaster_wins(self):
        """An alias of postmaster@<domain> takes precedence over smtp.postmaster."""
        self.aliases.add("postmaster@example.com", "carol@example.com")
        envelope = self.send(self.server(), b"postmaster@example.com", b"postmaster")
        self.assertEqual(self.addresses(envelope), ["carol@example.com", "postmaster@mx.test"])

    def test_alias_expanded_at_rcpt(self):
        """
        An alias is replaced by its targets in the envelope: local users go to
        their Maildirs, a foreign target to the relay (forwarding), even from
        an untrusted client.
        """
        self.aliases.add("info@example.com", "Bob@example.com", "friend@example.org")
        h = self.server()
        envelope = self.send(h, b"Info@Example.com")
        self.assertEqual(self.addresses(envelope), ["bob@example.com", "friend@example.org"])
        self.assertEqual(self.land(h, envelope), (["bob@example.com"], ["friend@example.org"]))
        self.assertEqual(self.maildir(h, "info@example.com"), [])

    def test_nested_aliases_and_duplicates(self):
        """Aliases of aliases expand; an address reached twice is in the envelope once."""
        self.aliases.add("team@example.com", "bob@example.com", "leads@example.com")
        self.aliases.add("leads@example.com", "bob@example.com", "carol@example.com")
        envelope = self.send(self.server(), b"team@example.com", b"carol@example.com")
        self.assertEqual(self.addresses(envelope), ["bob@example.com", "carol@example.com"])

    def test_alias_keeping_a_copy(self):
        """An alias of a user that names the user itself keeps a copy for the user (bob -> bob, carol)."""
        self.aliases.add("bob@example.com", "bob@example.com", "carol@example.com")
        envelope = self.send(self.server(), b"bob@example.com")
        self.assertEqual(self.addresses(envelope), ["bob@example.com", "carol@example.com"])

    def test_alias_loop(self):
        """Aliases that only name each other deliver nowhere: 550 5.4.6, not an endless expansion."""
        self.aliases.add("a@example.com", "b@example.com")
        self.aliases.add("b@example.com", "a@example.com")
        self.assertEqual(self.rcpt(self.server(), b"a@example.com"),
                         [b"550 5.4.6 <a@example.com>: Recipient address rejected: alias loop\r\n"])

    def test_alias_too_deep(self):
        """A chain of aliases deeper than MAX_DEPTH: 550 5.4.6."""
        for n in range(MAX_DEPTH + 2):
            self.aliases.add(f"a{n}@example.com", f"a{n + 1}@example.com")
        self.aliases.add(f"a{MAX_DEPTH + 2}@example.com", "bob@example.com")
        got = self.rcpt(self.server(), b"a0@example.com")
        self.assertEqual(got, [b"550 5.4.6 <a0@example.com>: Recipient address rejected: alias expansion too deep\r\n"])
        self.assertEqual(self.rcpt(self.server(), b"a3@example.com"), [b"250 2.1.5 Recipient ok\r\n"])

    def test_alias_with_unknown_target(self):
        """An alias whose local targets are all unknown is refused (550 5.1.1); known targets are kept."""
        self.aliases.add("gone@example.com", "ghost@example.com")
        self.aliases.add("some@example.com", "ghost@example.com", "bob@example.com")
        h = self.server()
        self.assertEqual(self.rcpt(h, b"gone@example.com")[0][:10], b"550 5.1.1 ")
        self.assertEqual(self.addresses(self.send(h, b"some@example.com")), ["bob@example.com"])

    def test_fan_out_counts_against_max_recipients(self):
        """
        The targets count against smtp.maxRecipients: an alias that cannot fit
        even alone is 550 5.5.3; one that does not fit beside the recipients
        already given is 452 4.5.3 (try again in another transaction).
        """
        self.aliases.add("all@example.com", *[f"u{n}@example.org" for n in range(6)])
        self.aliases.add("pair@example.com", "u1@example.org", "u2@example.org")
        h = self.server(maxRecipients=5)
        got = self.rcpt(h, b"all@example.com", b"x1@example.org", b"x2@example.org", b"x3@example.org",
                        b"x4@example.org", b"pair@example.com", b"x5@example.org", b"x6@example.org", host="127.0.0.1")
        self.assertEqual(got[0], b"550 5.5.3 <all@example.com>: Recipient address rejected: "
                                 b"expands to more than 5 recipients\r\n")
        self.assertEqual(got[1:5], [b"250 2.1.5 Recipient ok\r\n"] * 4)
        self.assertEqual(got[5], b"452 4.5.3 Error: too many recipients\r\n")
        self.assertEqual(got[6:], [b"250 2.1.5 Recipient ok\r\n", b"452 4.5.3 Error: too many recipients\r\n"])

    def test_catch_all(self):
        """
        A domain's catch-all takes the addresses that are neither users nor
        aliases; users, aliases and the role accounts keep theirs.
        """
        self.aliases.add("@example.com", "ops@example.com")
        self.aliases.add("info@example.com", "carol@example.com")
        h = self.server()
        self.assertEqual(self.addresses(self.send(h, b"whoever@example.com")), ["ops@example.com"])
        envelope = self.send(h, b"bob@example.com", b"info@example.com", b"postmaster@example.com")
        self.assertEqual(self.addresses(envelope), ["bob@example.com", "carol@example.com", "postmaster@mx.test"])
        self.assertEqual(self.rcpt(h, b"whoever@mx.test")[0][:10], b"550 5.1.1 ")  # its own domain only

    def test_store_down_is_temporary(self):
        """A user store or alias table that cannot answer: 451 4.3.0, never 250 or 550."""
        h = self.server()
        self.users.down = True
        self.assertEqual(self.rcpt(h, b"bob@example.com"),
                         [b"451 4.3.0 <bob@example.com>: Temporary lookup failure, try again later\r\n"])
        self.users.down, self.aliases.down = False, True
        self.assertEqual(self.rcpt(h, b"bob@example.com")[0][:10], b"451 4.3.0 ")
        self.assertEqual(h.server.rejections["recipient_lookup_failed"], 2)

    def test_pipelined_commands_wait_for_the_lookup(self):
        """
        While a lookup is pending, pipelined commands behind the RCPT wait, and
        their replies come in order once it is answered.
        """
        h = self.server()
        client = h.connect("127.0.0.1")
        client.send(b"EHLO client.test\r\nMAIL FROM:<alice@example.org>\r\n")
        self.users.holding = []
        self.assertEqual(client.send(b"RCPT TO:<bob@example.com>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n"), b"")
        self.users.release()
        self.assertEqual(replies(client.take()), [b"250 2.1.5 Recipient ok", b"250 2.1.5 Recipient ok",
                                                  b"354 End data with <CR><LF>.<CR><LF>"])
        envelope = h.envelope(queued_id(client.send(MESSAGE + b".\r\n")))
        self.assertEqual(self.addresses(envelope), ["bob@example.com", "x@example.net"])

    def test_other_domains_not_looked_up(self):
        """A trusted client's mail to another domain (the quick start's bob@example.net) needs no lookup."""
        h = self.server()
        self.assertEqual(self.rcpt(h, b"bob@example.net", host="127.0.0.1"), [b"250 2.1.5 Recipient ok\r\n"])
        self.assertEqual(self.users.asked, [])

    def test_verify_off_accepts_any_local_address(self):
        """With smtp.verifyRecipients off, an unknown local address is accepted as its own mailbox; aliases apply."""
        self.aliases.add("info@example.com", "bob@example.com")
        envelope = self.send(self.server(verify=False), b"Nobody@example.com", b"info@example.com")
        self.assertEqual(self.addresses(envelope), ["Nobody@example.com", "bob@example.com"])

    def test_without_user_store(self):
        """A server built without a user store accepts any local address, as before issue 14."""
        h = self.harness()
        self.assertEqual(self.rcpt(h, b"anyone@example.com"), [b"250 2.1.5 Recipient ok\r\n"])


class AliasStoreTests(TestCase):
    """
    The real user database: aliases written by another connection (what
    C{gomail alias} does) reach a running server's lookups within
    C{auth.userRefresh}, without a restart; a database that cannot answer
    gives 451.
    """

    async def start(self, refresh: float = 1.0) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "gomail.db")
        self.clock = Clock()
        self.store = SQLiteUserStore(self.path)
        self.addCleanup(self.store.close)
        await self.store.start()
        self.aliases = aliases.AliasStore(self.store.pool, self.clock, refresh)
        policy = RelayPolicy((), ("example.com",), require_auth=False, allow_local_only=False)
        self.recipients = LocalRecipients(policy, "mx.test", users=self.store, aliases=self.aliases)

    def cli(self, fn: Any, *args: Any) -> Any:
        """Run an alias change on a connection of its own, as the gomail command does."""
        conn: sqlite3.Connection = userdb.open_connection(self.path)
        try:
            return userdb.transact(conn, fn, *args)
        finally:
            conn.close()

    async def check(self, address: str) -> Accepted | Refused:
        return await self.recipients.check(Path(address), [], 100)

    async def test_changes_seen_after_refresh(self) -> None:
        """An alias added by another process is used once the table is userRefresh seconds old; so is a removal."""
        await self.start(refresh=1.0)
        self.cli(userdb.add_user, "bob@example.com", b"$2b$04$" + b"x" * 53, NOW)
        self.assertEqual((await self.check("info@example.com")).code, 550)
        self.cli(aliases.add_alias, "info@example.com", ["bob@example.com"], NOW)
        self.assertEqual((await self.check("info@example.com")).code, 550)  # the copy is fresh still
        self.clock.advance(1.0)
        self.assertEqual(await self.check("info@example.com"), Accepted(("bob@example.com",)))
        self.cli(aliases.remove_alias, "info@example.com")
        self.clock.advance(1.0)
        self.assertEqual((await self.check("info@example.com")).code, 550)

    async def test_refresh_zero_reads_every_time(self) -> None:
        """With userRefresh 0 every lookup asks the database whether anything changed."""
        await self.start(refresh=0)
        self.cli(aliases.add_alias, "@example.com", ["boss@example.org"], NOW)
        self.assertEqual(await self.check("x@example.com"), Accepted(("boss@example.org",)))

    async def test_database_gone_is_temporary(self) -> None:
        """When the database cannot be asked, the answer is 451 4.3.0, not a stale or a permanent one."""
        await self.start(refresh=1.0)
        self.cli(aliases.add_alias, "info@example.com", ["boss@example.org"], NOW)
        self.assertEqual(await self.check("info@example.com"), Accepted(("boss@example.org",)))

        def locked(cursor: Any, known: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

        self.patch(aliases, "snapshot", locked)
        self.clock.advance(1.0)
        self.assertEqual((await self.check("info@example.com")).code, 451)


class WiringTests(SynchronousTestCase):
    """What build_service gives the SMTP server and the router."""

    def build(self, **smtp: Any) -> Any:
        config = config_in(os.path.abspath(self.mktemp()), forwardSMTP=True, forwardHost="smtp.example.net")
        config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, localDomains=("Example.COM.",),
                                                                      **smtp))
        return build_service(config, MemoryReactorClock())

    def test_one_set_of_local_domains(self):
        """
        The relay policy, the recipient check and the router share the
        canonical local domains, the hostname among them: <postmaster> is
        accepted from anyone and delivered to a Maildir, never to the relay.
        """
        service = self.build()
        smtp = service.smtp
        self.assertEqual(smtp.policy.local_domains, {"example.com", "mx.test"})
        self.assertEqual(service.delivery.router.local_domains, smtp.policy.local_domains)
        self.assertIs(smtp.recipients.users, service.auth.users)
        self.assertTrue(smtp.recipients.verify)
        self.assertEqual(smtp.recipients.postmaster, "postmaster@mx.test")
        routes = service.delivery.router.route([Recipient("postmaster@mx.test"), Recipient("a@example.com"),
                                                Recipient("relaytest@example.net")])
        self.assertEqual([(agent.name, [r.address for r in group]) for agent, group in routes],
                         [("mailbox", ["postmaster@mx.test", "a@example.com"]), ("relay", ["relaytest@example.net"])])

    def test_settings(self):
        """smtp.verifyRecipients and smtp.postmaster reach the recipient check."""
        recipients = self.build(verifyRecipients=False, postmaster="Ops@Example.com").smtp.recipients
        self.assertEqual((recipients.verify, recipients.postmaster), (False, "Ops@example.com"))
