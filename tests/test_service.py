"""The composition root: what build_service wires, start-up order and log format."""

from __future__ import annotations

import dataclasses
import os

from twisted.application.service import Application
from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.trial.unittest import SynchronousTestCase

from gomail.config import load_config
from gomail.delivery.queue import DeliveryQueue
from gomail.service import build_service
from gomail.services import ListenError
from gomail.smtp.server import SMTPService


def config_in(directory: str, **top):
    config = load_config(None, environ={})
    config = dataclasses.replace(config, dataDir=directory,
                                 spool=dataclasses.replace(config.spool, directory=os.path.join(directory, "spool")),
                                 smtp=dataclasses.replace(config.smtp, listen=("tcp:2525:interface=127.0.0.1",),
                                                          hostname="mx.test"),
                                 **top)
    return config


class BuildServiceTests(SynchronousTestCase):
    """build_service(config, reactor) on a MemoryReactor: nothing listens until started."""

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.reactor = MemoryReactorClock()

    def test_children_in_start_order(self) -> None:
        """I/O pool, spool, local delivery, then SMTP: listeners come last, so they open after recovery."""
        service = build_service(config_in(self.directory), self.reactor)
        names = [type(child).__name__ for child in service]
        self.assertEqual(names, ["ThreadPoolService", "BatchWriter", "BatchWriter", "SpoolService", "DeliveryQueue", "SMTPService"])
        self.assertEqual(self.reactor.tcpServers, [])

    def test_forward_smtp_has_no_local_consumer(self) -> None:
        """With forwardSMTP (relay not built yet) no local delivery consumer is wired."""
        config = config_in(self.directory, forwardSMTP=True, forwardHost="smtp.example.net")
        service = build_service(config, self.reactor)
        self.assertFalse(any(isinstance(child, DeliveryQueue) for child in service))

    def test_json_log_format_sets_the_observer(self) -> None:
        """logging.format = "json" gives twistd's application a JSON ILogObserver; "text" leaves twistd's own."""
        path = os.path.join(self.directory, "log.json")
        os.makedirs(self.directory)
        config = config_in(self.directory)
        config = dataclasses.replace(config, logging=dataclasses.replace(config.logging, format="json", file=path))
        application = Application("gomail")
        build_service(config, self.reactor).setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        plain = Application("gomail")
        build_service(config_in(self.directory), self.reactor).setServiceParent(plain)
        self.assertIsNone(plain.getComponent(ILogObserver, None))

    def test_listen_failure_is_named(self) -> None:
        """A listener that cannot open fails start-up with a ListenError naming the endpoint."""
        service = build_service(config_in(self.directory), self.reactor)
        smtp = [child for child in service if isinstance(child, SMTPService)][0]
        listener = list(smtp)[0]
        listener.endpoint.listen = lambda factory: fail(OSError("Address already in use"))
        failure = self.failureResultOf(listener.startService(), ListenError)
        self.assertIn("tcp:2525:interface=127.0.0.1", str(failure.value))
        self.assertIn("Address already in use", str(failure.value))
