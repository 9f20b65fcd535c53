"""Tests for L{gomail.netaddr.parse_ip} and L{gomail.netaddr.ip_text}, the one parse of client addresses."""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from gomail.netaddr import ip_text, parse_ip


class ParseIPTests(SynchronousTestCase):
    """What counts as an IP address, and in which form."""

    def test_addresses(self) -> None:
        """IPv4 and IPv6 parse; IPv4-mapped IPv6 becomes IPv4; an IPv6 zone is dropped."""
        self.assertEqual(parse_ip("192.0.2.1"), ipaddress.ip_address("192.0.2.1"))
        self.assertEqual(parse_ip("2001:db8::1"), ipaddress.ip_address("2001:db8::1"))
        self.assertEqual(parse_ip("::ffff:192.0.2.1"), ipaddress.ip_address("192.0.2.1"))
        self.assertEqual(parse_ip("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))

    def test_not_addresses(self) -> None:
        """Names, empty values, a zone on IPv4 and anything over 64 characters are not addresses."""
        for text in (None, "", "mail.example.com", "1.2.3.4%junk", "1.2.3.4 ", "1" * 65, "::1" + " " * 70):
            self.assertIsNone(parse_ip(text), text)


class IPTextTests(SynchronousTestCase):
    """The canonical text of an address, as auth_http records and checks a Client-IP."""

    def test_canonical(self) -> None:
        """IPv6 is compressed and lower-case, IPv4-mapped IPv6 reads as IPv4, a zone is dropped."""
        self.assertEqual(ip_text("192.0.2.1"), "192.0.2.1")
        self.assertEqual(ip_text("2001:DB8:0:0::1"), "2001:db8::1")
        self.assertEqual(ip_text("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(ip_text("fe80::1%eth0"), "fe80::1")

    def test_not_addresses(self) -> None:
        """Whatever L{parse_ip} refuses has no text either."""
        for text in (None, "", "mail.example.com", "1.2.3.4%junk", "1" * 65):
            self.assertIsNone(ip_text(text), text)
