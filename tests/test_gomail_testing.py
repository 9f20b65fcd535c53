"""
gomail.testing, the helpers plugin authors test with, used the way the
docs show: a plugin built from settings, hooks called directly with fake
sessions and messages, and a real SMTP server with the plugin enabled.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gomail.extension.loader import PluginError
from gomail.plugin import SMTPHook, accept, reject
from gomail.testing import SMTPTestServer, build_plugin, fake_message, fake_session


class Scanner(SMTPHook):
    """Refuses messages containing EICAR; tags the rest."""

    def end_of_data(self, session: Any, message: Any) -> Any:
        with message.open() as f:
            if b"EICAR" in f.read():
                return reject("Virus found", 554, "5.7.0")
        return accept({"X-Scanned": "clean"})


class TestingHelperTests(SynchronousTestCase):
    """The public helpers work as documented."""

    def test_build_plugin_checks_settings(self) -> None:
        """build_plugin builds a built-in plugin; bad settings raise what an operator would see."""
        hook = build_plugin("sender-policy", {"rejectSenderDomains": ["spam.example"]})
        self.assertIsNotNone(hook.mail_from(fake_session(), "a@spam.example"))
        self.assertIsNone(hook.mail_from(fake_session(), "a@ok.example"))
        error = self.assertRaises(PluginError, build_plugin, "sender-policy", {"maxRecipients": -1})
        self.assertIn("plugins.sender-policy.maxRecipients", str(error))

    def test_fake_session_and_message(self) -> None:
        """A hook called directly with a fake session and message."""
        hook = build_plugin("sender-policy", {"maxRecipients": 1})
        self.assertEqual(hook.rcpt_to(fake_session(recipients=["a@example.com"]), "b@example.com").code, 452)
        self.assertEqual(Scanner().end_of_data(fake_session(), fake_message(b"Subject: x\r\n\r\nEICAR\r\n")).code,
                         554)

    def test_smtp_test_server(self) -> None:
        """A real SMTP exchange: the refusal reaches the client, the accepted message is queued with its header."""
        server = SMTPTestServer(self.mktemp(), hooks=[("scanner", Scanner())])
        client = server.connect()
        self.assertEqual(client.take(), b"220 mx.test ESMTP gomail\r\n")
        self.assertIn(b"554 5.7.0 Virus found",
                      client.send_message("a@example.org", ["b@example.com"], b"Subject: v\r\n\r\nEICAR\r\n"))
        self.assertEqual(server.queued(), [])
        replies = client.send_message("a@example.org", ["b@example.com"], b"Subject: ok\r\n\r\n.hidden dot\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as", replies)
        [(envelope, content)] = server.queued()
        self.assertEqual(envelope.sender, "a@example.org")
        self.assertTrue(content.startswith(b"X-Scanned: clean\r\nReceived: "))
        self.assertTrue(content.endswith(b"\r\n.hidden dot\r\n"))
