"""
Plugins in a real twistd, the way an operator installs them: a plugin file in
a directory named by plugins.path, enabled by its table. One plugin module
holds a delivery agent for one domain (standing in for an HTTP mail API), a
delivery observer and a contributed listener; a real smtplib client sends
through gomail.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from gomail.delivery.router import Router
from gomail.spool.envelope import Recipient
from tests.gomailprocess import GomailNode
from tests.processes import free_port, poll

PLUGIN = '''
import json, os
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer
from gomail.interfaces import IDeliveryObserver, IRoutedDeliveryAgent, IServiceProvider
from gomail.plugin import plugin


class Hello(Protocol):
    def connectionMade(self):
        self.transport.write(b"hello from a plugin\\r\\n")
        self.transport.loseConnection()


@implementer(IRoutedDeliveryAgent, IDeliveryObserver, IServiceProvider)
class MailAPI:
    name = "mail-api"

    def __init__(self, settings, context):
        self.domains = settings.texts("domains")
        self.out = settings.text("out")
        self.listen = settings.text("listen")

    def deliver(self, envelope, message_path, recipients):
        with open(message_path, "rb") as f:
            content = f.read()
        with open(os.path.join(self.out, "api-" + envelope.id), "wb") as f:
            f.write(json.dumps([r.address for r in recipients]).encode() + b"\\n" + content)
        return succeed({r.address: (250, "2.0.0 accepted by the API") for r in recipients})

    def delivery_event(self, event):
        with open(os.path.join(self.out, "events.jsonl"), "a") as f:
            f.write(json.dumps(event.to_json()) + "\\n")

    def services(self, context):
        return [StreamServerEndpointService(serverFromString(context.reactor, self.listen),
                                            Factory.forProtocol(Hello))]


mail_api = plugin("mail_api", MailAPI, "Delivers some domains to an API")
'''

CONFIG = """
dataDir = "{data}"
smtpPort = {port}
enableHealthCheck = false
[smtp]
localDomains = ["example.com"]
verifyRecipients = false
[security]
requireAuth = false
allowLocalOnly = true
[nginxAuth]
enabled = false
[plugins]
path = ["{plugins}"]
[plugins.mail_api]
domains = ["api.example"]
out = "{out}"
listen = "tcp:{hello}:interface=127.0.0.1"
"""


class RouterTests(TestCase):
    """The router with a plugin's agent."""

    def test_plugin_domain_first(self) -> None:
        """Recipients of a plugin's domain go to its agent; the rest as before (local here)."""
        local, api = object(), object()
        router = Router(local, routes=[("API.example", api)])  # type: ignore[arg-type]
        groups = router.route([Recipient("a@api.example"), Recipient("b@example.com"), Recipient("c@api.example")])
        self.assertEqual([(agent, [r.address for r in rs]) for agent, rs in groups],
                         [(api, ["a@api.example", "c@api.example"]), (local, ["b@example.com"])])


class PluginProcessTests(TestCase):
    """A real twistd with a plugin from a plugin directory."""

    timeout = 60

    def test_delivery_agent_observer_and_service(self) -> None:
        """Mail for the plugin's domain reaches its agent, the rest a Maildir; events are told; its listener answers."""
        workdir = os.path.abspath(self.mktemp())
        plugins, out = os.path.join(workdir, "plugins"), os.path.join(workdir, "out")
        os.makedirs(plugins)
        os.makedirs(out)
        with open(os.path.join(plugins, "mail_api_test.py"), "w") as f:
            f.write(PLUGIN)
        port, hello = free_port(), free_port()
        node = GomailNode(self, CONFIG, workdir=workdir, port=port, hello=hello, plugins=plugins, out=out)

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.sendmail("alice@example.org", ["bob@api.example", "carol@example.com"],
                                b"Subject: routed\r\n\r\nhello\r\n")

        def greeting() -> bytes:
            with socket.create_connection(("127.0.0.1", hello), timeout=10) as s:
                return s.recv(100)

        def events() -> list[dict]:
            path = os.path.join(out, "events.jsonl")
            if not os.path.exists(path):
                return []
            with open(path) as f:
                return [json.loads(line) for line in f]

        async def run() -> None:
            await node.start()
            self.assertIn(b"plugin mail_api loaded from " + plugins.encode(), node.output)
            self.assertEqual(await deferToThread(greeting), b"hello from a plugin\r\n")
            await deferToThread(send)
            await poll(reactor, lambda: len([e for e in events() if e["event"] == "delivered"]) == 2)
            [api_file] = [name for name in os.listdir(out) if name.startswith("api-")]
            with open(os.path.join(out, api_file), "rb") as f:
                recipients, content = f.read().split(b"\n", 1)
            self.assertEqual(json.loads(recipients), ["bob@api.example"])
            self.assertIn(b"Subject: routed", content)
            kinds = sorted((e["event"], e["recipient"]) for e in events())
            self.assertEqual(kinds, [("delivered", "bob@api.example"), ("delivered", "carol@example.com"),
                                     ("queued", None)])
            maildir = os.path.join(node.data, "spool", "mailbox", "carol@example.com", "new")
            self.assertEqual(len(os.listdir(maildir)), 1)
            await node.stop_cleanly()
        return ensureDeferred(run())
