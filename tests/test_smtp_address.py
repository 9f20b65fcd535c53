"""L{parse_path}: MAIL FROM / RCPT TO arguments and their ESMTP parameters."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gomail.smtp.address import AddressError, Path, parse_path


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

    def test_domain_lower_cased(self):
        """Path.domain is the domain lower-cased; the address keeps its case."""
        path = rcpt(b"TO:<Bob@Example.COM>")
        self.assertEqual((path.address, path.domain), ("Bob@Example.COM", "example.com"))

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
        """IPv4 and IPv6 address literals are valid domains."""
        self.assertEqual(rcpt(b"TO:<postmaster@[192.0.2.1]>").domain, "[192.0.2.1]")
        self.assertEqual(rcpt(b"TO:<postmaster@[IPv6:2001:db8::1]>").domain, "[ipv6:2001:db8::1]")

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

    def test_error_text(self):
        """An AddressError carries a reply text and is a ValueError."""
        error = self.assertRefused(rcpt, b"TO:<>", 501, "5.1.3")
        self.assertIsInstance(error, ValueError)
        self.assertEqual(str(error), error.text)


ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~",
               min_size=1, max_size=10)
LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")


class ParsePathPropertyTests(SynchronousTestCase):
    """Properties of parse_path over generated input."""

    @settings(max_examples=300, deadline=None)
    @given(st.lists(ATOM, min_size=1, max_size=4), st.lists(LABEL, min_size=1, max_size=4))
    def test_valid_addresses_round_trip(self, atoms, labels):
        """Every dot-atom@domain address parses to itself, for MAIL and RCPT."""
        address = ".".join(atoms) + "@" + ".".join(labels)
        self.assertEqual(mail(b"FROM:<" + address.encode() + b">"), Path(address, {}))
        self.assertEqual(rcpt(b"TO:<" + address.encode() + b">").domain, address.rpartition("@")[2].lower())

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
