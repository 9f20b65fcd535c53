# -*- test-case-name: tests.test_logtext -*-
"""
twistd's classic text log format, written faster, and where twistd would write it.

twistd formats every event with twisted.logger's C{formatEventAsClassicLogText}:
a pure-Python C{string.Formatter} and a time-zone lookup per event, about 12 us
here. gomail logs two or three lines per message, so that was 12-19% of the
reactor thread's samples under the intake and relay benchmarks (py-spy). The
formatter below gives the same line for an ordinary event in under a
microsecond (the time text is reused within a second, C{str.format_map} does
the fields) and hands everything else to Twisted's formatter: tracebacks,
legacy events, flattened events, C{{callable()}} fields, and any event that
does not format cleanly.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from twisted.logger import FileLogObserver, formatEventAsClassicLogText, formatTime
from twisted.python.logfile import LogFile


class ClassicText:
    """C{formatEventAsClassicLogText} with the default (RFC 3339) time format, cached per second."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._time_text = ""

    def __call__(self, event: dict[str, Any]) -> str | None:
        fmt = event.get("log_format")
        when = event.get("log_time")
        if (type(fmt) is not str or not fmt or when is None or "log_failure" in event
                or "log_flattened" in event or "log_system" in event or "()" in fmt):
            return formatEventAsClassicLogText(event)
        try:
            text = fmt.format_map(event)
        except Exception:  # noqa: BLE001 -- any field's __format__ may raise: twisted's own line then
            return formatEventAsClassicLogText(event)  # its "Unable to format event" line
        if not text:
            return None
        second = int(when)
        if second != self._second:
            # Whole seconds only in this format, and the UTC offset cannot change within one.
            self._time_text = formatTime(second)
            self._second = second
        level = event.get("log_level")
        system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        line = f"{self._time_text} [{system}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        return line + "\n"


def twistd_log_file(options: Mapping[str, Any]) -> Any:
    """
    The file twistd would log to for these twistd (server) options, opened
    the way twistd opens it; None where twistd must choose itself (syslog,
    C{--logger}, C{--debug}, or a daemon asked to log to standard output).
    Mirrors C{twisted.scripts._twistd_unix.UnixAppLogger}.
    """
    if options.get("syslog") or options.get("logger") or options.get("debug"):
        return None
    name = options.get("logfile") or ""
    nodaemon = bool(options.get("nodaemon"))
    if name == "-":
        return sys.stdout if nodaemon else None
    if nodaemon and not name:
        return sys.stdout
    return LogFile.fromFullPath(name or "twistd.log")


def classic_observer(log_file: Any) -> FileLogObserver:
    """An observer writing twistd's text format to C{log_file}."""
    return FileLogObserver(log_file, ClassicText())
