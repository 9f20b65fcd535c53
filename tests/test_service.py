"""The composition root: what build_service wires, start-up order and log format."""

from __future__ import annotations

import dataclasses
import os

from twisted.application.service import Application, Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver
from twisted.trial.unittest import SynchronousTestCase

from gomail.configload import load_config
from gomail.root import build_service
from gomail.servicekit import ListenError, PeriodicService, SequentialMultiService
from gomail.smtp.server import SMTPService
from gomail.spool.envelope import Recipient


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
        """
        I/O pool, spool writer process, spool, delivery, the control channel
        (after recovery and delivery, stopped before them), the auth parts and
        the audit log SMTP AUTH writes to, then SMTP and the built-in POP3
        and IMAP plugins' services: listeners come last, so they open after recovery.
        """
        service = build_service(config_in(self.directory), self.reactor)
        names = [type(child).__name__ for child in service]
        self.assertEqual(names, ["ThreadPoolService", "WriterProcess", "SpoolService", "DeliveryQueue",
                                 "PeriodicService", "ControlService", "ThreadPoolService", "AuthService",
                                 "PeriodicService", "AuthLog", "SMTPService", "POP3Service", "IMAPService",
                                 "SignalService",
                                 "BackendRouter",
                                 "PeriodicService", "ListeningService", "ListeningService",
                                 "SystemConfigLoader", "PeriodicService", "PeriodicService", "ListeningService"])
        timers = [repr(child) for child in service if isinstance(child, PeriodicService)]
        self.assertEqual(timers, ["<PeriodicService 'failed-store retry' every 3600 s>",
                                  "<PeriodicService 'user database watch' every 1 s>",
                                  "<PeriodicService 'backend health checks' every 10 s>",
                                  "<PeriodicService 'admin session purge' every 3600 s>",
                                  "<PeriodicService 'admin dashboard sampling' every 60 s>"])
        self.assertEqual(self.reactor.tcpServers, [])

    def test_writer_threads_without_a_process(self) -> None:
        """
        spool.writerProcess = false: this process holds the spool's writer
        lock (before its writers start, until they stopped) and runs two
        writer threads (commits; Maildir copies and removals).
        """
        config = config_in(self.directory)
        config = dataclasses.replace(config, spool=dataclasses.replace(config.spool, writerProcess=False))
        service = build_service(config, self.reactor)
        names = [type(child).__name__ for child in service][:5]
        self.assertEqual(names, ["ThreadPoolService", "SpoolLock", "BatchWriter", "BatchWriter", "SpoolService"])
        self.assertIs(service.spool.removal_writer, service.delivery.router.local.writer)
        self.assertIsNot(service.spool.writer, service.spool.removal_writer)

    def test_forward_smtp_routes_to_the_relay(self) -> None:
        """With forwardSMTP, local domains go to the mailbox and the rest to the smarthost, workerCount at once."""
        config = config_in(self.directory, forwardSMTP=True, forwardHost="smtp.example.net", workerCount=3)
        config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, localDomains=("example.com",)))
        service = build_service(config, self.reactor)
        queue = service.delivery
        self.assertEqual((queue.router.relay.name, queue.workers), ("relay", 3))
        self.assertEqual([str(s) for s in queue.router.relay.smarthosts], ["smtp.example.net:587"])
        routes = queue.router.route([Recipient("a@example.com"), Recipient("b@example.org")])
        self.assertEqual([(agent.name, [r.address for r in group]) for agent, group in routes],
                         [("mailbox", ["a@example.com"]), ("relay", ["b@example.org"])])

    def test_envelopes_queued_before_canonical_domains_stay_local(self) -> None:
        """An envelope written before domains were canonical ("Example.COM.") still routes to the mailbox."""
        config = config_in(self.directory, forwardSMTP=True, forwardHost="smtp.example.net")
        config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, localDomains=("example.com",)))
        router = build_service(config, self.reactor).delivery.router
        routes = router.route([Recipient("a@Example.COM."), Recipient("b@example.org")])
        self.assertEqual([(agent.name, [r.address for r in group]) for agent, group in routes],
                         [("mailbox", ["a@Example.COM."]), ("relay", ["b@example.org"])])

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
        smtp = next(child for child in service if isinstance(child, SMTPService))
        listener = next(iter(smtp))
        listener.endpoint.listen = lambda factory: fail(OSError("Address already in use"))
        failure = self.failureResultOf(listener.startService(), ListenError)
        self.assertIn("tcp:2525:interface=127.0.0.1", str(failure.value))
        self.assertIn("Address already in use", str(failure.value))


class SequentialStartTests(SynchronousTestCase):
    """SequentialMultiService: one child after the other."""

    def test_stop_during_a_start_starts_nothing_more(self) -> None:
        """Stopped while a child is still starting: the later children never start (nor need stopping)."""
        pending: Deferred = Deferred()

        class Slow(Service):
            def startService(self) -> Deferred:
                super().startService()
                return pending

        parent = SequentialMultiService()
        slow, later = Slow(), Service()
        slow.setServiceParent(parent)
        later.setServiceParent(parent)
        started = parent.startService()
        self.successResultOf(parent.stopService())
        pending.callback(None)
        self.successResultOf(started)
        self.assertFalse(later.running)


class BcryptThreadsTests(SynchronousTestCase):
    """The size of the bcrypt pool (auth.cpuThreads)."""

    def test_configured_wins(self) -> None:
        """A configured size is used as it is."""
        from gomail.auth.service import bcrypt_threads

        self.assertEqual(bcrypt_threads(3, 2), 3)

    def test_automatic_leaves_the_event_loop_a_core(self) -> None:
        """0 means one fewer than the cores, and never fewer than one thread."""
        from gomail.auth.service import bcrypt_threads

        self.assertEqual([bcrypt_threads(0, cores) for cores in (None, 1, 2, 8, 200)], [1, 1, 1, 7, 64])

    def test_usable_cpus(self) -> None:
        """The CPUs counted are at most those this process may run on."""
        from gomail.auth.service import usable_cpus

        self.assertTrue(1 <= usable_cpus() <= len(os.sched_getaffinity(0)))
