"""
DSNs to the sender (issue 15, item 5): failed recipients are reported after
the attempt that failed them (one DSN per attempt that has some), not when the
message's last recipient settles; one "delayed" warning after
delivery.delayWarning, recorded in the envelope so it goes out once even
across restarts; never anything for the null sender.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gomail.delivery.backoff import RetryPolicy
from gomail.delivery.failed import FailedStore
from gomail.delivery.queue import DeliveryQueue
from gomail.delivery.router import Router
from gomail.interfaces import IDeliveryAgent
from gomail.spool.envelope import FAILED, PENDING, Envelope
from gomail.spool.store import Spool
from tests.spooltesting import listing, make_spool, new_envelope, read

CONTENT = b"From: alice@example.org\r\nSubject: quarterly report\r\n\r\nfigures\r\n"
START = 1700000000.0
HOUR = 3600.0


@implementer(IDeliveryAgent)
class Mailboxes:
    """
    An agent answering by recipient: C{replies[address]} (a code and text,
    changeable between attempts), 250 for anyone else. Every message it is
    given is recorded with its content, so the DSNs the queue sends (to the
    original sender) can be read.
    """

    name = "scripted"
    idempotent = False

    def __init__(self, replies: dict[str, tuple[int, str]]) -> None:
        self.replies = dict(replies)
        self.received: list[tuple[Envelope, bytes]] = []

    def deliver(self, envelope: Envelope, path: str, recipients: list) -> Deferred:
        with open(path, "rb") as f:
            self.received.append((envelope, f.read()))
        return succeed({r.address: self.replies.get(r.address, (250, "2.0.0 Ok")) for r in recipients})

    def dsns(self, action: str | None = None) -> list[bytes]:
        """The DSNs delivered so far (from <>, to the sender), oldest first; of one action if given."""
        return [content for envelope, content in self.received
                if "bounce_for" in envelope.extra and (action is None or b"Action: %s" % action.encode() in content)]


class DSNTestCase(SynchronousTestCase):
    """A spool and a queue on a Clock, around L{Mailboxes}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.directory = os.path.abspath(self.mktemp())
        self.spool = make_spool(self.directory, self.clock)

    def queue(self, agent: Mailboxes, spool: Spool | None = None, delay_warning: float = 4 * HOUR) -> DeliveryQueue:
        spool = spool or self.spool
        queue = DeliveryQueue(spool, Router(agent), self.clock, 4, processing_timeout=300,
                              policy=RetryPolicy(initial=300, factor=2, maximum=HOUR, jitter=0, max_age=5 * 86400),
                              failed=FailedStore(spool, self.clock), hostname="mx.test", delay_warning=delay_warning)
        spool.add_listener(queue.enqueue)
        queue.startService()
        self.addCleanup(queue.stopService)
        return queue

    def commit(self, *recipients: str, sender: str = "alice@example.org") -> Envelope:
        message = self.spool.new_message()
        message.write(CONTENT)
        envelope = new_envelope(message.id, *recipients, sender=sender, received=self.clock.seconds())
        envelope.next_attempt = self.clock.seconds()
        self.successResultOf(Deferred.fromCoroutine(message.commit(envelope)))
        return envelope

    def on_disk(self, queue_id: str) -> Envelope:
        return Envelope.from_json(read(self.spool.path("queue", queue_id + ".json")))


class FailedRecipientTests(DSNTestCase):
    """The DSN for a 550 goes out after the attempt that got it."""

    def test_550_reported_after_the_first_attempt_while_another_is_deferred(self) -> None:
        """
        One recipient refused with 550 and one deferred with 451: after the
        first attempt the sender has a DSN for the 550 one only; the message
        stays queued for the deferred one, and the envelope records the report.
        """
        agent = Mailboxes({"gone@example.net": (550, "5.1.1 No such user"), "slow@example.net": (451, "4.2.0 Busy")})
        queue = self.queue(agent)
        envelope = self.commit("gone@example.net", "slow@example.net")
        [dsn] = agent.dsns()
        self.assertEqual([(e.sender, [r.address for r in e.recipients], e.extra["bounce_for"])
                          for e, _ in agent.received if "bounce_for" in e.extra],
                         [("", ["alice@example.org"], envelope.id)])  # from <>, to the sender
        self.assertIn(b"To: <alice@example.org>", dsn)
        self.assertIn(b"Subject: Undelivered Mail Returned to Sender", dsn)
        self.assertIn(b"Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                      b"Diagnostic-Code: smtp; 550 5.1.1 No such user", dsn)
        self.assertNotIn(b"slow@example.net", dsn)
        self.assertIn(b"Subject: quarterly report", dsn)  # the original's headers
        stored = self.on_disk(envelope.id)
        self.assertEqual([r.status for r in stored.recipients], [FAILED, PENDING])
        self.assertEqual(stored.extra["dsn_failed"], ["gone@example.net"])
        self.assertEqual(queue.stats.bounces, 1)
        self.assertEqual(listing(self.spool, "failed"), [])

    def test_each_attempt_reports_only_its_new_failures(self) -> None:
        """
        A second attempt that fails the other recipient sends a second DSN for
        it alone; the message then goes to failed/ with no third DSN.
        """
        agent = Mailboxes({"gone@example.net": (550, "5.1.1 No such user"), "slow@example.net": (451, "4.2.0 Busy")})
        queue = self.queue(agent)
        envelope = self.commit("gone@example.net", "slow@example.net")
        agent.replies["slow@example.net"] = (552, "5.2.2 Mailbox full")
        self.clock.advance(300)
        first, second = agent.dsns()
        self.assertIn(b"gone@example.net", first)
        self.assertIn(b"Final-Recipient: rfc822; slow@example.net\r\nAction: failed\r\nStatus: 5.2.2", second)
        self.assertNotIn(b"gone@example.net", second.split(b"Content-Type: text/rfc822-headers")[0])
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertEqual(queue.stats.bounces, 2)

    def test_delivered_later_ends_without_another_dsn(self) -> None:
        """When the deferred recipient is delivered later, the sender hears nothing more; the message goes to failed/."""
        agent = Mailboxes({"gone@example.net": (550, "5.1.1 No such user"), "slow@example.net": (451, "4.2.0 Busy")})
        self.queue(agent)
        envelope = self.commit("gone@example.net", "slow@example.net")
        del agent.replies["slow@example.net"]
        self.clock.advance(300)
        self.assertEqual(len(agent.dsns()), 1)
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])

    def test_null_sender_never_gets_a_dsn(self) -> None:
        """A message from <> (a DSN itself) that fails for one recipient and is delayed for another gets nothing."""
        agent = Mailboxes({"gone@example.net": (550, "5.1.1 No such user"), "slow@example.net": (451, "4.2.0 Busy")})
        queue = self.queue(agent)
        envelope = self.commit("gone@example.net", "slow@example.net", sender="")
        self.clock.advance(5 * HOUR)
        self.assertEqual(agent.dsns(), [])
        self.assertEqual((queue.stats.bounces, queue.stats.delay_warnings), (0, 0))
        self.assertNotIn("dsn_delayed", self.on_disk(envelope.id).extra)


class DelayWarningTests(DSNTestCase):
    """One "delayed" DSN once delayWarning has passed."""

    def test_one_warning_at_four_hours(self) -> None:
        """
        A message deferred again and again: nothing before 4 h; at 4 h (an
        attempt is made then, whatever the backoff) one delayed DSN with a 4.x.y
        status and Will-Retry-Until; none after, however long it waits.
        """
        agent = Mailboxes({"slow@example.net": (451, "4.2.0 Busy")})
        queue = self.queue(agent)
        envelope = self.commit("slow@example.net")
        self.clock.advance(4 * HOUR - 1)
        self.assertEqual(agent.dsns(), [])
        self.clock.advance(1)
        [warning] = agent.dsns()
        self.assertIn(b"Subject: Delayed Mail (still being retried)", warning)
        self.assertIn(b"Final-Recipient: rfc822; slow@example.net\r\nAction: delayed\r\nStatus: 4.2.0\r\n", warning)
        self.assertIn(b"Will-Retry-Until: ", warning)
        self.assertIn(b"could not be delivered for 4.0 hours", warning)
        self.assertEqual(self.on_disk(envelope.id).extra["dsn_delayed"], START + 4 * HOUR)
        self.clock.advance(20 * HOUR)
        self.assertEqual(len(agent.dsns()), 1)
        self.assertEqual(queue.stats.delay_warnings, 1)

    def test_sent_once_across_a_restart(self) -> None:
        """A warning recorded in the envelope is not sent again by the next server on the same spool."""
        agent = Mailboxes({"slow@example.net": (451, "4.2.0 Busy")})
        first = self.queue(agent)
        self.commit("slow@example.net")
        self.clock.advance(4 * HOUR)
        self.assertEqual(len(agent.dsns("delayed")), 1)
        first.stopService()
        spool = make_spool(self.directory, self.clock)
        report = self.successResultOf(spool.recover())
        second = self.queue(agent, spool)
        for envelope in report.envelopes:
            second.enqueue(envelope)
        self.clock.advance(10 * HOUR)
        self.assertEqual(len(agent.dsns("delayed")), 1)
        self.assertEqual(second.stats.delay_warnings, 0)

    def test_zero_turns_it_off(self) -> None:
        """delayWarning = 0: no warning however long the message waits."""
        agent = Mailboxes({"slow@example.net": (451, "4.2.0 Busy")})
        self.queue(agent, delay_warning=0)
        self.commit("slow@example.net")
        self.clock.advance(30 * HOUR)
        self.assertEqual(agent.dsns(), [])

    def test_delivered_before_the_warning(self) -> None:
        """Mail delivered before delayWarning gets no warning at all."""
        agent = Mailboxes({"slow@example.net": (451, "4.2.0 Busy")})
        self.queue(agent)
        self.commit("slow@example.net")
        self.clock.advance(HOUR)
        del agent.replies["slow@example.net"]
        self.clock.advance(10 * HOUR)
        self.assertEqual(agent.dsns(), [])
        self.assertEqual(listing(self.spool, "queue"), [])

