"""
gomail's text log observer (L{gomail.logtext}): the same lines as twistd's
own observer, written to the file twistd would have chosen.
"""

from __future__ import annotations

import io
import os
import signal
import sys

from twisted.application.service import Application
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    formatEventAsClassicLogText,
)
from twisted.python.logfile import LogFile
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SynchronousTestCase

from gomail import tap
from gomail.logtext import ClassicText, classic_observer, twistd_log_file
from gomail.root import build_service
from tests.test_service import config_in


class Thing:
    """Something with an attribute, for {thing.name} fields."""

    name = "thing-name"

    def __repr__(self) -> str:
        return "<Thing>"


def events(emit) -> list[dict]:
    """The events C{emit(log)} logs, as twisted.logger builds them."""
    seen: list[dict] = []
    emit(Logger(namespace="gomail.test", observer=seen.append))
    return seen


class ClassicTextTests(SynchronousTestCase):
    """ClassicText gives exactly what formatEventAsClassicLogText gives."""

    def assertSameAsTwisted(self, emit) -> None:
        for event in events(emit):
            self.assertEqual(ClassicText()(event), formatEventAsClassicLogText(event))

    def test_ordinary_events(self) -> None:
        """Fields, conversions, format specs, attributes, items and escaped braces format identically."""
        self.assertSameAsTwisted(lambda log: log.info(
            "queued {queue_id} for {count} recipients ({size} bytes)", queue_id="a1b2", count=1, size=5401))
        self.assertSameAsTwisted(lambda log: log.warn("{thing!r} {thing.name} {items[0]} {delay:.0f} s {{x}}",
                                                      thing=Thing(), items=["first"], delay=2.6))
        self.assertSameAsTwisted(lambda log: log.error("bytes {b} and none {n}", b=b"\x01", n=None))
        self.assertSameAsTwisted(lambda log: log.debug("plain"))
        self.assertSameAsTwisted(lambda log: log.critical("no fields"))

    def test_multi_line_text_is_indented(self) -> None:
        """A newline in the text continues on a tab-indented line, as twistd writes it."""
        self.assertSameAsTwisted(lambda log: log.info("one\ntwo {x}", x="three\nfour"))

    def test_failures_are_handed_to_twisted(self) -> None:
        """An event with a failure (and its traceback) is formatted by Twisted itself."""
        def emit(log):
            try:
                1 / 0  # noqa: B018 - raises, for a real traceback
            except ZeroDivisionError:
                log.failure("it failed for {who}", who="me")
        self.assertSameAsTwisted(emit)
        self.assertIn("ZeroDivisionError", ClassicText()(events(emit)[0]))

    def test_unusual_events_are_handed_to_twisted(self) -> None:
        """Call fields, missing keys, a log_system, no format or an empty text: all as Twisted does them."""
        self.assertSameAsTwisted(lambda log: log.info("called {thing.__repr__()}", thing=Thing()))
        self.assertSameAsTwisted(lambda log: log.info("missing {nothere}"))
        self.assertSameAsTwisted(lambda log: log.info("legacy", log_system="HTTPChannel,3,127.0.0.1"))
        self.assertSameAsTwisted(lambda log: log.info(None))
        self.assertSameAsTwisted(lambda log: log.info("{empty}", empty=""))
        self.assertIsNone(ClassicText()(events(lambda log: log.info("{empty}", empty=""))[0]))

    def test_time_text_follows_each_event(self) -> None:
        """The cached time text is renewed when an event falls in another second."""
        text = ClassicText()
        for when in (1796000000.0, 1796000000.9, 1796000001.2, 1796000000.5, 0.0):
            event = {"log_format": "t", "log_time": when, "log_namespace": "n", "log_level": LogLevel.info}
            self.assertEqual(text(event), formatEventAsClassicLogText(event))

    def test_missing_namespace_and_level(self) -> None:
        """An event without namespace or level shows '-' for them, like Twisted."""
        event = {"log_format": "bare", "log_time": 1796000000.0}
        self.assertEqual(ClassicText()(event), formatEventAsClassicLogText(event))


class TwistdLogFileTests(SynchronousTestCase):
    """twistd_log_file mirrors twistd's choice of log destination."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_foreground_logs_to_stdout(self) -> None:
        """twistd -n (no --logfile, or --logfile -) logs to standard output."""
        self.assertIs(twistd_log_file({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(twistd_log_file({"nodaemon": True, "logfile": "-"}), sys.stdout)

    def test_twistd_chooses_itself(self) -> None:
        """--syslog, --logger, --debug and a daemon asked for stdout are left to twistd (None)."""
        for options in ({"syslog": True}, {"logger": "some.factory"}, {"debug": True, "nodaemon": True},
                        {"nodaemon": False, "logfile": "-"}):
            self.assertIsNone(twistd_log_file(options), options)

    def test_named_file(self) -> None:
        """--logfile PATH is opened as twistd opens it: a LogFile at that path."""
        path = os.path.join(self.directory, "gomail.log")
        log_file = twistd_log_file({"nodaemon": False, "logfile": path})
        self.addCleanup(log_file.close)
        self.assertIsInstance(log_file, LogFile)
        self.assertEqual(log_file.path, path)

    def test_daemon_default(self) -> None:
        """A daemon without --logfile logs to twistd.log in the current directory."""
        here = os.getcwd()
        os.chdir(self.directory)
        self.addCleanup(os.chdir, here)
        log_file = twistd_log_file({"nodaemon": False, "logfile": None})
        self.addCleanup(log_file.close)
        self.assertEqual(log_file.path, os.path.join(self.directory, "twistd.log"))


class ObserverWiringTests(SynchronousTestCase):
    """The twistd plugin puts the observer on the application for text logs."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def test_observer_writes_twistd_lines(self) -> None:
        """classic_observer writes to its file exactly the line twistd's observer would."""
        out = io.StringIO()
        observer = classic_observer(out)
        event = events(lambda log: log.info("gomail {what}", what="ready"))[0]
        observer(event)
        self.assertEqual(out.getvalue(), formatEventAsClassicLogText(event))

    def test_service_installs_text_observer(self) -> None:
        """A service given a text log file gives the application an observer writing twistd lines to it, at
        logging.level (info by default: debug events are left out)."""
        out = io.StringIO()
        service = build_service(config_in(self.directory), MemoryReactorClock(), text_log_file=out)
        application = Application("gomail")
        service.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        info, debug = events(lambda log: (log.info("gomail {what}", what="ready"), log.debug("noise")))
        observer(info)
        observer(debug)
        self.assertEqual(out.getvalue(), formatEventAsClassicLogText(info))

    def test_plugin_sets_the_file_from_twistd_options(self) -> None:
        """twistd -n gomail: the plugin's service logs text to stdout through gomail's observer."""
        path = os.path.join(self.directory, "gomail.toml")
        with open(path, "w") as f:
            f.write(f'dataDir = "{self.directory}"\nsmtpPort = 2525\n[security]\nrequireAuth = false\n')
        before = signal.getsignal(signal.SIGUSR1)
        options = ServerOptions()
        options.parseOptions(["-n", "gomail", "--config", path])
        service = tap.makeService(options.subOptions)
        self.assertIs(service.text_log_file, sys.stdout)
        # Signal handlers belong to a service's start, not to makeService.
        self.assertEqual(signal.getsignal(signal.SIGUSR1), before)
