"""
The Go relay's directDelivery and dkim keys (gomail.configdelivery): a seed
config.json carrying them loads as-is; what gomail cannot do yet, or
combinations that contradict each other, stop the start naming the key.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from gomail.configload import ConfigError, describe, load_config


class DirectDeliveryConfigTests(SynchronousTestCase):
    """Loading the keys."""

    def write(self, name: str, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_go_relay_json_loads(self) -> None:
        """A config.json with the Go relay's directDelivery and dkim objects loads, with its values."""
        path = self.write("config.json", json.dumps({
            "smtpPort": 2525, "directDelivery": {"enabled": True, "ehloDomain": "mail.example.com",
                                                 "insecureSkipVerify": False, "retryCount": 2},
            "dkim": {"enabled": False, "domain": "example.com", "selector": "mail",
                     "privateKeyPath": "keys/example.com/mail.private", "headersToSign": ["From", "To"],
                     "signatureExpiry": 86400}}))
        config = load_config(path, environ={})
        self.assertEqual((config.directDelivery.enabled, config.directDelivery.ehloDomain,
                          config.directDelivery.retryCount), (True, "mail.example.com", 2))
        self.assertEqual(config.dkim.headersToSign, ("From", "To"))
        self.assertIn("delivery: each domain's MX (directDelivery)", describe(config))

    def test_defaults(self) -> None:
        """The Go relay's defaults: retryCount 3, selector mail; off."""
        config = load_config(None, environ={})
        self.assertEqual((config.directDelivery.enabled, config.directDelivery.retryCount, config.dkim.selector),
                         (False, 3, "mail"))

    def test_contradictions_and_gaps_are_errors(self) -> None:
        """forwardSMTP with directDelivery, dkim.enabled without a signing domain, a bad DNS server: one line each."""
        for text, key in (
                ('forwardSMTP = true\nforwardHost = "s.example"\n[directDelivery]\nenabled = true\n',
                 "directDelivery.enabled"),
                ("[dkim]\nenabled = true\n", "dkim.domain"),
                ('[directDelivery]\ndnsServers = ["ns.example"]\n', "directDelivery.dnsServers")):
            error = self.assertRaises(ConfigError, load_config, self.write("gomail.toml", text), {})
            self.assertEqual(error.key, key)
            self.assertNotIn("\n", str(error))

    def test_dns_servers_forms(self) -> None:
        """Addresses with and without ports, IPv6 in brackets."""
        path = self.write("gomail.toml", '[directDelivery]\ndnsServers = ["192.0.2.53", "192.0.2.54:5353", '
                                         '"[2001:db8::53]:53", "2001:db8::54"]\n')
        self.assertEqual(len(load_config(path, environ={}).directDelivery.dnsServers), 4)


class RouteConfigTests(SynchronousTestCase):
    """[[routes]]: one domain through its own smarthost."""

    def write(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "gomail.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_routes_load(self) -> None:
        """A route's domain, host, port and credentials load; the password is a secret."""
        config = load_config(self.write('[[routes]]\ndomain = "partner.example"\nhost = "smtp.partner.example"\n'
                                        'port = 587\nusername = "u"\npassword = "route-secret"\n'), {})
        [route] = config.routes
        self.assertEqual((route.domain, route.host, route.port), ("partner.example", "smtp.partner.example", 587))

    def test_route_errors(self) -> None:
        """A local domain, a duplicate, a missing host: one line naming routes[N].<key>."""
        for text, key in (('[smtp]\nlocalDomains = ["example.com"]\n[[routes]]\ndomain = "example.com"\nhost = "h"\n',
                           "routes[0].domain"),
                          (('[[routes]]\ndomain = "a.example"\nhost = "h"\n[[routes]]\ndomain = "A.example."\n'
                            'host = "h"\n'), "routes[1].domain"),
                          ('[[routes]]\ndomain = "a.example"\n', "routes[0].host")):
            error = self.assertRaises(ConfigError, load_config, self.write(text), {})
            self.assertEqual(error.key, key)


class TLSPolicyConfigTests(SynchronousTestCase):
    """directDelivery.tlsPolicies: each domain once."""

    def test_duplicate_or_empty_domain(self) -> None:
        """The same domain twice (in any spelling) or none: one line naming the entry."""
        duplicate = ('[[directDelivery.tlsPolicies]]\ndomain = "Bank.Example"\nlevel = "verify"\n'
                     '[[directDelivery.tlsPolicies]]\ndomain = "bank.example."\nlevel = "none"\n')
        for text, key in ((duplicate, "directDelivery.tlsPolicies[1].domain"),
                          ('[[directDelivery.tlsPolicies]]\nlevel = "verify"\n', "directDelivery.tlsPolicies[0].domain")):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            path = os.path.join(directory, "gomail.toml")
            with open(path, "w") as f:
                f.write(text)
            error = self.assertRaises(ConfigError, load_config, path, {})
            self.assertEqual(error.key, key)
