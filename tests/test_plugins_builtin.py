"""
The built-in `headers` and `sender-policy` plugins, built from their
settings by the loader and run through the real SMTP protocol.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gomail.configschema import PluginSettings
from gomail.extension.loader import PluginError, load_plugins
from gomail.extension.runner import HookRunner
from gomail.extension.smtphooks import SMTPHooks
from gomail.interfaces import IHeaderFilter, ISMTPHook
from tests.smtphelpers import HarnessMixin, SMTPHarness, queued_id, replies


def with_plugins(h: SMTPHarness, *enabled: tuple[str, dict]) -> SMTPHarness:
    """The harness's server with these built-in plugins enabled, as the composition root wires them."""
    plugins = load_plugins(PluginSettings(enabled=enabled), h.clock, "mx.test", "/data")
    runner = HookRunner(h.clock, 5.0)
    h.server.hooks = SMTPHooks(runner, plugins.providing(ISMTPHook), plugins.providing(IHeaderFilter))
    return h


class SenderPolicyTests(HarnessMixin, SynchronousTestCase):
    """sender-policy: by sender domain, client network and recipient count."""

    def test_sender_domains(self) -> None:
        """A rejected domain gets 550 5.7.1, a deferred one 451 4.7.1, others 250."""
        h = with_plugins(self.harness(), ("sender-policy", {"rejectSenderDomains": ["spam.example"],
                                                            "deferSenderDomains": ["slow.example"]}))
        client = h.connect()
        client.send(b"EHLO client.test\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@SPAM.example>\r\n"),
                         b"550 5.7.1 <a@spam.example>: Sender refused by local policy\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@slow.example>\r\n"),
                         b"451 4.7.1 <a@slow.example>: Sender temporarily refused, try again later\r\n")
        self.assertEqual(client.send(b"MAIL FROM:<a@fine.example>\r\n"), b"250 2.1.0 Sender ok\r\n")

    def test_client_networks(self) -> None:
        """A client in rejectNetworks is refused at connect (554) and disconnected; others are greeted."""
        h = with_plugins(self.harness(), ("sender-policy", {"rejectNetworks": ["192.0.2.0/24"]}))
        refused = h.connect("192.0.2.9", greet=False)
        h.clock.advance(h.settings.greetingDelay)
        self.assertEqual(refused.take(), b"554 5.7.1 Access denied: Sender refused by local policy\r\n")
        self.assertTrue(refused.closed)
        h.connect("127.0.0.1")  # greeted (asserts the banner)

    def test_recipient_count(self) -> None:
        """Past maxRecipients, RCPT gets 452 4.5.3 and the message goes to the first ones only."""
        h = with_plugins(self.harness(), ("sender-policy", {"maxRecipients": 2}))
        client = h.connect()
        got = replies(client.send(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\n"
                                  b"RCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"))
        self.assertEqual(got[-1], b"452 4.5.3 Too many recipients for one message, send the rest separately")
        client.send(b"DATA\r\n")
        queue_id = queued_id(client.send(b"Subject: x\r\n\r\nhi\r\n.\r\n"))
        self.assertEqual(len(h.envelope(queue_id).recipients), 2)

    def test_bad_network(self) -> None:
        """A network that does not parse is named with its key and index."""
        error = self.assertRaises(PluginError, load_plugins, PluginSettings(
            enabled=(("sender-policy", {"rejectNetworks": ["10.0.0.0/8", "ten"]}),)), None, "h", "/d")
        self.assertEqual(str(error), "plugins.sender-policy.rejectNetworks[1]: 'ten' is not an IP network")


class HeadersPluginTests(HarnessMixin, SynchronousTestCase):
    """headers: removal as the message streams, additions by rule."""

    def test_remove_and_add(self) -> None:
        """X-Mailer is removed; a rule's header is added with its value filled in."""
        h = with_plugins(self.harness(), ("headers", {
            "remove": ["X-Mailer"],
            "add": [{"name": "X-Relayed-By", "value": "gomail {queue_id} for {client_address}"}]}))
        client = h.connect()
        client.start_transaction()
        queue_id = queued_id(client.send(b"X-Mailer: Bulk 1.0\r\nSubject: s\r\n\r\nbody\r\n.\r\n"))
        content = h.content(queue_id)
        self.assertTrue(content.startswith(f"X-Relayed-By: gomail {queue_id} for 127.0.0.1\r\n".encode()))
        self.assertNotIn(b"X-Mailer", content)
        self.assertTrue(content.endswith(b"Subject: s\r\n\r\nbody\r\n"))

    def test_rule_conditions(self) -> None:
        """A rule for authenticated senders or other sender domains adds nothing to this message."""
        h = with_plugins(self.harness(), ("headers", {"add": [
            {"name": "X-Auth", "value": "yes", "authenticated": True},
            {"name": "X-Other", "value": "yes", "senderDomains": ["other.example"]},
            {"name": "X-Org", "value": "{helo}", "senderDomains": ["example.org"]}]}))
        client = h.connect()
        client.start_transaction()
        content = h.content(queued_id(client.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")))
        self.assertTrue(content.startswith(b"X-Org: client.test\r\nReceived: "), content[:60])

    def test_nothing_to_do_is_an_error(self) -> None:
        """An empty [plugins.headers] is a mistake, said as such."""
        error = self.assertRaises(PluginError, load_plugins, PluginSettings(enabled=(("headers", {}),)),
                                  None, "h", "/d")
        self.assertEqual(str(error), "plugins.headers: nothing to do: give remove or add")

    def test_bad_rule(self) -> None:
        """A rule's unknown key and a multi-line value are named with the rule's index."""
        for rule, expected in (({"name": "X-A", "value": "v", "when": 1}, "plugins.headers.add[0].when: unknown key"),
                               ({"name": "X-A", "value": "a\nb"}, "plugins.headers.add[0].value: must be one line")):
            error = self.assertRaises(PluginError, load_plugins,
                                      PluginSettings(enabled=(("headers", {"add": [rule]}),)), None, "h", "/d")
            self.assertEqual(str(error), expected)
