"""
Tests for C{gomail queue list|show|retry|flush|delete} when no server runs
(L{gomail.cli.queue}, L{gomail.cli.queueview}, L{gomail.cli.queuefiles}): what an
operator sees, the exit status, and the spool files after each change, made
under the spool's writer lock; and what happens while someone else holds it.

The commands run in-process through L{gomail.cli.main} with a L{Clock} and
captured output, on a spool built with the test helpers; one test runs the
real entry point as a process. The same commands against a running server
are in L{tests.test_control_service}.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import gomail
from gomail.cli import main, queuefiles
from gomail.control import SocketPath
from gomail.control.lock import try_lock
from gomail.delivery.failed import FailedStore
from gomail.spool.envelope import DELIVERED, FAILED, PENDING, Envelope
from tests.spooltesting import listing, make_spool, read, start_commit

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(gomail.__file__)))
START = 1714564800.0  # 2024-05-01T12:00:00Z
ARRIVAL = "2024-05-01T12:00:00Z"
CONTENT = b"From: alice@example.org\r\nSubject: hello\r\n\r\nthe body text\r\n"


class QueueCommandTestCase(SynchronousTestCase):
    """
    A spool with two queued messages and one in failed/, and a configuration
    file naming it:

      - C{self.first}: from sender@example.com to bob (delivered) and carol
        (pending after a 451);
      - C{self.second}: a bounce (null sender) to dave, never tried;
      - C{self.failed_id}: to erin, failed with a 550.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(START)
        self.spool = make_spool(os.path.join(self.directory, "spool"), self.clock)
        self.failed = FailedStore(self.spool, self.clock)
        self.config = self.write_config(self.spool.directory)

        self.first = self.commit(CONTENT, "bob@example.com", "carol@example.com")
        self.first.recipients[0].status, self.first.recipients[0].reply = DELIVERED, "250 2.0.0 Ok"
        self.first.recipients[1].reply = "451 4.2.0 Try later"
        self.first.attempts, self.first.next_attempt = 1, START + 300
        self.update(self.first)

        self.second = self.commit(b"Subject: bounce\r\n\r\nreport\r\n", "dave@example.com")
        self.second.sender = ""
        self.update(self.second)

        doomed = self.commit(b"Subject: doomed\r\n\r\nnever arrives\r\n", "erin@example.com")
        doomed.recipients[0].status, doomed.recipients[0].reply = FAILED, "550 5.1.1 No such user"
        self.successResultOf(Deferred.fromCoroutine(self.failed.give_up(doomed, "<erin@example.com>: 550")))
        self.failed_id = doomed.id
        self.clock.advance(3600)

    def write_config(self, spool_directory: str) -> str:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, "gomail.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"[spool]\ndirectory = {json.dumps(spool_directory)}\n")
        return path

    def commit(self, content: bytes, *recipients: str) -> Envelope:
        self.clock.advance(1)  # ids sort by time: keep the order of the test
        envelope, d = start_commit(self.spool, content, *recipients, received=START)
        self.successResultOf(d)
        return envelope

    def update(self, envelope: Envelope) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.spool.update(envelope)))

    def envelope(self, queue_id: str) -> Envelope:
        return Envelope.from_json(read(self.spool.path("queue", queue_id + ".json")))

    def gomail(self, *argv: str, config: bool = True) -> tuple[int, str, str]:
        """Run C{gomail queue ...} in-process; returns the exit status, stdout and stderr."""
        out, err = io.StringIO(), io.StringIO()
        arguments = ["queue", *argv] + (["--config", self.config] if config else [])
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(arguments, clock=self.clock)
        return status, out.getvalue(), err.getvalue()

    def assertOneErrorLine(self, status: int, out: str, err: str, text: str) -> None:
        """Exit status 1, nothing on stdout, one line on stderr containing C{text}."""
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("gomail: "), err)
        self.assertIn(text, err)
        self.assertNotIn("Traceback", err)


class ListTests(QueueCommandTestCase):
    """C{gomail queue list}."""

    def test_lines(self) -> None:
        """Each message gets a line (id, size, arrival in UTC, sender) and its recipients with status and reply."""
        status, out, err = self.gomail("list")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("-Queue ID-"))
        self.assertEqual(lines[1].split(), [self.first.id, str(len(CONTENT)), ARRIVAL, "sender@example.com"])
        self.assertEqual(lines[2].split(), ["bob@example.com", "delivered"])
        self.assertEqual(lines[3].strip(), "carol@example.com pending (451 4.2.0 Try later)")
        self.assertEqual(lines[4], "")
        self.assertEqual(lines[5].split()[0], self.second.id)
        self.assertEqual(lines[-1], "2 messages in the queue, 1 in failed/")

    def test_null_sender(self) -> None:
        """The null sender of a bounce is shown as <>, and a recipient never tried as plain pending."""
        _, out, _ = self.gomail("list")
        lines = out.splitlines()
        index = next(i for i, line in enumerate(lines) if line.startswith(self.second.id))
        self.assertEqual(lines[index].split()[-1], "<>")
        self.assertEqual(lines[index + 1].split(), ["dave@example.com", "pending"])

    def test_json(self) -> None:
        """--json prints an array with every message's envelope fields and UTC times."""
        status, out, err = self.gomail("list", "--json")
        self.assertEqual((status, err), (0, ""))
        entries = json.loads(out)
        self.assertEqual([e["id"] for e in entries], [self.first.id, self.second.id])
        first = entries[0]
        self.assertEqual((first["location"], first["size"], first["arrival"], first["sender"], first["attempts"]),
                         ("queue", len(CONTENT), ARRIVAL, "sender@example.com", 1))
        self.assertEqual(first["next_attempt"], "2024-05-01T12:05:00Z")
        self.assertEqual(first["recipients"], [
            {"address": "bob@example.com", "status": DELIVERED, "reply": "250 2.0.0 Ok"},
            {"address": "carol@example.com", "status": PENDING, "reply": "451 4.2.0 Try later"},
        ])
        self.assertEqual(entries[1]["sender"], "")

    def test_failed(self) -> None:
        """--failed lists failed/ instead, with the failed recipient's reply."""
        status, out, err = self.gomail("list", "--failed")
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[1].split()[0], self.failed_id)
        self.assertEqual(lines[2].strip(), "erin@example.com failed (550 5.1.1 No such user)")
        self.assertNotIn(self.first.id, out)
        self.assertEqual(lines[-1], "2 messages in the queue, 1 in failed/")

    def test_failed_json(self) -> None:
        """--failed --json includes the reason and the time the message was given up on."""
        entries = json.loads(self.gomail("list", "--failed", "--json")[1])
        self.assertEqual([(e["id"], e["location"], e["reason"], e["failed_at"]) for e in entries],
                         [(self.failed_id, "failed", "<erin@example.com>: 550", "2024-05-01T12:00:03Z")])
        self.assertNotIn("content", entries[0])

    def test_empty(self) -> None:
        """An empty spool prints only the summary."""
        self.config = self.write_config(make_spool(os.path.abspath(self.mktemp())).directory)
        self.assertEqual(self.gomail("list"), (0, "0 messages in the queue, 0 in failed/\n", ""))
        self.assertEqual(self.gomail("list", "--json"), (0, "[]\n", ""))

    def test_unreadable_envelope(self) -> None:
        """A queue entry whose envelope cannot be read is listed as such; the others still are."""
        with open(self.spool.path("queue", "0123456789abc00000000.json"), "wb") as f:
            f.write(b"{not json")
        status, out, err = self.gomail("list")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("0123456789abc00000000 (unreadable: ", out)
        self.assertIn(self.first.id, out)
        self.assertEqual(out.splitlines()[-1], "3 messages in the queue, 1 in failed/")

    def test_control_characters(self) -> None:
        """A reply with terminal control characters is printed escaped."""
        self.first.recipients[1].reply = "451 \x1b[31mred"
        self.update(self.first)
        out = self.gomail("list")[1]
        self.assertNotIn("\x1b", out)
        self.assertIn("(451 \\x1b[31mred)", out)

    def test_no_spool(self) -> None:
        """A configuration naming a directory without a spool: status 1, one line on stderr."""
        self.config = self.write_config(os.path.join(self.directory, "absent"))
        status, out, err = self.gomail("list")
        self.assertOneErrorLine(status, out, err, "no spool in " + os.path.join(self.directory, "absent"))

    def test_unreadable_spool(self) -> None:
        """A queue entry that cannot be opened: status 1 and one line naming the problem, no traceback."""
        path = self.spool.path("queue", self.second.id + ".json")
        os.unlink(path)
        os.mkdir(path)
        status, out, err = self.gomail("list")
        self.assertOneErrorLine(status, out, err, f"cannot use the spool in {self.spool.directory}: Is a directory")

    def test_bad_config(self) -> None:
        """A configuration error: status 1 and the usual one-line message."""
        with open(self.config, "a", encoding="utf-8") as f:
            f.write("bogus = 1\n")
        status, out, err = self.gomail("list")
        self.assertOneErrorLine(status, out, err, "configuration error: ")

    def test_default_config(self) -> None:
        """Without --config, conf/gomail.toml in the current directory names the spool."""
        os.makedirs(os.path.join(self.directory, "conf"))
        os.rename(self.config, os.path.join(self.directory, "conf", "gomail.toml"))
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(self.directory)
        status, out, err = self.gomail("list", config=False)
        self.assertEqual((status, err), (0, ""))
        self.assertIn(self.first.id, out)


class ShowTests(QueueCommandTestCase):
    """C{gomail queue show ID}."""

    def sections(self, out: str) -> tuple[str, dict, str, str]:
        """Split C{show}'s output into (envelope marker, envelope, message marker, message text)."""
        lines = out.splitlines(keepends=True)
        end = lines.index("}\n")
        return lines[0].strip(), json.loads("".join(lines[1:end + 1])), lines[end + 1].strip(), "".join(lines[end + 2:])

    def test_queued(self) -> None:
        """A queued message: its envelope as JSON, then its headers (not the body), with newline endings."""
        status, out, err = self.gomail("show", self.first.id)
        self.assertEqual((status, err), (0, ""))
        marker, envelope, second_marker, text = self.sections(out)
        self.assertEqual(marker, f"*** ENVELOPE queue/{self.first.id} ***")
        self.assertEqual(envelope, json.loads(self.first.to_json()))
        self.assertEqual(second_marker, "*** HEADERS ***")
        self.assertEqual(text, "From: alice@example.org\nSubject: hello\n")

    def test_content(self) -> None:
        """--content prints the whole message."""
        status, out, _ = self.gomail("show", "--content", self.first.id)
        _, _, marker, text = self.sections(out)
        self.assertEqual((status, marker), (0, "*** MESSAGE ***"))
        self.assertEqual(text, CONTENT.decode().replace("\r\n", "\n"))

    def test_failed(self) -> None:
        """A message in failed/: the record without its content, then its headers."""
        status, out, err = self.gomail("show", self.failed_id)
        self.assertEqual((status, err), (0, ""))
        marker, record, _, text = self.sections(out)
        self.assertEqual(marker, f"*** ENVELOPE failed/{self.failed_id} ***")
        self.assertEqual(record["reason"], "<erin@example.com>: 550")
        self.assertNotIn("content", record)
        self.assertEqual(text, "Subject: doomed\n")

    def test_unknown(self) -> None:
        """An id in neither queue/ nor failed/: status 1, one line on stderr."""
        status, out, err = self.gomail("show", "0123456789abcdef01234")
        self.assertOneErrorLine(status, out, err, "no message 0123456789abcdef01234 in queue/ or failed/")

    def test_path_is_not_an_id(self) -> None:
        """An "id" that would be a path elsewhere is refused like an unknown id, even when the file exists."""
        status, out, err = self.gomail("show", f"../failed/{self.failed_id}")
        self.assertOneErrorLine(status, out, err, "no message ")


class RetryTests(QueueCommandTestCase):
    """C{gomail queue retry}."""

    def test_one(self) -> None:
        """A failed message goes back to queue/ with fresh counters, its failed recipient pending again."""
        status, out, err = self.gomail("retry", self.failed_id)
        self.assertEqual((status, out, err), (0, "requeued 1 message\n", ""))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertIn(self.failed_id + ".eml", listing(self.spool, "queue"))
        envelope = self.envelope(self.failed_id)
        self.assertEqual((envelope.attempts, envelope.next_attempt, envelope.received),
                         (0, self.clock.seconds(), self.clock.seconds()))
        self.assertEqual([(r.status, r.reply) for r in envelope.recipients], [(PENDING, None)])
        self.assertEqual(read(self.spool.message_path(self.failed_id)), b"Subject: doomed\r\n\r\nnever arrives\r\n")
        self.assertEqual(listing(self.spool, "tmp"), [])

    def test_all(self) -> None:
        """--all requeues every failed message."""
        self.successResultOf(Deferred.fromCoroutine(self.failed.give_up(self.second, "test")))
        status, out, _ = self.gomail("retry", "--all")
        self.assertEqual((status, out), (0, "requeued 2 messages\n"))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(len(listing(self.spool, "queue")), 6)

    def test_unknown(self) -> None:
        """An id not in failed/ (here, a queued one): status 1 and nothing is requeued."""
        status, out, err = self.gomail("retry", self.failed_id, self.first.id)
        self.assertOneErrorLine(status, out, err, f"not in failed/: {self.first.id}")
        self.assertEqual(listing(self.spool, "failed"), [self.failed_id + ".json"])

    def test_nothing_named(self) -> None:
        """Neither ids nor --all is a usage error (2) and changes nothing."""
        status, _out, err = self.gomail("retry")
        self.assertEqual(status, 2)
        self.assertIn("one of the arguments ID --all is required", err)
        self.assertEqual(listing(self.spool, "failed"), [self.failed_id + ".json"])

    def test_unreadable_record(self) -> None:
        """A record that cannot be requeued stays in failed/; status 1 and one line on stderr name it."""
        with open(self.spool.path("failed", "0123456789abc00000000.json"), "wb") as f:
            f.write(b"{broken")
        status, out, err = self.gomail("retry", "--all")
        self.assertEqual((status, out), (1, "requeued 1 message\n"))
        self.assertEqual(err.count("\n"), 1, err)
        self.assertIn("gomail: could not requeue failed message 0123456789abc00000000: ", err)
        self.assertEqual(listing(self.spool, "failed"), ["0123456789abc00000000.json"])
        self.assertEqual(listing(self.spool, "tmp"), [])


class FlushTests(QueueCommandTestCase):
    """C{gomail queue flush}."""

    def test_flush(self) -> None:
        """Every queued message is due now; nothing else in its envelope changes and no temporary file is left."""
        self.second.next_attempt = START + 86400
        self.update(self.second)
        status, out, err = self.gomail("flush")
        self.assertEqual((status, out, err), (0, "flushed 2 messages\n", ""))
        now = self.clock.seconds()
        for before in (self.first, self.second):
            after = self.envelope(before.id)
            self.assertEqual(after.next_attempt, now)
            before.next_attempt = now
            self.assertEqual(after, before)
        self.assertEqual(listing(self.spool, "tmp"), [])
        self.assertEqual(listing(self.spool, "failed"), [self.failed_id + ".json"])

    def test_empty(self) -> None:
        """An empty queue flushes nothing."""
        self.config = self.write_config(make_spool(os.path.abspath(self.mktemp())).directory)
        self.assertEqual(self.gomail("flush"), (0, "flushed 0 messages\n", ""))

    def test_content_gone(self) -> None:
        """An envelope without its content is reported (status 1) and not rewritten; the others are flushed."""
        os.unlink(self.spool.message_path(self.second.id))
        status, out, err = self.gomail("flush")
        self.assertEqual((status, out), (1, "flushed 1 message\n"))
        self.assertIn(f"gomail: {self.second.id}: its content is missing", err)
        self.assertEqual(self.envelope(self.second.id).next_attempt, 0.0)


class DeleteTests(QueueCommandTestCase):
    """C{gomail queue delete}."""

    def test_queued(self) -> None:
        """A queued message's two files are removed; the others stay."""
        status, out, err = self.gomail("delete", self.first.id)
        self.assertEqual((status, out, err), (0, "deleted 1 message\n", ""))
        self.assertEqual(listing(self.spool, "queue"), [self.second.id + ".eml", self.second.id + ".json"])
        self.assertEqual(listing(self.spool, "failed"), [self.failed_id + ".json"])

    def test_queued_and_failed(self) -> None:
        """Ids from queue/ and failed/ can be named together."""
        status, out, _ = self.gomail("delete", self.second.id, self.failed_id)
        self.assertEqual((status, out), (0, "deleted 2 messages\n"))
        self.assertEqual(listing(self.spool, "queue"), [self.first.id + ".eml", self.first.id + ".json"])
        self.assertEqual(listing(self.spool, "failed"), [])

    def test_all_failed(self) -> None:
        """--all-failed empties failed/ and leaves queue/ alone."""
        status, out, _ = self.gomail("delete", "--all-failed")
        self.assertEqual((status, out), (0, "deleted 1 message\n"))
        self.assertEqual(listing(self.spool, "failed"), [])
        self.assertEqual(len(listing(self.spool, "queue")), 4)

    def test_nothing_named(self) -> None:
        """Without ids, --all-failed or --all nothing is deleted: a usage error (2)."""
        status, _, err = self.gomail("delete")
        self.assertEqual(status, 2)
        self.assertIn("one of the arguments ID --all-failed --all is required", err)
        self.assertEqual(len(listing(self.spool, "queue")), 4)
        self.assertEqual(len(listing(self.spool, "failed")), 1)

    def test_unknown(self) -> None:
        """One unknown id among known ones: status 1, one line naming it, and nothing is deleted."""
        status, out, err = self.gomail("delete", self.first.id, "0123456789abcdef01234")
        self.assertOneErrorLine(status, out, err, "not in queue/ or failed/: 0123456789abcdef01234")
        self.assertEqual(len(listing(self.spool, "queue")), 4)


    def test_all(self) -> None:
        """--all empties queue/ and failed/."""
        status, out, _ = self.gomail("delete", "--all")
        self.assertEqual((status, out), (0, "deleted 3 messages\n"))
        self.assertEqual((listing(self.spool, "queue"), listing(self.spool, "failed")), ([], []))


class SpoolLockTests(QueueCommandTestCase):
    """Without a server, changes are made holding <spool>/writer.lock; never while someone else holds it."""

    def hold_lock(self) -> None:
        """Hold the writer lock as a server's writer does (another open file description: flock conflicts)."""
        fd = try_lock(self.spool.directory)
        self.assertIsNotNone(fd)
        self.addCleanup(os.close, fd)

    def test_changes_hold_the_lock(self) -> None:
        """While a change runs the command holds the writer lock; afterwards it is free again."""
        seen: list[int | None] = []
        original = queuefiles.flush

        def flush(spool):
            seen.append(try_lock(self.spool.directory))
            return original(spool)

        self.patch(queuefiles, "flush", flush)
        status, out, err = self.gomail("flush", "-v")
        self.assertEqual((status, out), (0, "flushed 2 messages\n"))
        self.assertEqual(seen, [None])
        self.assertIn(f"gomail: no server runs on this spool: changing its files, holding "
                      f"{self.spool.directory}/writer.lock", err)
        fd = try_lock(self.spool.directory)
        self.assertIsNotNone(fd)
        os.close(fd)

    def test_lock_held_and_no_server(self) -> None:
        """
        A held lock and nothing answering on control.sock (a server starting
        or stopping): every changing action says so in one line, exits 1 and
        changes nothing.
        """
        self.hold_lock()
        before = {where: listing(self.spool, where) for where in ("queue", "failed")}
        envelope_before = read(self.spool.path("queue", self.first.id + ".json"))
        for argv in (("flush",), ("retry", "--all"), ("delete", self.first.id), ("delete", "--all")):
            status, out, err = self.gomail(*argv)
            self.assertOneErrorLine(status, out, err, f"a server holds {self.spool.directory}/writer.lock but "
                                                      f"does not answer on {self.spool.directory}/control.sock")
            self.assertIn("nothing was changed", err)
        self.assertEqual({where: listing(self.spool, where) for where in ("queue", "failed")}, before)
        self.assertEqual(read(self.spool.path("queue", self.first.id + ".json")), envelope_before)

    def test_reading_needs_no_lock(self) -> None:
        """list and show work while the lock is held (a running server)."""
        self.hold_lock()
        self.assertEqual(self.gomail("list")[0], 0)
        self.assertEqual(self.gomail("show", self.first.id)[0], 0)

    def test_stale_socket_file(self) -> None:
        """A control.sock nothing listens on (a server that died) is no server: the change is made on the files."""
        import socket

        with SocketPath(self.spool.directory) as path:  # the test's spool path is too long for AF_UNIX
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path.address)
            stale.close()
        self.assertTrue(os.path.exists(os.path.join(self.spool.directory, "control.sock")))
        status, out, _ = self.gomail("flush")
        self.assertEqual((status, out), (0, "flushed 2 messages\n"))

    def test_status_without_server(self) -> None:
        """queue status with no server: one line saying nothing answers, exit status 3."""
        status, out, err = self.gomail("status")
        self.assertEqual((status, out, err), (3, f"no server answers on {self.spool.directory}/control.sock\n", ""))


class UsageTests(QueueCommandTestCase):
    """The C{queue} command's help and usage errors."""

    def test_no_action(self) -> None:
        """C{gomail queue} alone prints its help and exits 2."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["queue"]), 2)
        self.assertIn("list", out.getvalue())

    def test_running_server_documented(self) -> None:
        """The help of retry, flush and delete says a running server makes the change, through its control socket."""
        for action in ("retry", "flush", "delete"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(main(["queue", action, "--help"]), 0)
            self.assertIn("ask the running server (through <spool>/control.sock)", " ".join(out.getvalue().split()))

    def test_unknown_option(self) -> None:
        """An unknown option is a usage error (2)."""
        status, _, err = self.gomail("list", "--bogus")
        self.assertEqual(status, 2)
        self.assertIn("unrecognized arguments: --bogus", err)


class EntryPointTests(QueueCommandTestCase):
    """The real C{python -m gomail.cli} entry point."""

    def test_list(self) -> None:
        """C{python -m gomail.cli queue list --config FILE} lists the spool and exits 0."""
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8"}
        result = subprocess.run([sys.executable, "-m", "gomail.cli", "queue", "list", "--config", self.config],
                                cwd=self.directory, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn(self.first.id, result.stdout)
        self.assertEqual(result.stdout.splitlines()[-1], "2 messages in the queue, 1 in failed/")
