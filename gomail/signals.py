# -*- test-case-name: tests.test_signals -*-
"""
Unix signals the server answers, installed by a service and removed with it.

twistd handles SIGINT and SIGTERM (a clean stop). Everything else is ours:

- SIGHUP: by default it ends a process (exit 129), which cut off every client
  mid-transaction when an operator or a terminal sent it. gomail has nothing
  to reload live yet, so it is logged and ignored: it never stops the server.
- SIGUSR1: sent by C{gomail queue retry|flush|delete} after they changed the
  spool: the queue is read again.

A signal handler runs between two bytecodes of whatever the main thread was
doing, so it only hands its work to the reactor (C{callFromThread}).
"""

from __future__ import annotations

import signal
from typing import Any, Callable

from twisted.application.service import Service
from twisted.logger import Logger


class SignalService(Service):
    """
    Installs the handlers in C{startService} and puts the previous ones back
    in C{stopService}.

    @param reactor: where the handlers' work runs (C{callFromThread}).
    @param rescan_queue: called on SIGUSR1.
    """

    log = Logger()

    def __init__(self, reactor: Any, rescan_queue: Callable[[], None]) -> None:
        self.reactor = reactor
        self.rescan_queue = rescan_queue
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        self._install(signal.SIGHUP, self._hangup)
        self._install(signal.SIGUSR1, self.rescan_queue)

    def stopService(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
        super().stopService()

    def _install(self, number: int, work: Callable[[], None]) -> None:
        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(work)

        self._previous[number] = signal.signal(number, handler)

    def _hangup(self) -> None:
        self.log.warn("SIGHUP received: gomail has no live reload yet, so it is ignored "
                      "(restart to apply a changed configuration)")
