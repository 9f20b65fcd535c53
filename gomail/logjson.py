# -*- test-case-name: tests.test_logjson -*-
"""
JSON logs: one JSON object per line (``logging.format = "json"``).

twisted.logger's C{jsonFileLogObserver} writes RFC 7464 JSON text sequences:
every record starts with an ASCII record separator (``\\x1e``), so C{json.loads}
of a line fails, and its records carry Twisted's internals (C{log_logger},
C{log_source} reprs, the format string). What C{jq}, Loki, Elasticsearch and
C{json.loads} want is JSON Lines, with a few stable fields:

- C{time}: ISO 8601 in UTC with milliseconds (C{2026-12-03T08:16:22.123Z});
- C{level}: C{debug}, C{info}, C{warn}, C{error} or C{critical};
- C{system}: the event's namespace (C{gomail.smtp.server.SMTPServer}) or,
  for a legacy twisted.python.log event, its system;
- C{message}: the formatted text, as the text log shows it;
- C{traceback}: for an event carrying a failure;
- then the event's own fields (C{client}, C{queue_id}...), values that JSON
  cannot hold written as their C{str()}.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any

from twisted.logger import FileLogObserver, formatEvent

#: Event keys that are Twisted's bookkeeping or the legacy log's, not the event's own fields.
_INTERNAL = frozenset({"message", "system", "isError", "format", "why", "failure", "time", "level",
                       "traceback", "log_trace", "log_text"})
_PLAIN = (str, int, float, bool, type(None))


def json_line(event: dict[str, Any]) -> str:
    """One event as one line of JSON (with its newline)."""
    when = event.get("log_time") or time.time()
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z",
        "level": level.name if level is not None else "info",
        "system": event.get("log_system") or event.get("log_namespace") or "-",
        "message": _message(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL:
            continue
        record[key] = value if isinstance(value, _PLAIN) else str(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def _message(event: dict[str, Any]) -> str:
    text = formatEvent(event)
    if not text and isinstance(event.get("message"), tuple):  # a legacy log.msg("a", "b") event
        text = " ".join(str(part) for part in event["message"])
    return text


def json_lines_observer(out: IO[str]) -> FileLogObserver:
    """A log observer writing L{json_line} records to C{out}."""
    return FileLogObserver(out, json_line)
