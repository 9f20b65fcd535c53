"""
L{parse_path}: MAIL FROM / RCPT TO arguments and their ESMTP parameters, and
the canonical form of addresses and configured domains.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gomail.smtp.address import AddressError, Path, canonical_address, canonical_domain, parse_path


def mail(argument: bytes) -> Path:
    return parse_path(argument, b"FROM", allow_null=True)


def rcpt(argument: bytes) -> Path:
    return parse_path(argument, b"TO", allow_null=False)


class ParsePathTests(SynchronousTestCase):
    """Well-formed paths."""

    def test_simple(self):
        """FROM:<user@domain> gives the address and no parameters."""
        self.assertEqual(mail(b"FROM:<alice@example.org>"), Path("alice@example.org", {}))
        self.assertEqual(rcpt(b"TO:<bob@example.com>"), Path("bob@example.com", {}))

    def test_keyword_case_and_spacing(self):
        """The keyword is case-insensitive, and spaces after the colon are tolerated."""
        self.assertEqual(mail(b"from:<a@example.org>").address, "a@example.org")
        self.assertEqual(rcpt(b"To:  <b@example.com>").address, "b@example.com")

    def test_null_sender(self):
        """<> is the null reverse-path for MAIL."""
        self.assertEqual(mail(b"FROM:<>"), Path("", {}))
        self.assertEqual(mail(b"FROM:<>").domain, "")

    def test_domain_canonical(self):
        """
        The address's domain is lower-cased and loses one trailing dot; the
        local part keeps its case. Path.domain is that domain.
        """
        for written in (b"Bob@Example.COM", b"Bob@example.com.", b"Bob@EXAMPLE.COM."):
            path = rcpt(b"TO:<" + written + b">")
            self.assertEqual((path.address, path.domain), ("Bob@example.com", "example.com"), written)
        self.assertEqual(mail(b"FROM:<Alice@Example.ORG.>").address, "Alice@example.org")

    def test_postmaster(self):
        """<Postmaster> in any case is "postmaster" without a domain; with a domain it is an address."""
        for argument in (b"TO:<Postmaster>", b"TO:<POSTMASTER>", b"TO:<postmaster>"):
            self.assertEqual(rcpt(argument), Path("postmaster", {}))
            self.assertEqual(rcpt(argument).domain, "")
        self.assertEqual(rcpt(b"TO:<PostMaster@Example.COM.>").address, "PostMaster@example.com")

    def test_parameters(self):
        """Parameters are keyed upper-case; a parameter without a value maps to None."""
        path = mail(b"FROM:<a@example.org> size=1000 BODY=8BITMIME smtputf8")
        self.assertEqual(path.params, {"SIZE": "1000", "BODY": "8BITMIME", "SMTPUTF8": None})

    def test_source_route_ignored(self):
        """A source route is accepted and dropped (RFC 5321 4.1.2, C.)."""
        self.assertEqual(rcpt(b"TO:<@relay.example,@other.example:bob@example.com>").address, "bob@example.com")

    def test_quoted_local_part(self):
        """A quoted local part with spaces and escaped characters is accepted as written."""
        self.assertEqual(rcpt(b'TO:<"john doe"@example.com>').address, '"john doe"@example.com')
        self.assertEqual(rcpt(b'TO:<"a\\"b"@example.com>').address, '"a\\"b"@example.com')

    def test_address_literals(self):
        """IPv4 and IPv6 address literals are valid domains, written one way (IPv6 compressed, lower case)."""
        self.assertEqual(rcpt(b"TO:<postmaster@[192.0.2.1]>").domain, "[192.0.2.1]")
        self.assertEqual(rcpt(b"TO:<postmaster@[IPv6:2001:db8::1]>").domain, "[ipv6:2001:db8::1]")
        self.assertEqual(rcpt(b"TO:<postmaster@[ipv6:2001:DB8:0:0::1]>").address, "postmaster@[ipv6:2001:db8::1]")
        self.assertEqual(rcpt(b"TO:<a@[IPv6:::ffff:192.0.2.1]>").domain, "[ipv6:::ffff:c000:201]")

    def test_atom_characters(self):
        """All RFC 5322 atext characters are allowed in a dot-atom local part."""
        local = "!#$%&'*+-/=?^_`{|}~.a1"
        self.assertEqual(rcpt(b"TO:<" + local.encode() + b"@example.com>").address, local + "@example.com")

    def test_longest_local_part(self):
        """A 64-octet local part is accepted."""
        self.assertEqual(rcpt(b"TO:<" + b"a" * 64 + b"@example.com>").address, "a" * 64 + "@example.com")


class ParsePathErrorTests(SynchronousTestCase):
    """Malformed paths and what they answer."""

    def assertRefused(self, parse, argument, code, status):
        error = self.assertRaises(AddressError, parse, argument)
        self.assertEqual((error.code, error.status), (code, status), argument)
        return error

    def test_non_ascii(self):
        """Non-ASCII (we offer no SMTPUTF8) is 553 5.6.7, for both MAIL and RCPT."""
        self.assertRefused(mail, "FROM:<jürgen@example.org>".encode(), 553, "5.6.7")
        self.assertRefused(rcpt, "TO:<bob@exämple.com>".encode(), 553, "5.6.7")
        self.assertRefused(rcpt, b"TO:<bob@example.com> X=\xff", 553, "5.6.7")

    def test_wrong_or_missing_keyword(self):
        """A missing colon or the wrong keyword is 501 5.5.4."""
        for argument in (b"<a@example.org>", b"TO:<a@example.org>", b"FROM <a@example.org>", b""):
            self.assertRefused(mail, argument, 501, "5.5.4")
        self.assertRefused(rcpt, b"FROM:<a@example.org>", 501, "5.5.4")

    def test_angle_brackets(self):
        """A path without < or without > is 501 5.5.4."""
        for argument in (b"FROM:a@example.org", b"FROM:<a@example.org", b"FROM:"):
            self.assertRefused(mail, argument, 501, "5.5.4")

    def test_parameters_need_space(self):
        """Parameters glued to the closing > are 501 5.5.4."""
        self.assertRefused(mail, b"FROM:<a@example.org>SIZE=1", 501, "5.5.4")

    def test_bad_parameter_syntax(self):
        """A parameter that is not keyword[=value] is 501 5.5.4."""
        for params in (b"=1", b"SIZE=", b"SI_ZE=1", b"-X=1", b"SIZE=a=b"):
            self.assertRefused(mail, b"FROM:<a@example.org> " + params, 501, "5.5.4")

    def test_bad_sender(self):
        """A malformed reverse-path is 501 5.1.7."""
        for address in (b"plain", b"a@", b"@example.org", b"a@b@example.org", b"a b@example.org",
                        b".a@example.org", b"a.@example.org", b"a..b@example.org", b"a@exa_mple.org",
                        b"a@-example.org", b"a@example-.org", b"a@example..org", b'"unterminated@example.org'):
            self.assertRefused(mail, b"FROM:<" + address + b">", 501, "5.1.7")

    def test_bad_recipient(self):
        """A malformed forward-path is 501 5.1.3; so is the null path <>."""
        for address in (b"plain", b"a@", b"@example.com", b""):
            self.assertRefused(rcpt, b"TO:<" + address + b">", 501, "5.1.3")

    def test_local_part_too_long(self):
        """A local part over 64 octets is 501 (5.1.7 for MAIL, 5.1.3 for RCPT)."""
        self.assertRefused(mail, b"FROM:<" + b"a" * 65 + b"@example.org>", 501, "5.1.7")
        self.assertRefused(rcpt, b"TO:<" + b"a" * 65 + b"@example.com>", 501, "5.1.3")

    def test_path_too_long(self):
        """A path of 256 octets (brackets included) is accepted; one over is 501."""
        domain = b".".join([b"d" * 60] * 4) + b".example"  # 251 octets
        self.assertEqual(len(rcpt(b"TO:<ab@" + domain + b">").address), 254)  # 256 with <>
        self.assertRefused(rcpt, b"TO:<abc@" + domain + b">", 501, "5.1.3")
        self.assertRefused(mail, b"FROM:<abc@" + domain + b">", 501, "5.1.7")

    def test_label_too_long(self):
        """A domain label over 63 octets is refused."""
        self.assertRefused(rcpt, b"TO:<a@" + b"d" * 64 + b".example>", 501, "5.1.3")
        self.assertEqual(rcpt(b"TO:<a@" + b"d" * 63 + b".example>").domain, "d" * 63 + ".example")

    def test_bad_address_literals(self):
        """Address literals that are no IP address are 501 5.1.3 (5.1.7 for MAIL), as the tester's [300.1.1.1]."""
        for literal in (b"[300.1.1.1]", b"[1.2.3]", b"[1.2.3.4.5]", b"[01.2.3.4]", b"[1..2.3]", b"[.]",
                        b"[IPv6:2001:db8::g1]", b"[IPv6:1:2:3:4:5:6:7:8:9]", b"[IPv6:]", b"[IPv6:1.2.3.4]",
                        b"[IPv6:2001:db8:::1]", b"[]", b"[IPv4:1.2.3.4]", b"[example.com]"):
            self.assertRefused(rcpt, b"TO:<postmaster@" + literal + b">", 501, "5.1.3")
            self.assertRefused(mail, b"FROM:<a@" + literal + b">", 501, "5.1.7")

    def test_numeric_top_level_domain(self):
        """An IP address without brackets (an all-numeric top-level label) is no domain: 501 5.1.3."""
        for domain in (b"1.2.3.4", b"300.1.1.1", b"example.123"):
            self.assertRefused(rcpt, b"TO:<a@" + domain + b">", 501, "5.1.3")
        self.assertEqual(rcpt(b"TO:<a@123.example>").domain, "123.example")

    def test_one_trailing_dot(self):
        """Only one trailing dot (the root) is dropped; two, or a dot alone, are refused."""
        for domain in (b"example.com..", b".", b"example..com."):
            self.assertRefused(rcpt, b"TO:<a@" + domain + b">", 501, "5.1.3")

    def test_error_text(self):
        """An AddressError carries a reply text and is a ValueError."""
        error = self.assertRefused(rcpt, b"TO:<>", 501, "5.1.3")
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), error.text)


class CanonicalFormTests(SynchronousTestCase):
    """canonical_address (aliases, configured addresses) and canonical_domain (configured domains)."""

    def test_canonical_address(self):
        """A bare address gets the same canonical form as through RCPT."""
        self.assertEqual(canonical_address("Info@Example.COM."), "Info@example.com")
        self.assertEqual(canonical_address("a@[IPv6:2001:DB8::1]"), "a@[ipv6:2001:db8::1]")

    def test_canonical_address_refuses(self):
        """Anything but one mailbox is a ValueError (an AddressError)."""
        for text in ("", "info", "<info@example.com>", "a@b@example.com", "a@[300.1.1.1]", "jürgen@example.org",
                     "a@example.com..", " a@example.com"):
            self.assertRaises(ValueError, canonical_address, text)

    def test_canonical_domain(self):
        """A configured domain: lower case, no trailing dot, internationalised names in A-labels."""
        self.assertEqual(canonical_domain("Example.COM."), "example.com")
        self.assertEqual(canonical_domain(" mail.test "), "mail.test")
        self.assertEqual(canonical_domain("Bücher.Example"), "xn--bcher-kva.example")
        self.assertEqual(canonical_domain("bücher.example."), "xn--bcher-kva.example")
        self.assertEqual(canonical_domain("[192.0.2.1]"), "[192.0.2.1]")

    def test_canonical_domain_refuses(self):
        """What can never be the domain of a parsed address is a ValueError."""
        for text in ("", ".", "exa_mple.com", "-example.com", "example..com", "user@example.com", "1.2.3.4",
                     "a" * 64 + ".example", "bü cher.example"):
            self.assertRaises(ValueError, canonical_domain, text)


ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~",
               min_size=1, max_size=10)
LABEL = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?\Z")
#: A top-level label: never all digits (RFC 3696 2).
TOP_LABEL = st.from_regex(r"\A[a-zA-Z]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?\Z")


class ParsePathPropertyTests(SynchronousTestCase):
    """Properties of parse_path over generated input."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(ATOM, min_size=1, max_size=4), st.lists(LABEL, max_size=3), TOP_LABEL, st.booleans())
    def test_valid_addresses_canonical(self, atoms, labels, top, root_dot):
        """
        Every dot-atom@domain address parses, for MAIL and RCPT, to its local
        part as given and its domain lower-cased without the root's dot.
        """
        local, domain = ".".join(atoms), ".".join([*labels, top])
        address = local + "@" + domain + ("." if root_dot else "")
        expected = local + "@" + domain.lower()
        self.assertEqual(mail(b"FROM:<" + address.encode() + b">"), Path(expected, {}))
        path = rcpt(b"TO:<" + address.encode() + b">")
        self.assertEqual((path.address, path.domain), (expected, domain.lower()))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=80))
    def test_canonical_is_a_fixed_point(self, argument):
        """Whatever parses, its canonical address parses again to itself: there is one form."""
        for parse, keyword in ((mail, b"FROM:<"), (rcpt, b"TO:<")):
            try:
                address = parse(keyword + argument + b">").address
            except AddressError:
                continue
            self.assertEqual(parse(keyword + address.encode() + b">").address, address)
            if "@" in address:
                self.assertEqual(canonical_address(address), address)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.integers(0, 999), min_size=1, max_size=6))
    def test_ipv4_literals(self, octets):
        """A dotted literal is accepted exactly when it is four octets of 0-255, and is kept as written."""
        literal = ".".join(str(o) for o in octets)
        argument = b"TO:<a@[" + literal.encode() + b"]>"
        if len(octets) == 4 and all(o <= 255 for o in octets):
            self.assertEqual(rcpt(argument).domain, "[" + literal + "]")
        else:
            error = self.assertRaises(AddressError, rcpt, argument)
            self.assertEqual((error.code, error.status), (501, "5.1.3"))

    @settings(max_examples=200, deadline=None)
    @given(st.ip_addresses(v=6))
    def test_ipv6_literals(self, ip):
        """Every IPv6 address, written in any case, is accepted and written compressed in lower case."""
        for written in (ip.exploded.upper(), ip.compressed):
            self.assertEqual(rcpt(b"TO:<a@[IPv6:" + written.encode() + b"]>").domain, f"[ipv6:{ip.compressed}]")

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=80))
    def test_never_crashes(self, argument):
        """Any bytes give a Path or an AddressError with a 5xx reply, never another exception."""
        for parse, keyword in ((mail, b"FROM:"), (rcpt, b"TO:")):
            for candidate in (argument, keyword + argument, keyword + b"<" + argument):
                try:
                    path = parse(candidate)
                except AddressError as e:
                    self.assertIn(e.code, (501, 553, 555))
                    self.assertRegex(e.status, r"^5\.\d\.\d$")
                else:
                    self.assertIsInstance(path.address, str)
                    self.assertTrue(path.address.isascii())
                    self.assertNotRegex(path.address, r"[\x00-\x1f\x7f<> ]" if '"' not in path.address
                                        else r"[\x00-\x1f\x7f]")
                    self.assertFalse(path.domain.endswith("."), path.domain)
                    self.assertEqual(path.domain, path.domain.lower())
