"""JSON logs (gomail.logjson): one object per line, with stable fields and no Twisted internals."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gomail.logjson import json_line, json_lines_observer


class Source:
    log = Logger(namespace="gomail.smtp.server.SMTPServer")


class JSONLinesTests(SynchronousTestCase):
    """What `jq`, Loki and `json.loads` read."""

    def events(self):
        out = io.StringIO()
        observer = json_lines_observer(out)
        log = Logger(namespace="gomail.smtp.server.SMTPServer", observer=observer)
        return out, log

    def test_one_object_per_line(self):
        """Every line parses with json.loads on its own: no RFC 7464 record separator."""
        out, log = self.events()
        log.info("queued {queue_id} for {count} recipients", queue_id="abc", count=2)
        log.warn("second")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertNotIn("\x1e", out.getvalue())
        for line in lines:
            json.loads(line)

    def test_stable_fields(self):
        """time (ISO 8601, UTC), level, system, the formatted message, and the event's own fields."""
        record = json.loads(json_line({
            "log_format": "queued {queue_id} for {count} recipients", "log_level": LogLevel.info,
            "log_namespace": "gomail.smtp.server.SMTPServer", "log_time": 1796285782.5,
            "log_logger": Logger(), "log_source": object(), "queue_id": "abc", "count": 2,
        }))
        self.assertEqual(record, {
            "time": "2026-12-03T08:16:22.500Z", "level": "info", "system": "gomail.smtp.server.SMTPServer",
            "message": "queued abc for 2 recipients", "queue_id": "abc", "count": 2,
        })

    def test_failure_has_a_traceback(self):
        """An event with a failure carries its traceback as a field, still on one line."""
        try:
            1 / 0  # noqa: B018 - raises, for a real traceback
        except ZeroDivisionError:
            failure = Failure()
        out, log = self.events()
        log.failure("could not queue a message from {client}", failure, client="192.0.2.1")
        [line] = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertEqual(record["client"], "192.0.2.1")

    def test_values_json_cannot_hold(self):
        """A field JSON cannot hold is written as its str()."""
        record = json.loads(json_line({"log_format": "x", "log_time": 0, "peer": ("127.0.0.1", 25)}))
        self.assertEqual(record["peer"], "('127.0.0.1', 25)")

    def test_legacy_event(self):
        """A legacy twisted.python.log event keeps its text and system."""
        event = {"message": ("Starting factory", "<x>"), "system": "-", "log_system": "-", "isError": 0,
                 "log_time": 0, "log_format": None}
        self.assertEqual(formatEvent(event), "")
        record = json.loads(json_line(event))
        self.assertEqual(record["message"], "Starting factory <x>")
        self.assertEqual(record["system"], "-")
