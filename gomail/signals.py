# -*- test-case-name: tests.test_signals -*-
"""
Unix signals the server answers, installed by a service and removed with it.

twistd handles SIGINT and SIGTERM (a clean stop). SIGHUP is ours: by default
it ends a process (exit 129), which cut off every client mid-transaction when
an operator or a terminal sent it. gomail has nothing to reload live yet, so
it is logged and ignored: it never stops the server. (Queue changes by the
C{gomail queue} command reach the server through its control channel,
L{gomail.control}, not through a signal.)

A signal handler runs between two bytecodes of whatever the main thread was
doing, so it only hands its work to the reactor (C{callFromThread}).
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


class SignalService(Service):
    """
    Installs the SIGHUP handler in C{startService} and puts the previous one
    back in C{stopService}.

    @param reactor: where the handler's work runs (C{callFromThread}).
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._handler)

    def stopService(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
        super().stopService()

    def _handler(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._hangup)

    def _hangup(self) -> None:
        self.log.warn("SIGHUP received: gomail has no live reload yet, so it is ignored "
                      "(restart to apply a changed configuration)")
