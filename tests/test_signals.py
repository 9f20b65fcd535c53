"""The signals the server answers (gomail.signals): SIGHUP and SIGUSR1 logged and ignored."""

from __future__ import annotations

import os
import signal

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gomail.signals import SignalService


class CallsFromThread:
    """A reactor stand-in that records C{callFromThread} calls, to run them when told."""

    def __init__(self) -> None:
        self.calls: list = []

    def callFromThread(self, f, *args):
        self.calls.append((f, args))

    def run_calls(self) -> None:
        calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)


class SignalServiceTests(SynchronousTestCase):
    """The handler installed with the service, removed with it, doing its work in the reactor."""

    def setUp(self) -> None:
        self.reactor = CallsFromThread()
        self.service = SignalService(self.reactor)
        self.before = {n: signal.getsignal(n) for n in (signal.SIGHUP, signal.SIGUSR1)}
        self.addCleanup(lambda: [signal.signal(n, h) for n, h in self.before.items()])

    def test_sighup_logged_and_ignored(self) -> None:
        """A SIGHUP to the process is logged as ignored (in the reactor) and the process goes on."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.service.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        self.assertEqual(len(self.reactor.calls), 1)
        self.reactor.run_calls()
        self.assertTrue(any("SIGHUP received" in e.get("log_format", "") for e in events))

    def test_sigusr1_logged_and_ignored(self) -> None:
        """
        SIGUSR1 (the old queue rescan, which an old script may still send) is
        logged with what to use instead and ignored: it no longer ends the process.
        """
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.service.startService()
        os.kill(os.getpid(), signal.SIGUSR1)
        self.reactor.run_calls()
        self.assertTrue(any("gomail queue flush" in e.get("log_format", "") for e in events))

    def test_stop_restores_previous_handlers(self) -> None:
        """After stopService the handler that was there before is back."""
        self.service.startService()
        self.service.stopService()
        for number, handler in self.before.items():
            self.assertEqual(signal.getsignal(number), handler)
