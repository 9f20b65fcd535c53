# -*- test-case-name: tests.test_signals -*-
"""
Unix signals the server answers, installed by a service and removed with it.

twistd handles SIGINT and SIGTERM (a clean stop). SIGHUP is ours: by default
it ends a process (exit 129), which cut off every client mid-transaction when
an operator or a terminal sent it. Here it reloads the configuration
(L{gomail.reload}: what can change safely is applied, the rest logged as
needing a restart); it never stops the server. SIGUSR1 used to make the
server rescan its queue; queue changes by the C{gomail queue} command now
reach the server through its control channel (L{gomail.control}), but an old
script or cron job may still send it, and its default action would end the
process: it is logged (with what to use instead) and ignored too.

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
    Installs the SIGHUP and SIGUSR1 handlers in C{startService} and puts the
    previous ones back in C{stopService}.

    @param reactor: where the handler's work runs (C{callFromThread}).
    """

    log = Logger()

    def __init__(self, reactor: Any, reloader: Any = None) -> None:
        self.reactor = reactor
        #: A L{gomail.reload.ConfigReloader}, or None (SIGHUP is then logged and ignored).
        self.reloader = reloader
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for number in (signal.SIGHUP, signal.SIGUSR1):
            self._previous[number] = signal.signal(number, self._handler)

    def stopService(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous = {}
        super().stopService()

    def _handler(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._ignored, signum)

    def _ignored(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.reloader is not None:
            self.reloader.reload()
        elif signum == signal.SIGHUP:
            self.log.warn("SIGHUP received: gomail has no live reload yet, so it is ignored "
                          "(restart to apply a changed configuration)")
        else:
            self.log.warn("SIGUSR1 received and ignored: the queue is no longer rescanned on a signal; "
                          "`gomail queue flush` asks the running server to deliver now")
