"""
Plugin discovery and configuration: plugins found by twisted.plugin in a
temporary plugin directory, enabled and configured by [plugins.<name>]
tables, and every way a plugin can be wrong stopping the start with one
line naming it; the runner's metrics; `gomail plugins list` and check-config.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import gomail.plugins
from gomail.configload import load_config
from gomail.configschema import PluginSettings
from gomail.extension.loader import PluginError, discover, load_plugins
from gomail.extension.runner import HookFailed, HookRunner, plugin_metrics
from gomail.interfaces import IDeliveryObserver, ISMTPHook

_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = '''
from gomail.plugin import SMTPHook, plugin, reject

class Deny(SMTPHook):
    """Refuses senders of some domains."""
    def __init__(self, settings, context):
        self.domains = set(settings.texts("domains"))
        self.context = context

    def mail_from(self, session, sender):
        if sender.rpartition("@")[2] in self.domains:
            return reject("Not from there")

{name} = plugin("{name}", Deny)
'''


class PluginDirectoryMixin:
    """A fresh plugin directory per test, taken off the plugin package's path afterwards."""

    def plugin_dir(self) -> str:
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(directory)
        before = list(gomail.plugins.__path__)
        modules = set(sys.modules)

        def restore() -> None:
            gomail.plugins.__path__[:] = before
            for name in set(sys.modules) - modules:
                if name.startswith("gomail.plugins."):
                    del sys.modules[name]

        self.addCleanup(restore)  # type: ignore[attr-defined]
        return directory

    def write_plugin(self, directory: str, module: str, text: str) -> str:
        path = os.path.join(directory, module + ".py")
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def settings(self, directory: str, *enabled: tuple[str, dict]) -> PluginSettings:
        return PluginSettings(path=(directory,), enabled=enabled)


class DiscoveryTests(PluginDirectoryMixin, SynchronousTestCase):
    """Finding plugins and building the enabled ones."""

    def test_found_in_a_plugin_directory(self) -> None:
        """A module in a plugins.path directory is found by name, with its source file; the built-ins too."""
        directory = self.plugin_dir()
        path = self.write_plugin(directory, "deny_one", GOOD.format(name="deny_one"))
        found = discover([directory])
        self.assertEqual(found["deny_one"].source, path)
        self.assertIn("headers", found)
        self.assertIn("sender-policy", found)

    def test_enabled_plugin_is_built_with_its_settings(self) -> None:
        """[plugins.<name>] enables the plugin: built with its table, its interfaces verified."""
        directory = self.plugin_dir()
        self.write_plugin(directory, "deny_two", GOOD.format(name="deny_two"))
        plugins = load_plugins(self.settings(directory, ("deny_two", {"domains": ["x.example"]})), Clock(),
                               "mx.test", "/data")
        [loaded] = plugins.loaded
        self.assertEqual(loaded.name, "deny_two")
        self.assertEqual(loaded.interfaces, (ISMTPHook,))
        self.assertEqual(loaded.extension.domains, {"x.example"})
        self.assertEqual(loaded.extension.context.hostname, "mx.test")
        self.assertEqual(plugins.providing(ISMTPHook), [("deny_two", loaded.extension)])
        self.assertEqual(plugins.providing(IDeliveryObserver), [])

    def test_order_is_the_configuration_order(self) -> None:
        """Plugins are built (and their hooks run) in the order of their tables."""
        directory = self.plugin_dir()
        self.write_plugin(directory, "deny_a", GOOD.format(name="deny_a"))
        self.write_plugin(directory, "deny_b", GOOD.format(name="deny_b"))
        plugins = load_plugins(self.settings(directory, ("deny_b", {}), ("deny_a", {})), None, "h", "/d")
        self.assertEqual([p.name for p in plugins], ["deny_b", "deny_a"])

    def test_enabled_false_disables(self) -> None:
        """enabled = false in a plugin's table leaves it out."""
        directory = self.plugin_dir()
        self.write_plugin(directory, "deny_c", GOOD.format(name="deny_c"))
        self.assertEqual(len(load_plugins(self.settings(directory, ("deny_c", {"enabled": False})), None, "h", "/d")),
                         0)

    def test_from_the_configuration_file(self) -> None:
        """
        The TOML file's [plugins] section gives the path, the timeout and the
        tables, in order; the built-in pop3 and imap plugins, on by default ([pop3], [imap]), come last.
        """
        directory = self.plugin_dir()
        config_path = os.path.join(directory, "gomail.toml")
        with open(config_path, "w") as f:
            f.write(f'[plugins]\npath = ["{directory}"]\ntimeout = 2.5\n'
                    '[plugins.sender-policy]\nmaxRecipients = 3\n[plugins.headers]\nremove = ["X-Mailer"]\n')
        config = load_config(config_path, {})
        self.assertEqual(config.plugins.timeout, 2.5)
        plugins = load_plugins(config.plugins, None, "h", "/d")
        self.assertEqual([p.name for p in plugins], ["sender-policy", "headers", "pop3", "imap"])


class BrokenPluginTests(PluginDirectoryMixin, SynchronousTestCase):
    """Every way a plugin can be wrong stops the start with one line naming it."""

    def assertOneLine(self, error: PluginError, *parts: str) -> None:
        text = str(error)
        self.assertNotIn("\n", text)
        for part in parts:
            self.assertIn(part, text)

    def test_module_that_fails_to_import(self) -> None:
        """A module raising at import: its file and the error."""
        directory = self.plugin_dir()
        path = self.write_plugin(directory, "broken_one", "import no_such_module_here\n")
        error = self.assertRaises(PluginError, discover, [directory])
        self.assertOneLine(error, path, "cannot be imported", "ModuleNotFoundError", "no_such_module_here")

    def test_syntax_error(self) -> None:
        """A module that does not parse: its file and SyntaxError."""
        directory = self.plugin_dir()
        path = self.write_plugin(directory, "broken_two", "def (:\n")
        error = self.assertRaises(PluginError, discover, [directory])
        self.assertOneLine(error, path, "SyntaxError")

    def test_missing_interface_method(self) -> None:
        """An object claiming ISMTPHook without its methods: verifyObject's complaint, with the plugin's name."""
        directory = self.plugin_dir()
        self.write_plugin(directory, "half_hook", '''
            from zope.interface import implementer
            from gomail.interfaces import ISMTPHook
            from gomail.plugin import plugin

            @implementer(ISMTPHook)
            class Half:
                def __init__(self, settings, context):
                    pass
                def connect(self, session):
                    return None

            half_hook = plugin("half_hook", Half)
        ''')
        error = self.assertRaises(PluginError, load_plugins, self.settings(directory, ("half_hook", {})),
                                  None, "h", "/d")
        self.assertOneLine(error, "plugin half_hook does not implement ISMTPHook", "helo")

    def test_no_interface_at_all(self) -> None:
        """An object providing none of the extension interfaces is refused, naming them."""
        directory = self.plugin_dir()
        self.write_plugin(directory, "nothing_here", '''
            from gomail.plugin import plugin
            nothing_here = plugin("nothing_here", lambda settings, context: object())
        ''')
        error = self.assertRaises(PluginError, load_plugins, self.settings(directory, ("nothing_here", {})),
                                  None, "h", "/d")
        self.assertOneLine(error, "plugin nothing_here", "provides none of gomail's interfaces", "ISMTPHook")

    def test_unknown_plugin(self) -> None:
        """A table naming no plugin found: its name and the plugins that exist."""
        error = self.assertRaises(PluginError, load_plugins,
                                  PluginSettings(enabled=(("no-such", {}),)), None, "h", "/d")
        self.assertOneLine(error, "plugins.no-such: no such plugin", "headers")

    def test_bad_setting_names_the_key(self) -> None:
        """A wrong value is reported as plugins.<name>.<key>, as the rest of the configuration does."""
        error = self.assertRaises(PluginError, load_plugins,
                                  PluginSettings(enabled=(("sender-policy", {"maxRecipients": "many"}),)),
                                  None, "h", "/d")
        self.assertEqual(str(error), "plugins.sender-policy.maxRecipients: must be a whole number, got str")

    def test_unknown_key(self) -> None:
        """A key the plugin never reads is refused (a typo must not silently do nothing)."""
        error = self.assertRaises(PluginError, load_plugins,
                                  PluginSettings(enabled=(("sender-policy", {"maxRecipient": 3}),)),
                                  None, "h", "/d")
        self.assertEqual(str(error), "plugins.sender-policy.maxRecipient: unknown key")

    def test_factory_raising(self) -> None:
        """A plugin whose factory raises: its name, file and the error."""
        directory = self.plugin_dir()
        path = self.write_plugin(directory, "raising_one", '''
            from gomail.plugin import plugin
            def build(settings, context):
                raise RuntimeError("cannot reach the directory server")
            raising_one = plugin("raising_one", build)
        ''')
        error = self.assertRaises(PluginError, load_plugins, self.settings(directory, ("raising_one", {})),
                                  None, "h", "/d")
        self.assertOneLine(error, "plugin raising_one", path, "RuntimeError: cannot reach the directory server")

    def test_twistd_start_stops_with_one_line(self) -> None:
        """`twistd gomail` with a broken plugin exits with 'gomail: plugin error: ...' before anything starts."""
        from gomail.tap import Options, makeService

        directory = self.plugin_dir()
        self.write_plugin(directory, "broken_three", "raise ImportError('missing dependency ldap3')\n")
        config_path = os.path.join(directory, "gomail.toml")
        with open(config_path, "w") as f:
            f.write(f'dataDir = "{directory}/data"\n[plugins]\npath = ["{directory}"]\n[plugins.broken_three]\n')
        options = Options()
        options.parseOptions(["--config", config_path])
        error = self.assertRaises(SystemExit, makeService, options)
        self.assertIn("gomail: plugin error: plugin module ", str(error.code))
        self.assertIn("broken_three.py cannot be imported: ImportError: missing dependency ldap3", str(error.code))


class RunnerTests(SynchronousTestCase):
    """The bounded, counted calls into plugins."""

    def test_counts_and_metrics(self) -> None:
        """Calls, errors, timeouts and seconds per plugin reach the Prometheus families."""
        clock = Clock()
        runner = HookRunner(clock, 2.0)
        ok = runner.call("fine", lambda: succeed("yes"))
        self.assertEqual(self.successResultOf(ok), "yes")
        failed = runner.call("buggy", lambda: 1 / 0)
        self.failureResultOf(failed, HookFailed)
        self.flushLoggedErrors(ZeroDivisionError)
        slow = runner.call("slow", lambda: Deferred())
        clock.advance(2.0)
        self.assertEqual(self.failureResultOf(slow, HookFailed).value.kind, "timeout")
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(plugin_metrics(runner))
        text = generate_latest(registry).decode()
        self.assertIn('gomail_plugin_calls_total{plugin="fine"} 1.0', text)
        self.assertIn('gomail_plugin_failures_total{kind="error",plugin="buggy"} 1.0', text)
        self.assertIn('gomail_plugin_failures_total{kind="timeout",plugin="slow"} 1.0', text)
        self.assertIn('gomail_plugin_seconds_total{plugin="slow"} 2.0', text)


class CommandTests(PluginDirectoryMixin, SynchronousTestCase):
    """`gomail plugins list` and `gomail check-config`, as an operator runs them."""

    def gomail(self, *args: str) -> subprocess.CompletedProcess:
        env = {"PYTHONPATH": _SOURCE_ROOT, "LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")}
        return subprocess.run([sys.executable, "-m", "gomail.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def config(self, directory: str, extra: str) -> str:
        path = os.path.join(directory, "gomail.toml")
        with open(path, "w") as f:
            f.write(f'dataDir = "{directory}/data"\n[plugins]\npath = ["{directory}"]\n{extra}')
        return path

    def test_list(self) -> None:
        """Every plugin found, whether enabled, its interfaces and its file."""
        directory = self.plugin_dir()
        path = self.write_plugin(directory, "deny_list", GOOD.format(name="deny_list"))
        result = self.gomail("plugins", "list", "--config", self.config(directory, "[plugins.deny_list]\n"))
        self.assertEqual(result.returncode, 0, result.stderr)
        rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if not line.startswith(" ")}
        self.assertEqual(rows["deny_list"][1:], ["yes", "ISMTPHook", path])
        self.assertEqual(rows["headers"][1:3], ["no", "-"])
        self.assertIn("Refuses senders of some domains.", result.stdout)

    def test_installed_package_drop_in(self) -> None:
        """A package on sys.path shipping gomail/plugins/<module>.py (no __init__.py) adds its plugins."""
        site = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(site, "gomail", "plugins"))
        path = self.write_plugin(os.path.join(site, "gomail", "plugins"), "vendor_deny", GOOD.format(name="vendor_deny"))
        env = {"PYTHONPATH": os.pathsep.join([_SOURCE_ROOT, site]), "LC_ALL": "C.UTF-8"}
        result = subprocess.run([sys.executable, "-m", "gomail.cli", "plugins", "list"], env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(path, result.stdout)

    def test_check_config_reports_a_plugin_error(self) -> None:
        """check-config loads the plugins too: a bad plugin setting exits 1 with one line."""
        directory = self.plugin_dir()
        result = self.gomail("check-config", self.config(directory, '[plugins.headers]\nremove = ["bad name"]\n'))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "gomail: plugin error: plugins.headers.remove[0]: "
                                        "'bad name' is not a header field name\n")

    def test_config_rejects_a_plugin_setting_that_is_no_table(self) -> None:
        """A plain value where a plugin's table belongs is an unknown key of the plugins section."""
        directory = self.plugin_dir()
        result = self.gomail("check-config", self.config(directory, "headers = 1\n"))
        self.assertEqual(result.returncode, 1)
        self.assertIn("plugins.headers: unknown key", result.stderr)




class LogRedactionTests(SynchronousTestCase):
    """What the start-up log line shows of a plugin's settings."""

    def test_secrets_and_urls_hidden_at_any_depth(self) -> None:
        """Secret-looking keys and URLs are shown as (set), in nested tables too; the rest as given."""
        from gomail.extension.wiring import _printable

        text = _printable({"domains": ["a.example"], "secret": "hunter2", "urls": ["https://h/t0ken"],
                           "servers": [{"host": "ldap.example", "password": "pw2"}]})
        self.assertNotIn("hunter2", text)
        self.assertNotIn("t0ken", text)
        self.assertNotIn("pw2", text)
        self.assertIn("domains=['a.example']", text)
        self.assertIn("'host': 'ldap.example'", text)
