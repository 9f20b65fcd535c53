"""
A spool writer that fails a finished message's bookkeeping never makes the
delivery queue forget the message (issue 16: killing the writer child under
relay load used to leave delivered messages pending on disk, forgotten by
the running server and sent again by the next flush or restart).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail

from gomail.spool.process import WriterGone
from tests.spooltesting import listing
from tests.test_delivery_queue import QueueTestCase, ScriptedAgent


class FailingRemovals:
    """Makes the spool's removals fail C{times} times (the writer process gone), then work again."""

    def __init__(self, spool: Any, times: int, method: str = "remove") -> None:
        self.spool, self.left, self.method = spool, times, method
        self.real = getattr(spool, method)
        self.calls = 0
        setattr(spool, method, self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            return fail(WriterGone("the spool writer process exited: killed"))
        return self.real(*args, **kwargs)


class UnrecordedOutcomeTests(QueueTestCase):
    """What the queue does when the writer fails a finished message's removal or move."""

    def test_delivered_message_kept_until_its_removal_is_written(self) -> None:
        """
        The removal fails twice: the message stays in the queue (depth 1, files
        on disk), is never handed to the agent again, and is removed 2 s then
        4 s later, once the writer takes the job.
        """
        agent = ScriptedAgent()
        queue = self.queue(agent)
        removals = FailingRemovals(self.spool, times=2)
        envelope = self.commit("bob@example.com")
        self.assertEqual(agent.calls, [(envelope.id, ["bob@example.com"])])
        self.assertEqual((queue.depth, queue.unrecorded), (1, 1))
        self.assertIn(envelope.id + ".eml", [n for n in listing(self.spool, "queue")])
        self.clock.advance(2)
        self.assertEqual((removals.calls, queue.depth), (2, 1))
        self.clock.advance(4)
        self.assertEqual((removals.calls, queue.depth, queue.unrecorded), (3, 0, 0))
        self.assertEqual([n for n in listing(self.spool, "queue")], [])
        self.assertEqual(len(agent.calls), 1)  # delivered once, whatever the writer did
        self.assertEqual((queue.stats.delivered_messages, queue.stats.unrecorded_retries), (1, 2))
        self.flushLoggedErrors()

    def test_flush_does_not_send_it_again(self) -> None:
        """gomail queue flush while the outcome waits: the retry writes it, and nothing is delivered again."""
        agent = ScriptedAgent()
        queue = self.queue(agent)
        FailingRemovals(self.spool, times=1)
        self.commit("bob@example.com", "carol@example.com")
        queue.flush()
        self.assertEqual((len(agent.calls), queue.depth), (1, 0))

    def test_only_pending_recipients_retried(self) -> None:
        """
        One recipient delivered, one deferred, the envelope rewrite fails: the
        next attempt goes to the deferred recipient only.
        """
        agent = ScriptedAgent({"carol@example.com": (451, "4.2.0 Busy")}, 250)
        queue = self.queue(agent)
        FailingRemovals(self.spool, times=1, method="update")
        envelope = self.commit("bob@example.com", "carol@example.com")
        self.assertEqual(queue.depth, 1)
        self.clock.advance(3600)
        self.assertEqual(agent.calls[1], (envelope.id, ["carol@example.com"]))
        self.assertEqual(queue.depth, 0)
        self.flushLoggedErrors(WriterGone)

    def test_failed_message_move_retried(self) -> None:
        """A 5xx outcome whose move to failed/ the writer fails is moved once it works, bounced once."""
        agent = ScriptedAgent(550)
        queue = self.queue(agent)
        moves = FailingRemovals(queue.failed, times=1, method="give_up")
        envelope = self.commit("bob@example.com")
        self.assertEqual((queue.depth, listing(self.spool, "failed")), (1, []))  # kept (its bounce went out)
        self.clock.advance(2)
        self.assertEqual((moves.calls, queue.depth), (2, 0))
        self.assertEqual(listing(self.spool, "failed"), [envelope.id + ".json"])
        self.assertEqual(listing(self.spool, "queue"), [])
        self.assertEqual(queue.stats.bounces, 1)

    def test_operator_delete_forgets_it(self) -> None:
        """gomail queue delete of a message whose outcome waits removes it and its retry state."""
        queue = self.queue(ScriptedAgent())
        FailingRemovals(self.spool, times=1)
        envelope = self.commit("bob@example.com")
        self.successResultOf(Deferred.fromCoroutine(queue.delete(envelope.id)))
        self.assertEqual((queue.depth, queue.unrecorded), (0, 0))
