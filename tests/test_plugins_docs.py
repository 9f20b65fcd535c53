"""
The examples of docs/plugins.md work as written: each example file is
written out, the plugin is found and built by gomail's loader, and the
documented test file passes when run with trial, as a plugin author runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from gomail.testing import build_plugin, fake_message, fake_session
from tests.test_plugins import PluginDirectoryMixin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "plugins.md")


def examples() -> dict[str, str]:
    """The code blocks of docs/plugins.md marked `<!-- example: NAME -->`, by NAME."""
    with open(DOC) as f:
        text = f.read()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", text, re.DOTALL))


class DocsExampleTests(PluginDirectoryMixin, TestCase):
    """docs/plugins.md's plugins and test."""

    def write_examples(self) -> str:
        directory = self.plugin_dir()
        for name, code in examples().items():
            with open(os.path.join(directory, name), "w") as f:
                f.write(code)
        return directory

    def test_examples_exist(self) -> None:
        """The page has the plugin, the content-scanning plugin and the test it describes."""
        self.assertEqual(sorted(examples()), ["deny_freemail.py", "scan_tag.py", "test_deny_freemail.py"])

    def test_documented_test_passes(self) -> None:
        """The documented trial test of deny_freemail passes, run by trial in the plugin's directory."""
        directory = self.write_examples()
        env = {"PYTHONPATH": os.pathsep.join([directory, ROOT]), "PATH": os.environ.get("PATH", ""),
               "LC_ALL": "C.UTF-8"}
        result = subprocess.run([sys.executable, "-m", "twisted.trial", "--temp-directory",
                                 os.path.join(directory, "_trial_temp"), "test_deny_freemail"],
                                cwd=directory, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])
        self.assertIn("PASSED (successes=3)", result.stdout)

    async def test_scan_tag(self) -> None:
        """The content-scanning example refuses a message with the string and tags the others."""
        directory = self.write_examples()
        hook = build_plugin("scan_tag", {"needle": "EICAR"}, path=[directory])
        refused = await Deferred.fromCoroutine(hook.end_of_data(fake_session(), fake_message(b"x" * 3_000_000 + b"EICAR")))
        self.assertEqual((refused.code, refused.status), (554, "5.7.0"))
        tagged = await Deferred.fromCoroutine(hook.end_of_data(fake_session(), fake_message(b"Subject: ok\r\n\r\nhi\r\n")))
        self.assertEqual(tagged.headers, (("X-Scanned", "clean"),))
