"""
Plugin SMTP hooks through the real SMTP protocol (a real SMTPServer and
Spool over in-memory transports, on a task.Clock): accept, reject and
defer at each stage, header fields added and removed in the spooled
message, and a raising or hanging hook answered with 451 and nothing queued.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from gomail.extension.runner import HookRunner
from gomail.extension.smtphooks import SMTPHooks
from gomail.interfaces import IHeaderFilter
from gomail.plugin import SMTPHook, accept, defer, reject
from gomail.smtp.headeredit import HeaderStripper
from gomail.spool.incoming import IncomingMessage
from tests.smtphelpers import HarnessMixin, SMTPHarness, queued_id, replies

MESSAGE = b"Subject: hi\r\nX-Mailer: Outlook\r\n  folded mailer\r\nTo: bob@example.com\r\n\r\nbody\r\n.\r\n"


class Recorder(SMTPHook):
    """Answers each stage with what the test set in C{answers}; records calls."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, Any]] = []

    def _answer(self, stage: str, argument: Any) -> Any:
        self.calls.append((stage, argument))
        answer = self.answers.get(stage)
        if isinstance(answer, Exception):
            raise answer
        return answer() if callable(answer) else answer

    def connect(self, session: Any) -> Any:
        return self._answer("connect", session.client_address)

    def helo(self, session: Any, name: str) -> Any:
        return self._answer("helo", name)

    def authenticated(self, session: Any, user: str) -> Any:
        return self._answer("authenticated", user)

    def mail_from(self, session: Any, sender: str) -> Any:
        return self._answer("mail_from", sender)

    def rcpt_to(self, session: Any, recipient: str) -> Any:
        return self._answer("rcpt_to", (recipient, session.recipients))

    def end_of_data(self, session: Any, message: Any) -> Any:
        with message.open() as f:
            self.calls.append(("content", f.read()))
        return self._answer("end_of_data", (message.sender, message.recipients))


@implementer(IHeaderFilter)
class DropMailer:
    """Removes X-Mailer."""

    def drops(self, name: str) -> bool:
        return name == "x-mailer"


class HookTestsMixin(HarnessMixin):
    def setUp(self) -> None:
        self.hook = Recorder()
        self.h = self.with_hooks(self.harness(), [("recorder", self.hook)])

    @staticmethod
    def with_hooks(h: SMTPHarness, hooks: list, filters: list | None = None, timeout: float = 5.0) -> SMTPHarness:
        h.runner = HookRunner(h.clock, timeout)  # type: ignore[attr-defined]
        h.server.hooks = SMTPHooks(h.runner, hooks, filters or [])  # type: ignore[attr-defined]
        return h


class StageTests(HookTestsMixin, SynchronousTestCase):
    """Accept, reject and defer at each stage."""

    def test_accepting_hooks_see_every_stage(self) -> None:
        """Hooks that accept see connect, HELO, MAIL, RCPT and end of data, and the message is queued."""
        client = self.h.connect()
        client.start_transaction()
        queue_id = queued_id(client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"))
        stages = [stage for stage, _ in self.hook.calls]
        self.assertEqual(stages, ["connect", "helo", "mail_from", "rcpt_to", "content", "end_of_data"])
        self.assertIn(("rcpt_to", ("bob@example.com", ())), self.hook.calls)
        self.assertIn(("end_of_data", ("alice@example.org", ("bob@example.com",))), self.hook.calls)
        self.assertIn(b"body", self.h.content(queue_id))

    def test_connect_reject_closes(self) -> None:
        """A refusal at connect is the greeting, and the connection is closed."""
        self.hook.answers["connect"] = reject("Go away", 554, "5.7.1")
        client = self.h.connect(greet=False)
        self.assertEqual(client.take(), b"554 5.7.1 Go away\r\n")
        self.assertTrue(client.closed)

    def test_helo_defer(self) -> None:
        """A deferred HELO answers 4xx; the session has no HELO name, so MAIL is refused."""
        self.hook.answers["helo"] = defer("Not now")
        client = self.h.connect()
        self.assertEqual(client.send(b"EHLO client.test\r\n"), b"451 4.7.1 Not now\r\n")
        self.assertEqual(replies(client.send(b"MAIL FROM:<a@example.org>\r\n"))[0][:3], b"503")

    def test_mail_reject_and_defer(self) -> None:
        """MAIL FROM refused 5xx or 4xx with the hook's text; the refusal is counted as a plugin rejection."""
        client = self.h.connect()
        client.send(b"EHLO client.test\r\n")
        self.hook.answers["mail_from"] = reject("Freemail not accepted")
        self.assertEqual(client.send(b"MAIL FROM:<a@free.example>\r\n"), b"550 5.7.1 Freemail not accepted\r\n")
        self.hook.answers["mail_from"] = defer("Greylisted, try again", 450, "4.7.1")
        self.assertEqual(client.send(b"MAIL FROM:<a@free.example>\r\n"), b"450 4.7.1 Greylisted, try again\r\n")
        self.assertEqual(self.h.server.rejections["plugin"], 2)

    def test_rcpt_reject_keeps_others(self) -> None:
        """A refused RCPT leaves the recipients accepted before it; DATA goes to them only."""
        client = self.h.connect()
        client.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n")
        self.hook.answers["rcpt_to"] = lambda: (reject("No such list", 550, "5.1.1")
                                                if self.hook.calls[-1][1][0] == "list@example.com" else None)
        got = replies(client.send(b"RCPT TO:<bob@example.com>\r\nRCPT TO:<list@example.com>\r\nDATA\r\n"))
        self.assertEqual(got, [b"250 2.1.5 Recipient ok", b"550 5.1.1 No such list",
                               b"354 End data with <CR><LF>.<CR><LF>"])
        queue_id = queued_id(client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n"))
        self.assertEqual([r.address for r in self.h.envelope(queue_id).recipients], ["bob@example.com"])

    def test_end_of_data_reject_queues_nothing(self) -> None:
        """A refusal at end of data answers the message with it and leaves nothing in the spool."""
        self.hook.answers["end_of_data"] = reject("Virus found", 554, "5.7.0")
        client = self.h.connect()
        client.start_transaction()
        self.assertEqual(client.send(MESSAGE), b"554 5.7.0 Virus found\r\n")
        self.assertTrue(self.h.spool_is_empty())
        self.assertIn(b"X-Mailer: Outlook", dict(self.hook.calls)["content"])

    def test_asynchronous_answer(self) -> None:
        """A hook may answer with a Deferred: the reply (and pipelined commands behind it) wait for it."""
        pending: Deferred = Deferred()
        self.hook.answers["mail_from"] = lambda: pending
        client = self.h.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\nNOOP\r\n"), b"")
        pending.callback(defer("Later"))
        self.assertEqual(replies(client.take()), [b"451 4.7.1 Later", b"250 2.0.0 Ok"])

    def test_coroutine_answer(self) -> None:
        """A hook may be a coroutine function."""
        async def answer() -> Any:
            return reject("No")

        class Async(SMTPHook):
            async def mail_from(self, session: Any, sender: str) -> Any:
                return await answer()

        h = self.with_hooks(self.harness(), [("async", Async())])
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"550 5.7.1 No\r\n")

    def test_first_refusal_wins(self) -> None:
        """Hooks run in order; after a refusal the later hooks are not asked."""
        second = Recorder()
        h = self.with_hooks(self.harness(), [("first", self.hook), ("second", second)])
        self.hook.answers["mail_from"] = reject("First says no")
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"), b"550 5.7.1 First says no\r\n")
        self.assertNotIn("mail_from", [stage for stage, _ in second.calls])


class FailureTests(HookTestsMixin, SynchronousTestCase):
    """A hook's failure never crashes the session nor loses or half-writes a message."""

    def test_raising_hook_gives_451_and_queues_nothing(self) -> None:
        """A hook raising at end of data: 451 4.3.0, logged with the plugin's name, nothing queued."""
        self.hook.answers["end_of_data"] = RuntimeError("plugin bug")
        client = self.h.connect()
        client.start_transaction()
        self.assertEqual(client.send(MESSAGE), b"451 4.3.0 Local error in processing, try again later\r\n")
        self.assertTrue(self.h.spool_is_empty())
        self.assertEqual(self.h.runner.stats["recorder"].errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # The session goes on.
        self.assertEqual(client.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_hanging_hook_times_out_to_451(self) -> None:
        """A hook that never answers is cut off after plugins.timeout: 451 4.3.0, its Deferred cancelled."""
        h = self.with_hooks(self.harness(), [("slow", self.hook)], timeout=3.0)
        never: Deferred = Deferred()
        self.hook.answers["end_of_data"] = lambda: never
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(MESSAGE), b"")
        h.clock.advance(2.9)
        self.assertEqual(client.take(), b"")
        h.clock.advance(0.2)
        self.assertEqual(client.take(), b"451 4.3.0 Local error in processing, try again later\r\n")
        self.assertTrue(never.called)  # cancelled
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(h.runner.stats["slow"].timeouts, 1)

    def test_wrong_answer_type_is_a_failure(self) -> None:
        """A hook answering something that is no Verdict (a string) gets 451, not a crash or an accept."""
        self.hook.answers["mail_from"] = "no"
        client = self.h.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@example.org>\r\n"),
                         b"451 4.3.0 Local error in processing, try again later\r\n")

    def test_raising_connect_hook(self) -> None:
        """A connect hook raising: the client hears 451 and is disconnected, the server goes on."""
        self.hook.answers["connect"] = ValueError("bug")
        client = self.h.connect(greet=False)
        self.assertEqual(client.take(), b"451 4.3.0 Local error in processing, try again later\r\n")
        self.flushLoggedErrors(ValueError)


class HeaderTests(HookTestsMixin, SynchronousTestCase):
    """Header fields added at end of data and removed as the message streams."""

    def test_added_header_is_in_the_spooled_message(self) -> None:
        """Header fields a hook adds at end of data are at the top of the queued file; size and digest match."""
        self.hook.answers["end_of_data"] = accept({"X-Scanned": "clean", "X-Plugin": "yes"})
        client = self.h.connect()
        client.start_transaction()
        queue_id = queued_id(client.send(MESSAGE))
        content = self.h.content(queue_id)
        self.assertTrue(content.startswith(b"X-Scanned: clean\r\nX-Plugin: yes\r\nReceived: "), content[:80])
        envelope = self.h.envelope(queue_id)
        self.assertEqual(envelope.size, len(content))
        from gomail.spool.integrity import digest_problem, digest_text, new_digest
        hasher = new_digest(envelope.digest)
        hasher.update(content)
        self.assertIsNone(digest_problem(digest_text(hasher), envelope.digest, envelope.size))

    def test_added_header_on_a_message_already_on_disk(self) -> None:
        """A message larger than the in-memory limit (already in tmp/) gets the header fields too, intact."""
        self.hook.answers["end_of_data"] = accept([("X-Big", "1")])
        client = self.h.connect()
        client.start_transaction()
        body = (b"x" * 998 + b"\r\n") * (IncomingMessage.FLUSH_AT // 1000 + 50)
        queue_id = queued_id(client.send(b"Subject: big\r\n\r\n" + body + b".\r\n"))
        content = self.h.content(queue_id)
        self.assertTrue(content.startswith(b"X-Big: 1\r\nReceived: "))
        self.assertTrue(content.endswith(body))
        self.assertEqual(self.h.envelope(queue_id).size, len(content))
        self.assertEqual(self.h.files("tmp"), [])

    def test_header_injection_is_refused(self) -> None:
        """A hook adding a value with CR LF fails (451), instead of injecting a header or a body."""
        def inject() -> Any:
            return accept({"X-A": "1\r\nBcc: evil@example.net"})

        self.hook.answers["end_of_data"] = inject
        client = self.h.connect()
        client.start_transaction()
        self.assertEqual(client.send(MESSAGE)[:3], b"451")
        self.assertTrue(self.h.spool_is_empty())
        self.flushLoggedErrors(ValueError)

    def test_filter_removes_a_folded_field(self) -> None:
        """A header filter removes X-Mailer with its folded line; the body and other fields stay."""
        h = self.with_hooks(self.harness(), [], [("drop", DropMailer())])
        client = h.connect()
        client.start_transaction()
        content = h.content(queued_id(client.send(MESSAGE)))
        self.assertNotIn(b"X-Mailer", content)
        self.assertNotIn(b"folded mailer", content)
        self.assertTrue(content.endswith(b"Subject: hi\r\nTo: bob@example.com\r\n\r\nbody\r\n"), content)

    def test_filter_leaves_the_body_alone(self) -> None:
        """A line in the body that looks like a removed field is kept."""
        h = self.with_hooks(self.harness(), [], [("drop", DropMailer())])
        client = h.connect()
        client.start_transaction()
        content = h.content(queued_id(client.send(b"Subject: x\r\n\r\nX-Mailer: in the body\r\n.\r\n")))
        self.assertTrue(content.endswith(b"\r\n\r\nX-Mailer: in the body\r\n"))


class HeaderStripperTests(SynchronousTestCase):
    """The stripper over content split anywhere."""

    def test_split_at_every_byte(self) -> None:
        """The same result whatever the block boundaries."""
        message = b"A: 1\r\nX-Mailer: a\r\n b\r\nB: 2\r\n\r\nX-Mailer: body\r\n"
        expected = b"A: 1\r\nB: 2\r\n\r\nX-Mailer: body\r\n"
        for size in range(1, len(message) + 1):
            stripper = HeaderStripper(lambda name: name == "x-mailer")
            out = b"".join(stripper.feed(message[i:i + size]) for i in range(0, len(message), size))
            self.assertEqual(out + stripper.finish(), expected, size)

    def test_no_header_section(self) -> None:
        """A message without header fields passes unchanged."""
        stripper = HeaderStripper(lambda name: True)
        self.assertEqual(stripper.feed(b"just text\r\nX-Mailer: x\r\n") + stripper.finish(),
                         b"just text\r\nX-Mailer: x\r\n")


class ReviewFindingTests(HookTestsMixin, SynchronousTestCase):
    """What a review of the hooks found, each fixed."""

    def test_verdict_made_by_hand_is_checked(self) -> None:
        """A Verdict built directly (not through accept/reject) cannot carry a line break: the hook fails (451)."""
        from gomail.plugin import Verdict

        self.assertRaises(ValueError, Verdict, headers=(("X-A", "1\r\nBcc: evil@example.net"),))
        self.assertRaises(ValueError, Verdict, 550, "5.7.1", "no\r\n250 2.1.0 Sender ok")
        self.assertRaises(ValueError, Verdict, 550, "4.7.1", "class mismatch")

        def inject() -> Any:
            return Verdict(headers=(("X-A", "1\r\nBcc: evil@example.net"),))

        self.hook.answers["end_of_data"] = inject
        client = self.h.connect()
        client.start_transaction()
        self.assertEqual(client.send(MESSAGE)[:3], b"451")
        self.assertTrue(self.h.spool_is_empty())
        self.flushLoggedErrors(ValueError)

    def test_client_gone_while_end_of_data_hook_decides(self) -> None:
        """A client that leaves while the end-of-data hook is pending never saw a 250: nothing is queued."""
        pending: Deferred = Deferred()
        self.hook.answers["end_of_data"] = lambda: pending
        client = self.h.connect()
        client.start_transaction()
        client.send(MESSAGE)
        client.lose()
        pending.callback(None)
        self.assertTrue(self.h.spool_is_empty())

    def test_failed_prepend_leaks_no_descriptor(self) -> None:
        """Header fields that cannot be written (disk full) on a message in tmp/: 451, tmp/ emptied, no fd left."""
        import errno
        import os

        from gomail.spool.fs import FileSystem

        class FullForPrepend(FileSystem):
            def create(self, path: str) -> int:
                if path.endswith(".prepend"):
                    raise OSError(errno.ENOSPC, "No space left on device")
                return super().create(path)

        h = self.with_hooks(self.harness(fs=FullForPrepend()), [("recorder", self.hook)])
        self.hook.answers["end_of_data"] = accept({"X-Big": "1"})
        body = (b"x" * 998 + b"\r\n") * (IncomingMessage.FLUSH_AT // 1000 + 50)
        before = len(os.listdir("/proc/self/fd"))
        client = h.connect()
        client.start_transaction()
        self.assertEqual(client.send(b"Subject: big\r\n\r\n" + body + b".\r\n")[:3], b"451")
        client.lose()
        self.assertTrue(h.spool_is_empty())
        self.assertEqual(len(os.listdir("/proc/self/fd")), before)
        self.flushLoggedErrors(OSError)

    def test_xclient_named_client_meets_the_connect_hook(self) -> None:
        """A client named by XCLIENT is judged by the connect (and HELO) hooks as a direct one would be."""
        h = self.with_hooks(self.harness(xclientHosts=("127.0.0.0/8",)), [("recorder", self.hook)])
        self.hook.answers["connect"] = lambda: (reject("Network refused", 554, "5.7.1")
                                                if self.hook.calls[-1][1] == "203.0.113.7" else None)
        client = h.connect()
        client.send(b"EHLO proxy.test\r\n")
        reply = client.send(b"XCLIENT ADDR=203.0.113.7 HELO=client.test\r\n")
        self.assertEqual(reply, b"554 5.7.1 Network refused\r\n")
        self.assertTrue(client.closed)
