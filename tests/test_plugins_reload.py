"""
SIGHUP and plugins (L{gomail.extension.reloading}): a stateless plugin is
rebuilt from its new settings and replaces the old one without dropping a
session; a plugin refusing its new settings changes nothing; enabling or
disabling a plugin needs a restart; logging.level changes at once. Also on
a real twistd, with /metrics showing the plugin's calls.
"""

from __future__ import annotations

import os
import smtplib
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, LogLevelFilterPredicate, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gomail.configload import load_config
from gomail.extension.reloading import PluginReloader
from gomail.extension.wiring import build_plugins
from gomail.plugin import SessionView
from gomail.reload import ConfigReloader
from gomail.testing import fake_session
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll

POLICY = '[plugins]\ntimeout = {timeout}\n[plugins.sender-policy]\nrejectSenderDomains = ["{domain}"]\n{more}'


class PluginReloadTests(SynchronousTestCase):
    """ConfigReloader with the plugins' reloader, over a real file."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp()) + ".toml"
        self.write(POLICY.format(timeout=5, domain="old.example", more=""))
        self.config = load_config(self.path, environ={})
        self.parts = build_plugins(self.config, Clock())
        self.levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
        self.reloader = ConfigReloader(
            self.config, lambda: load_config(self.path, environ={}), log_levels=self.levels,
            plugins=PluginReloader(self.parts, self.config.plugins, Clock(), "mx.test", "/data"))

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    def refuses(self, domain: str) -> bool:
        [(_, hook)] = self.parts.smtp_hooks.hooks
        session: SessionView = fake_session()
        return hook.mail_from(session, f"a@{domain}") is not None

    def test_settings_applied_to_the_running_hooks(self) -> None:
        """A new table rebuilds the plugin; the hook list the sessions read holds the new one."""
        self.write(POLICY.format(timeout=7, domain="new.example", more=""))
        with capturedLogs() as events:
            applied, restart = self.reloader.reload()
        self.assertEqual((sorted(applied), restart), (["plugins.sender-policy", "plugins.timeout"], []))
        self.assertTrue(self.refuses("new.example"))
        self.assertFalse(self.refuses("old.example"))
        self.assertEqual(self.parts.runner.timeout, 7)
        self.assertIn("SIGHUP: applied plugins.sender-policy", "\n".join(formatEvent(e) for e in events))

    def test_bad_settings_change_nothing(self) -> None:
        """A table the plugin refuses: the error is logged and nothing changes, not even other live keys."""
        self.write(POLICY.format(timeout=9, domain="new.example", more="maxRecipients = -3\n")
                   + '[logging]\nlevel = "debug"\n')
        with capturedLogs() as events:
            self.assertEqual(self.reloader.reload(), ([], []))
        self.assertTrue(self.refuses("old.example"))
        self.assertEqual(self.parts.runner.timeout, 5)
        self.assertEqual(self.levels.defaultLogLevel, LogLevel.info)
        self.assertIn("plugins.sender-policy.maxRecipients", "\n".join(formatEvent(e) for e in events))

    def test_enabling_a_plugin_needs_a_restart(self) -> None:
        """A plugin enabled by the new file is named as needing a restart, and not built (pop3 and imap are built in)."""
        self.write(POLICY.format(timeout=5, domain="old.example", more='[plugins.headers]\nremove = ["X-A"]\n'))
        self.assertEqual(self.reloader.reload(), ([], ["plugins.headers"]))
        self.assertEqual([p.name for p in self.parts.plugins], ["sender-policy", "pop3", "imap"])

    def test_log_level(self) -> None:
        """logging.level changes the level of the running observers."""
        self.write(POLICY.format(timeout=5, domain="old.example", more="") + '[logging]\nlevel = "warn"\n')
        self.assertEqual(self.reloader.reload(), (["logging.level"], []))
        self.assertEqual(self.levels.defaultLogLevel, LogLevel.warn)


PLUGGED = """
dataDir = "{data}"
smtpPort = {port}
[monitor]
listen = ["tcp:{monitor}:interface=127.0.0.1"]
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
enabled = false
[plugins]
[plugins.sender-policy]
rejectSenderDomains = ["{domain}"]
"""


class PluginSIGHUPProcessTests(TestCase):
    """A real twistd with the sender-policy plugin."""

    timeout = 60

    def test_policy_changed_without_dropping_a_session(self) -> None:
        """A session opened before SIGHUP meets the new policy at its next MAIL; /metrics counts the plugin."""
        port, monitor = free_port(), free_port()
        node = GomailNode(self, PLUGGED, port=port, monitor=monitor, domain="old.example")

        def mail_from(client: smtplib.SMTP, sender: str) -> int:
            code, _ = client.mail(sender)
            client.rset()
            return code

        def metrics() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/metrics?format=prometheus", timeout=10) as r:
                return r.read().decode()

        async def run() -> None:
            process = await node.start()
            self.assertIn(b"plugin sender-policy loaded from ", node.output)
            client = await deferToThread(smtplib.SMTP, "127.0.0.1", port, "client.test", 20)
            self.addCleanup(client.close)
            await deferToThread(client.ehlo, "client.test")
            self.assertEqual(await deferToThread(mail_from, client, "a@old.example"), 550)
            self.assertEqual(await deferToThread(mail_from, client, "a@new.example"), 250)
            node.fields["domain"] = "new.example"
            node.write_config(PLUGGED)
            process.transport.signalProcess("HUP")
            await poll(reactor, lambda: b"SIGHUP: applied plugins.sender-policy" in node.output)
            self.assertEqual(await deferToThread(mail_from, client, "a@new.example"), 550)
            self.assertEqual(await deferToThread(mail_from, client, "a@old.example"), 250)
            await deferToThread(client.quit)
            text = await deferToThread(metrics)
            self.assertIn('gomail_plugin_calls_total{plugin="sender-policy"}', text)
            self.assertIn('gomail_smtp_rejections_total{reason="plugin"}', text)
            await node.stop_cleanly()
        return ensureDeferred(run())




class TwoPhaseTests(SynchronousTestCase):
    """Plugins with state: every plugin checks its new settings before any applies them."""

    def test_one_refusal_applies_nothing(self) -> None:
        """Two stateful plugins, the second refusing: the first's new settings are not applied either."""
        from zope.interface import implementer

        from gomail.configschema import PluginSettings
        from gomail.extension.loader import LoadedPlugin, PluginError, Plugins
        from gomail.extension.runner import HookRunner
        from gomail.extension.smtphooks import SMTPHooks
        from gomail.extension.wiring import PluginParts
        from gomail.interfaces import IDeliveryObserver
        from gomail.plugin import PluginConfigError

        @implementer(IDeliveryObserver)
        class Counter:
            def __init__(self) -> None:
                self.applied: list[int] = []

            def delivery_event(self, event: object) -> None:
                pass

            def reconfigure(self, settings):  # type: ignore[no-untyped-def]
                value = settings.integer("value", 0)
                if value < 0:
                    raise PluginConfigError("value", "must not be negative")
                return lambda: self.applied.append(value)

        first, second = Counter(), Counter()
        plugins = Plugins([LoadedPlugin("first", first, (IDeliveryObserver,), "-"),
                           LoadedPlugin("second", second, (IDeliveryObserver,), "-")])
        old = PluginSettings(enabled=(("first", {"value": 1}), ("second", {"value": 1})))
        reloader = PluginReloader(PluginParts(plugins, HookRunner(Clock(), 5), SMTPHooks()), old, Clock(), "h", "/d")
        error = self.assertRaises(PluginError, reloader.prepare,
                                  PluginSettings(enabled=(("first", {"value": 2}), ("second", {"value": -1}))))
        self.assertEqual(str(error), "plugins.second.value: must not be negative")
        self.assertEqual((first.applied, second.applied), ([], []))
        applied, _, apply = reloader.prepare(
            PluginSettings(enabled=(("first", {"value": 2}), ("second", {"value": 3}))))
        apply()
        self.assertEqual((sorted(applied), first.applied, second.applied),
                         (["plugins.first", "plugins.second"], [2], [3]))
