"""L{RelayPolicy} and L{parse_ip}: who may connect, and whom they may send to."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gomail.smtp.address import parse_path
from gomail.smtp.policy import RelayPolicy, local_domains, own_domain, parse_ip

DEFAULT_TRUSTED = ("127.0.0.0/8", "::1/128")


def policy(trusted=DEFAULT_TRUSTED, local=("example.com",), require_auth=False, allow_local_only=False):
    return RelayPolicy(trusted, local, require_auth=require_auth, allow_local_only=allow_local_only)


class ParseIPTests(SynchronousTestCase):
    """The client address as the policy sees it."""

    def test_ipv4(self):
        """A dotted quad parses to an IPv4Address."""
        self.assertEqual(parse_ip("203.0.113.5"), ipaddress.IPv4Address("203.0.113.5"))

    def test_ipv6(self):
        """An IPv6 address parses to an IPv6Address."""
        self.assertEqual(parse_ip("2001:db8::1"), ipaddress.IPv6Address("2001:db8::1"))

    def test_ipv4_mapped_unwrapped(self):
        """An IPv4-mapped IPv6 address (dual-stack listener) is the IPv4 address it carries."""
        self.assertEqual(parse_ip("::ffff:203.0.113.5"), ipaddress.IPv4Address("203.0.113.5"))
        self.assertEqual(parse_ip("::ffff:127.0.0.1"), ipaddress.IPv4Address("127.0.0.1"))

    def test_zone_id_dropped(self):
        """A link-local address with a zone id parses without it."""
        self.assertEqual(parse_ip("fe80::1%eth0"), ipaddress.IPv6Address("fe80::1"))

    def test_not_an_ip(self):
        """No host, an empty one, or a non-IP peer (UNIX socket path, name) is None."""
        for host in (None, "", "/run/gomail.sock", "localhost", "999.1.1.1"):
            self.assertIsNone(parse_ip(host), host)


class MayConnectTests(SynchronousTestCase):
    """security.allowLocalOnly."""

    def test_anyone_by_default(self):
        """Without allowLocalOnly, every client may connect."""
        p = policy()
        for host in ("203.0.113.5", "2001:db8::1", "127.0.0.1", None):
            self.assertTrue(p.may_connect(parse_ip(host)), host)

    def test_local_only(self):
        """With allowLocalOnly, only loopback (v4, v6, v4-mapped) and non-IP (UNIX socket) peers may connect."""
        p = policy(allow_local_only=True)
        for host in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", None):
            self.assertTrue(p.may_connect(parse_ip(host)), host)
        for host in ("203.0.113.5", "10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1", "0.0.0.0"):
            self.assertFalse(p.may_connect(parse_ip(host)), host)

    def test_local_only_ignores_trusted_networks(self):
        """allowLocalOnly is about loopback, not about trustedNetworks."""
        p = policy(trusted=("10.0.0.0/8",), allow_local_only=True)
        self.assertFalse(p.may_connect(parse_ip("10.1.2.3")))


class TrustTests(SynchronousTestCase):
    """smtp.trustedNetworks."""

    def test_default_loopback(self):
        """By default, IPv4 and IPv6 loopback are trusted and nothing else."""
        p = policy()
        self.assertTrue(p.is_trusted(parse_ip("127.0.0.1")))
        self.assertTrue(p.is_trusted(parse_ip("::1")))
        self.assertTrue(p.is_trusted(parse_ip("::ffff:127.0.0.1")))
        self.assertFalse(p.is_trusted(parse_ip("203.0.113.5")))
        self.assertFalse(p.is_trusted(parse_ip("2001:db8::1")))

    def test_unix_socket_trusted(self):
        """A non-IP peer (a UNIX socket) is trusted: only local processes can reach it."""
        self.assertTrue(policy(trusted=()).is_trusted(None))

    def test_custom_networks(self):
        """Networks given with host bits set are accepted (non-strict) and matched by prefix."""
        p = policy(trusted=("10.1.2.3/8", "2001:db8::/32"))
        self.assertTrue(p.is_trusted(parse_ip("10.200.0.1")))
        self.assertTrue(p.is_trusted(parse_ip("2001:db8:1::5")))
        self.assertFalse(p.is_trusted(parse_ip("11.0.0.1")))
        self.assertFalse(p.is_trusted(parse_ip("127.0.0.1")))

    def test_no_networks(self):
        """With no trusted networks, no IP client is trusted, not even loopback."""
        self.assertFalse(policy(trusted=()).is_trusted(parse_ip("127.0.0.1")))


class LocalDomainTests(SynchronousTestCase):
    """smtp.localDomains."""

    def test_configured_domains_canonical(self):
        """Configured local domains are canonicalised: case, a trailing dot, internationalised names."""
        p = policy(local=("Example.COM.", "mail.test", "Bücher.example"))
        for domain in ("example.com", "mail.test", "xn--bcher-kva.example"):
            self.assertTrue(p.is_local_domain(domain), domain)

    def test_asked_domains_are_canonical(self):
        """
        The policy compares the domain it is asked about as it is: addresses
        are canonicalised once, by parse_path, and nowhere else (a domain that
        is not canonical never reaches the policy from a client).
        """
        p = policy(local=("example.com",))
        for domain in ("EXAMPLE.com", "example.com."):
            self.assertFalse(p.is_local_domain(domain), domain)

    def test_trailing_dot_through_the_parser(self):
        """The tester's <relaytest@example.com.> is local once parsed; <relaytest@example.net.> is not."""
        p = policy(local=("example.com",))
        self.assertTrue(p.is_local_domain(parse_path(b"TO:<relaytest@Example.COM.>", b"TO", False).domain))
        self.assertFalse(p.may_relay(parse_ip("203.0.113.5"), False,
                                     parse_path(b"TO:<relaytest@example.net.>", b"TO", False).domain))

    def test_local_domains_include_the_hostname(self):
        """local_domains: the configured ones and the server's own name, canonical (Postfix's mydestination)."""
        self.assertEqual(local_domains(("Example.COM.",), "MX.Example.NET."), {"example.com", "mx.example.net"})
        self.assertEqual(local_domains((), "mx.test"), {"mx.test"})

    def test_own_domain_of_odd_hostnames(self):
        """A host name that cannot be a mail domain (an underscore) makes the own domain localhost."""
        self.assertEqual(own_domain("my_host"), "localhost")
        self.assertEqual(own_domain("Mx.Test."), "mx.test")
        self.assertEqual(local_domains(("example.com",), "my_host"), {"example.com", "localhost"})

    def test_subdomains_are_not_local(self):
        """A subdomain or a suffix-lookalike of a local domain is not local."""
        p = policy(local=("example.com",))
        for domain in ("sub.example.com", "badexample.com", "example.com.evil.test", "com", ""):
            self.assertFalse(p.is_local_domain(domain), domain)


class MayRelayTests(SynchronousTestCase):
    """The relay decision for one recipient."""

    def test_untrusted_to_remote(self):
        """An untrusted, unauthenticated client may not send to a non-local domain."""
        self.assertFalse(policy().may_relay(parse_ip("203.0.113.5"), False, "elsewhere.test"))

    def test_untrusted_to_local(self):
        """An untrusted client may send to a local domain."""
        self.assertTrue(policy().may_relay(parse_ip("203.0.113.5"), False, "example.com"))

    def test_trusted_to_remote(self):
        """A trusted client may send anywhere."""
        self.assertTrue(policy().may_relay(parse_ip("127.0.0.1"), False, "elsewhere.test"))
        self.assertTrue(policy().may_relay(None, False, "elsewhere.test"))

    def test_authenticated_to_remote(self):
        """An authenticated client may send anywhere, from any address."""
        self.assertTrue(policy().may_relay(parse_ip("203.0.113.5"), True, "elsewhere.test"))

    def test_no_local_domains(self):
        """Without local domains an untrusted client may send nowhere."""
        self.assertFalse(policy(local=()).may_relay(parse_ip("203.0.113.5"), False, "example.com"))

    def test_require_auth_is_recorded(self):
        """require_auth and allow_local_only are kept for the server to enforce at MAIL and at connect."""
        p = policy(require_auth=True, allow_local_only=True)
        self.assertEqual((p.require_auth, p.allow_local_only), (True, True))
