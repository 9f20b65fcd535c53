"""
The nginx auth_http endpoint (PROTOCOLS.md): every request header case, what
the answer's headers say, and that nothing but a complete success ever carries
C{Auth-Status: OK}. Requests go as raw HTTP through the listener's real
site (L{gomail.web.authapp}: the peer check, the path, the answerer) on a
StringTransport and a Clock.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from types import SimpleNamespace
from urllib.parse import quote

import pyotp
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gomail.auth.authlog import AuthLog
from gomail.auth.backends import BackendRouter
from gomail.auth.records import BlacklistEntry
from gomail.configload import load_config
from gomail.configschema import Backend, NginxAuthSettings
from gomail.servicekit import ListeningService
from gomail.state.memory import MemoryStateStore
from gomail.web.authapp import auth_http_site
from gomail.web.authhttp import AuthHTTPAnswerer
from gomail.web.http import PeerAccess
from gomail.web.service import HTTPInputs, build_http
from tests.authtesting import MemoryUsers, SyncVerifier, authenticator, portal_for
from tests.test_smtp_auth import BrokenStore
from tests.webtesting import WireBrowser

T0 = 1_700_000_000.0  # 20 s into a TOTP step
SHARED = b"nginx-shared-key"
TOTP_SECRET = pyotp.random_base32()
URL = "http://gomail.test/api/auth"
BACKENDS = (Backend(protocol="imap", address="192.0.2.10", port=143),
            Backend(protocol="pop3", address="192.0.2.11", port=110),
            Backend(protocol="smtp", address="192.0.2.12", port=25))
FAILURE = "Invalid login or password"
TEMPORARY = "Temporary authentication failure, try again later"
REFUSED = "Invalid authentication request"


def escape(text: str) -> bytes:
    """What nginx sends for C{text}: UTF-8, with space, %, control and non-ASCII bytes %-escaped."""
    return quote(text, safe="!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


class ResolvingReactor(MemoryReactorClock):
    """A MemoryReactorClock whose C{resolve} answers from C{names} (a missing name fails)."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__()
        self.names = names

    def resolve(self, name, timeout=(1,)):
        if name in self.names:
            return succeed(self.names[name])
        return fail(DNSLookupError(name))


class RaisingRouter:
    """A router that breaks after the credentials were found good."""

    async def pick(self, protocol, user, client, assignment=None):
        raise RuntimeError("router bug")


class RaisingAudit:
    """An audit log whose C{record} breaks."""

    def record(self, entry):
        raise RuntimeError("audit bug")


class AuthHTTPMixin:
    """An auth_http tree over memory users, a memory state store and IP backends, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.users = MemoryUsers()
        self.users.add("alice", "s3cret")
        self.users.add("tom", "pass", totp_secret=TOTP_SECRET, totp_enabled=True)
        self.users.add("pat", "pinned", backend="198.51.100.7:1143")
        self.state = MemoryStateStore(self.clock)
        self.verifier = SyncVerifier()
        self.audit = AuthLog(None, self.clock, 30)
        self.router = BackendRouter(BACKENDS, "hash", MemoryReactorClock(), interval=0)
        self.build()

    def build(self, settings: NginxAuthSettings | None = None, *, state=None, router=None, audit=None,
              peer: str | None = None, **overrides) -> None:
        """(Re)build the tree; C{overrides} are NginxAuthSettings fields."""
        self.settings = settings or NginxAuthSettings(sharedSecret=SHARED.decode(), **overrides)
        self.auth = authenticator(self.clock, state or self.state, self.users, self.verifier)
        self.resource = AuthHTTPAnswerer(self.settings, portal_for(self.auth), router or self.router, self.clock,
                                         audit or self.audit, timer=self.clock.seconds)
        self.factory = auth_http_site(self.resource, self.settings.path, PeerAccess(self.settings.allowFrom),
                                      self.clock, self.settings.maxRequestBytes, self.settings.requestTimeout)
        self.browser = WireBrowser(self.factory, peer)

    def ask(self, user: str | bytes = "alice", password: str | bytes = "s3cret", protocol: bytes = b"imap",
            attempt: bytes | None = b"1", method: bytes | None = b"plain", client_ip: bytes | None = b"192.0.2.1",
            secret: bytes | None = SHARED, omit: tuple[bytes, ...] = (), url: str = URL, **extra: list[bytes]):
        """One nginx request; str credentials are escaped as nginx does, bytes sent as they are."""
        headers: dict[bytes, list[bytes]] = {
            b"Auth-Method": [method], b"Auth-User": [escape(user) if isinstance(user, str) else user],
            b"Auth-Pass": [escape(password) if isinstance(password, str) else password],
            b"Auth-Protocol": [protocol], b"Auth-Login-Attempt": [attempt], b"Client-IP": [client_ip],
            b"X-Auth-Key": [secret]}
        for name, values in extra.items():
            headers[name.replace("_", "-").encode()] = values
        headers = {name: values for name, values in headers.items()
                   if name not in omit and values is not None and None not in values}
        return self.browser.get(url, headers=headers)

    def assertOK(self, answer, server: str, port: int, password: str | None) -> None:
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual(answer.header("Auth-Server"), server)
        self.assertEqual(str(ipaddress.ip_address(answer.header("Auth-Server"))), server)
        self.assertEqual(answer.header("Auth-Port"), str(port))
        self.assertEqual(answer.header("Auth-Pass"), password)
        self.assertEqual(answer.header("Auth-Wait"), None)

    def assertNotOK(self, answer) -> None:
        statuses = [v.strip().lower() for v in answer.auth_headers().get(b"auth-status", [])]
        self.assertEqual(len(statuses), 1, answer.auth_headers())
        self.assertNotEqual(statuses[0], b"ok")
        self.assertNotIn(b"auth-server", answer.auth_headers())
        self.assertNotIn(b"auth-pass", answer.auth_headers())

    def assertRefused(self, answer, text: str = REFUSED) -> None:
        """A request nginx would not send: a refusal and no Auth-Wait, so nginx closes."""
        self.assertNotOK(answer)
        self.assertEqual(answer.header("Auth-Status"), text)
        self.assertEqual(answer.header("Auth-Wait"), None)

    def assertTemporary(self, answer, protocol: str = "imap") -> None:
        self.assertNotOK(answer)
        self.assertEqual(answer.header("Auth-Status"), TEMPORARY)
        self.assertEqual(answer.header("Auth-Wait"), "2")
        self.assertEqual(answer.header("Auth-Error-Code"), "454 4.7.0" if protocol == "smtp" else None)

    def totp(self) -> str:
        return pyotp.TOTP(TOTP_SECRET).at(self.clock.seconds())

    def wrong_totp(self) -> str:
        """Six digits that are no valid code now (nor one step either side)."""
        valid = {pyotp.TOTP(TOTP_SECRET).at(self.clock.seconds() + 30 * step) for step in (-1, 0, 1)}
        return next(code for code in ("000000", "111111", "222222", "333333") if code not in valid)


class RequestHeaderTests(AuthHTTPMixin, SynchronousTestCase):
    """Which request header combinations are served and which refused."""

    def test_each_protocol(self) -> None:
        """plain logins over imap, pop3 and smtp go to that protocol's backend."""
        for protocol, server, port in ((b"imap", "192.0.2.10", 143), (b"pop3", "192.0.2.11", 110),
                                       (b"smtp", "192.0.2.12", 25)):
            self.assertOK(self.ask(protocol=protocol), server, port, "s3cret")

    def test_protocol_case_and_space(self) -> None:
        """The protocol name is compared without case or surrounding space."""
        self.assertOK(self.ask(protocol=b" IMAP "), "192.0.2.10", 143, "s3cret")

    def test_other_protocols_refused(self) -> None:
        """Any other Auth-Protocol, or none, is refused with an error status before any check."""
        for protocol in (b"sieve", b"http", b"imap4", b"", b"imap,smtp"):
            self.assertRefused(self.ask(protocol=protocol), "Unsupported protocol")
        self.assertRefused(self.ask(omit=(b"Auth-Protocol",)), "Unsupported protocol")
        self.assertEqual(self.users.lookups, 0)

    def test_method_plain(self) -> None:
        """Auth-Method plain (any case) is served, and a missing Auth-Method counts as plain."""
        self.assertOK(self.ask(method=b"PLAIN"), "192.0.2.10", 143, "s3cret")
        self.assertOK(self.ask(method=None), "192.0.2.10", 143, "s3cret")

    def test_unsupported_methods(self) -> None:
        """apop, cram-md5 (and external, none) get a clear 'unsupported' status and no check."""
        for method in (b"apop", b"cram-md5", b"CRAM-MD5", b"external", b"none"):
            answer = self.ask(method=method, Auth_Salt=[b"<1896.697170952@dbc.mtview.ca.us>"])
            self.assertRefused(answer, "Unsupported authentication method, use plain")
        self.assertEqual(self.users.lookups, 0)

    def test_missing_credentials(self) -> None:
        """A request without Auth-User or without Auth-Pass is refused."""
        for header in (b"Auth-User", b"Auth-Pass"):
            answer = self.ask(omit=(header,))
            self.assertRefused(answer)
            self.assertEqual(answer.code, 400)
        self.assertEqual(self.users.lookups, 0)

    def test_empty_password_is_a_failure(self) -> None:
        """An empty Auth-Pass is present: it is checked, and fails like any wrong password."""
        self.assertEqual(self.ask(password="").header("Auth-Status"), FAILURE)

    def test_duplicated_headers(self) -> None:
        """A repeated Auth-User, Auth-Pass, Auth-Protocol, Auth-Method or Client-IP is refused."""
        for name, values in ((b"Auth-User", [b"alice", b"bob"]), (b"Auth-Pass", [b"s3cret", b"s3cret"]),
                             (b"Auth-Protocol", [b"imap", b"imap"]), (b"Auth-Method", [b"plain", b"plain"]),
                             (b"Client-IP", [b"192.0.2.1", b"192.0.2.2"])):
            self.assertRefused(self.ask(**{name.decode().replace("-", "_"): values}))
        self.assertEqual(self.users.lookups, 0)

    def test_bad_client_ip(self) -> None:
        """A Client-IP that is not one IP address is refused."""
        for value in (b"999.1.2.3", b"localhost", b"192.0.2.1, 192.0.2.2", b"", b"192.0.2.0/24"):
            self.assertRefused(self.ask(client_ip=value))
        self.assertEqual(self.users.lookups, 0)

    def test_client_ip_required(self) -> None:
        """
        What the tester sent (issue 14, item 10): the shared secret and alice's
        right password but no Client-IP. Refused like any malformed request
        (400, the refusal text, no Auth-Wait), before any lookup or bcrypt,
        and audited as refused; so a request can never skip the blacklist or
        the per-IP lockout by leaving out the address.
        """
        for protocol in (b"imap", b"pop3", b"smtp"):
            answer = self.ask(client_ip=None, protocol=protocol)
            self.assertRefused(answer)
            self.assertEqual(answer.code, 400)
            self.assertEqual(answer.header("Auth-Error-Code"), None)
        self.assertEqual((self.users.lookups, self.verifier.hashes), (0, []))
        self.assertEqual([(e.user, e.result, e.reason) for e in self.audit.buffer], [("", "refused", "bad-request")] * 3)

    def test_client_ip_ipv6(self) -> None:
        """An IPv6 Client-IP is accepted and normalised."""
        self.assertOK(self.ask(client_ip=b"2001:DB8::0:1"), "192.0.2.10", 143, "s3cret")
        self.assertEqual([e.client_ip for e in self.audit.buffer], ["2001:db8::1"])

    def test_blacklisted_client_ip(self) -> None:
        """Client-IP is what the blacklist checks: a blacklisted client fails even with the right password."""
        self.users.blacklist.append(BlacklistEntry("203.0.113.0/24", None))
        self.assertEqual(self.ask(client_ip=b"203.0.113.5").header("Auth-Status"), FAILURE)

    def test_head(self) -> None:
        """HEAD is answered like GET (nginx only reads headers)."""
        answer = self.browser.request("HEAD", URL, headers={
            b"Auth-User": [b"alice"], b"Auth-Pass": [b"s3cret"], b"Auth-Protocol": [b"imap"],
            b"Client-IP": [b"192.0.2.1"], b"X-Auth-Key": [SHARED]})
        self.assertOK(answer, "192.0.2.10", 143, "s3cret")

    def test_other_paths(self) -> None:
        """Only the configured path is the endpoint; elsewhere is a 404 with no Auth-* header."""
        for url in ("http://gomail.test/", "http://gomail.test/api", "http://gomail.test/auth"):
            answer = self.ask(url=url)
            self.assertEqual(answer.code, 404)
            self.assertEqual(answer.auth_headers(), {})


class EscapingTests(AuthHTTPMixin, SynchronousTestCase):
    """nginx URL-escapes the credentials once: gomail decodes them exactly once."""

    def test_decoded_once(self) -> None:
        """p%25w%20d is the password 'p%w d' (and goes to the backend as that)."""
        self.users.add("dora", "p%w d")
        self.assertOK(self.ask("dora", b"p%25w%20d"), "192.0.2.10", 143, "p%w d")

    def test_not_decoded_twice(self) -> None:
        """%2525 is '%25', not '%': a second decoding would let the wrong password in."""
        self.users.add("eve", "x%25y")
        self.users.add("fay", "x%y")
        self.assertOK(self.ask("eve", b"x%2525y"), "192.0.2.10", 143, "x%25y")
        self.assertEqual(self.ask("fay", b"x%2525y").header("Auth-Status"), FAILURE)

    def test_user_decoded(self) -> None:
        """Auth-User is decoded too (and canonicalised by the checker)."""
        self.assertOK(self.ask(b"%41lice", "s3cret"), "192.0.2.10", 143, "s3cret")

    def test_utf8(self) -> None:
        """Escaped UTF-8 credentials are decoded as UTF-8."""
        self.users.add("j\u00fcrgen", "gr\u00fc\u00dfe")
        self.assertOK(self.ask("j\u00fcrgen", "gr\u00fc\u00dfe"), "192.0.2.10", 143, "gr\u00fc\u00dfe")

    def test_not_utf8_or_too_long(self) -> None:
        """Credentials that are not UTF-8 once decoded, or longer than 1024 characters, are refused."""
        self.assertRefused(self.ask(b"alice", b"%ff%fe"))
        self.assertRefused(self.ask(b"%c3", b"s3cret"))
        self.assertRefused(self.ask("alice", "x" * 1025))
        self.assertEqual(self.users.lookups, 0)


class ReflectionTests(AuthHTTPMixin, SynchronousTestCase):
    """Nothing a client typed comes back in a response header."""

    USER = "zqx-user-7731"
    PASSWORD = "zqx-pass-4410"

    def assertNoEcho(self, answer, *secrets: bytes) -> None:
        lines = answer.raw_headers()
        for name, value in lines:
            for secret in secrets:
                self.assertNotIn(secret.lower(), name.lower() + b": " + value.lower())
            for byte in value:
                self.assertFalse(byte < 0x20 or byte == 0x7f, (name, value))
        for secret in secrets:  # an answer at the HTTP level has a JSON body: it names no input either
            self.assertNotIn(secret.lower(), answer.body.lower())

    def test_crlf_in_user(self) -> None:
        """An escaped CR/LF in Auth-User cannot add a header: one Auth-Status, and it is not OK."""
        user = "evil\r\nAuth-Status: OK\r\nAuth-Server: 203.0.113.66\r\n"
        for protocol in (b"imap", b"smtp"):
            answer = self.ask(user, "s3cret", protocol=protocol)
            self.assertNotOK(answer)
            self.assertEqual(answer.header("Auth-Status"), FAILURE)
            self.assertNoEcho(answer, b"evil", b"203.0.113.66")

    def test_control_characters_in_user(self) -> None:
        """NUL, TAB, ESC and DEL in Auth-User, escaped or raw, are never reflected."""
        for user in ("ev\x00il", "ev\til", "ev\x1b[2Jil", "ev\x7fil", b"ev\til", b"ev\x01il"):
            answer = self.ask(user, "s3cret")
            self.assertNotOK(answer)
            self.assertNoEcho(answer, b"ev")

    def test_nothing_echoed(self) -> None:
        """Failures, refusals and temporary answers never contain the user name or password."""
        self.users.add(self.USER, "right")
        cases = [{}, {"password": self.PASSWORD + "x"}, {"method": b"apop"}, {"protocol": b"sieve"},
                 {"secret": b"wrong"}, {"client_ip": b"nope"}, {"omit": (b"Auth-Pass",)}]
        for case in cases:
            answer = self.ask(**{"user": self.USER, "password": self.PASSWORD, **case})
            self.assertNotOK(answer)
            self.assertNoEcho(answer, self.USER.encode(), self.PASSWORD.encode())
        self.build(state=BrokenStore())
        answer = self.ask(self.USER, self.PASSWORD)
        self.assertTemporary(answer)
        self.assertNoEcho(answer, self.USER.encode(), self.PASSWORD.encode())

    def test_success_does_not_echo_user(self) -> None:
        """A success names the backend and the password for it, never the user name."""
        answer = self.ask()
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertNotIn(b"auth-user", answer.auth_headers())
        self.assertNoEcho(answer, b"alice")

    def test_control_characters_in_password_never_sent(self) -> None:
        """A good password with a control character logs in, but is not copied into Auth-Pass."""
        self.users.add("gil", "pa\r\nss")
        answer = self.ask("gil", "pa\r\nss")
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual(answer.header("Auth-Pass"), None)
        self.assertNoEcho(answer)


class SuccessTests(AuthHTTPMixin, SynchronousTestCase):
    """What a success tells nginx."""

    def test_success(self) -> None:
        """OK, an IP-literal Auth-Server, Auth-Port and Auth-Pass; no Auth-Wait or error code."""
        answer = self.ask(protocol=b"smtp")
        self.assertOK(answer, "192.0.2.12", 25, "s3cret")
        self.assertEqual(answer.header("Auth-Error-Code"), None)
        self.assertEqual(answer.code, 200)

    def test_totp_code_stripped(self) -> None:
        """A TOTP user logs in with password+code; Auth-Pass is the password alone."""
        self.assertOK(self.ask("tom", "pass" + self.totp()), "192.0.2.10", 143, "pass")

    def test_totp_code_once(self) -> None:
        """The same TOTP code is not accepted twice."""
        code = self.totp()
        self.assertEqual(self.ask("tom", "pass" + code).header("Auth-Status"), "OK")
        self.assertEqual(self.ask("tom", "pass" + code).header("Auth-Status"), FAILURE)

    def test_assignment_wins(self) -> None:
        """A user's own backend assignment wins over the pool, for every protocol."""
        for protocol in (b"imap", b"pop3", b"smtp"):
            self.assertOK(self.ask("pat", "pinned", protocol=protocol), "198.51.100.7", 1143, "pinned")

    def test_assigned_name_never_sent(self) -> None:
        """An assignment that is a host name is not sent: a temporary failure instead."""
        self.users.add("hal", "pw", backend="mail.internal.example:143")
        answer = self.ask("hal", "pw", protocol=b"smtp")
        self.assertTemporary(answer, "smtp")
        self.assertNotIn(b"mail.internal", b"".join(v for _, v in answer.raw_headers()))
        self.assertEqual(self.audit.buffer[-1].reason, "no-backend")

    def test_hostname_backend_sent_resolved(self) -> None:
        """A backend configured by name is sent as its resolved IP, one that does not resolve never."""
        reactor = ResolvingReactor({"imap.internal.example": "10.0.0.5"})
        router = BackendRouter((Backend(protocol="imap", address="imap.internal.example", port=993),
                                Backend(protocol="pop3", address="gone.internal.example", port=995)),
                               "hash", reactor, interval=0)
        self.build(router=router)
        self.assertTemporary(self.ask())  # not resolved yet: no name goes out
        router.check()
        self.assertOK(self.ask(), "10.0.0.5", 993, "s3cret")
        answer = self.ask(protocol=b"pop3")
        self.assertTemporary(answer)
        self.assertNotIn(b"internal", b"".join(v for _, v in answer.raw_headers()))

    def test_ipv6_backend(self) -> None:
        """An IPv6 backend is sent as a bare IPv6 literal."""
        self.build(router=BackendRouter((Backend(protocol="imap", address="[2001:DB8::5]", port=143),),
                                        "hash", MemoryReactorClock(), interval=0))
        self.assertOK(self.ask(), "2001:db8::5", 143, "s3cret")


class FailClosedTests(AuthHTTPMixin, SynchronousTestCase):
    """No error, before or after the check, leaves Auth-Status: OK in the answer."""

    def test_router_raises(self) -> None:
        """A router that raises after a good check: a temporary failure, no OK."""
        self.build(router=RaisingRouter())
        answer = self.ask(protocol=b"smtp")
        self.assertTemporary(answer, "smtp")
        self.assertEqual(answer.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_audit_raises_on_success(self) -> None:
        """An audit log that raises while recording a success: no OK (the login is not let through unlogged)."""
        self.build(audit=RaisingAudit())
        self.assertTemporary(self.ask())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_audit_raises_on_failure(self) -> None:
        """An audit log that raises while recording a failure: still the failure answer."""
        self.build(audit=RaisingAudit())
        answer = self.ask(password="wrong")
        self.assertNotOK(answer)
        self.assertEqual(answer.header("Auth-Status"), FAILURE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_authenticator_raises(self) -> None:
        """An unexpected error from the checker itself: a temporary failure, no OK."""
        async def broken(attempt):
            raise RuntimeError("checker bug")
        self.auth.check = broken
        self.assertTemporary(self.ask())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_state_store_down(self) -> None:
        """The state store failing: a temporary answer with Auth-Wait, 454 4.7.0 for smtp, never OK."""
        self.build(state=BrokenStore())
        self.assertTemporary(self.ask(protocol=b"smtp"), "smtp")
        self.assertTemporary(self.ask(protocol=b"imap"), "imap")

    def test_user_store_down(self) -> None:
        """The user database failing: the same temporary answer."""
        self.users.broken = True
        self.assertTemporary(self.ask(protocol=b"smtp"), "smtp")
        self.assertTemporary(self.ask(protocol=b"pop3"), "pop3")

    def test_no_backend(self) -> None:
        """No backend configured for the protocol: temporary, never OK."""
        self.build(router=BackendRouter(BACKENDS[:1], "hash", MemoryReactorClock(), interval=0))
        self.assertTemporary(self.ask(protocol=b"pop3"))


class FailureTests(AuthHTTPMixin, SynchronousTestCase):
    """Bad credentials of every kind: one answer, with Auth-Wait growing per attempt."""

    def test_one_generic_failure(self) -> None:
        """Unknown user, wrong password, wrong TOTP, locked and disabled account: identical headers."""
        self.users.add("ida", "pw")
        self.users.change("ida", enabled=False)
        answers = {"unknown-user": self.ask("nobody", "s3cret"), "bad-password": self.ask("alice", "wrong"),
                   "bad-totp": self.ask("tom", "pass" + self.wrong_totp()),
                   "disabled": self.ask("ida", "pw")}
        for _ in range(4):
            self.ask("alice", "wrong")
        answers["locked"] = self.ask("alice", "s3cret")
        self.assertEqual([e.reason for e in self.audit.buffer if e.result == "failure"][-1], "locked")
        expected = {b"auth-status": [FAILURE.encode()], b"auth-wait": [b"2"]}
        for reason, answer in answers.items():
            self.assertEqual((reason, answer.code, answer.auth_headers()), (reason, 200, expected))

    def test_wait_progression(self) -> None:
        """Auth-Wait is waitSeconds x attempt, capped at maxWaitSeconds, absent from maxLoginAttempts on."""
        self.build(waitSeconds=3, maxWaitSeconds=10, maxLoginAttempts=5)
        waits = [self.ask(password="wrong", attempt=str(n).encode()).header("Auth-Wait") for n in range(1, 8)]
        self.assertEqual(waits, ["3", "6", "9", "10", None, None, None])

    def test_wait_defaults(self) -> None:
        """With the defaults (2 s, 30 s cap, 10 attempts) attempt 9 waits 18 s and attempt 10 closes."""
        self.assertEqual(self.ask(password="wrong", attempt=b"9").header("Auth-Wait"), "18")
        self.assertEqual(self.ask(password="wrong", attempt=b"10").header("Auth-Wait"), None)

    def test_attempt_unreadable(self) -> None:
        """A missing, zero, huge or non-ASCII-digit Auth-Login-Attempt counts as the first attempt."""
        for attempt in (None, b"", b"\xb2", b"0", b"x", b"-3", b"999999999", b"\xb9\xb3"):
            answer = self.ask(password="wrong", attempt=attempt)
            self.assertEqual((attempt, answer.header("Auth-Status"), answer.header("Auth-Wait")),
                             (attempt, FAILURE, "2"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_smtp_error_code(self) -> None:
        """SMTP failures carry Auth-Error-Code 535 5.7.8; IMAP and POP3 failures none."""
        self.assertEqual(self.ask(password="wrong", protocol=b"smtp").header("Auth-Error-Code"), "535 5.7.8")
        self.assertEqual(self.ask(password="wrong", protocol=b"imap").header("Auth-Error-Code"), None)
        self.assertEqual(self.ask(password="wrong", protocol=b"pop3").header("Auth-Error-Code"), None)

    def test_custom_failure_text(self) -> None:
        """nginxAuth.failureText is the failure status."""
        self.build(failureText="Nope")
        self.assertEqual(self.ask(password="wrong").header("Auth-Status"), "Nope")


class LockoutModelTests(AuthHTTPMixin, SynchronousTestCase):
    """Issue 14, item 13, through auth_http: locks per (user, Client-IP), a slowdown per user."""

    APP = "abcd-efgh-ijkl-mnop"

    def setUp(self) -> None:
        super().setUp()
        self.users.add("carol", "c4rol", app_passwords={"phone": self.APP})

    def test_guesses_from_elsewhere_do_not_lock_the_user_out(self) -> None:
        """
        What the tester did: five wrong passwords for carol from another IP.
        Her right password and her app password from her own IP still get
        OK; from the guessing IP even the right password gets the failure.
        """
        for _ in range(5):
            self.assertEqual(self.ask("carol", "wrong", client_ip=b"198.51.100.66").header("Auth-Status"), FAILURE)
        self.assertOK(self.ask("carol", "c4rol", client_ip=b"192.0.2.1"), "192.0.2.10", 143, "c4rol")
        self.assertOK(self.ask("carol", self.APP, client_ip=b"192.0.2.1"), "192.0.2.10", 143, self.APP)
        self.assertEqual(self.ask("carol", "c4rol", client_ip=b"198.51.100.66").header("Auth-Status"), FAILURE)
        self.assertEqual(self.audit.buffer[-1].reason, "locked")

    def test_slowdown_sets_auth_wait(self) -> None:
        """
        Ten failures of carol from ten IPs (auth.userSlowdownAttempts): from
        then on a failure carries Auth-Wait: 5 (auth.userSlowdownDelay) where
        it would say 2, still none from maxLoginAttempts on (nginx closes);
        her right password and app password get OK with no wait.
        """
        waits = [self.ask("carol", "wrong", client_ip=f"203.0.113.{n}".encode()).header("Auth-Wait")
                 for n in range(1, 11)]
        self.assertEqual(waits, ["2"] * 9 + ["5"])
        self.assertEqual(self.ask("carol", "wrong", client_ip=b"192.0.2.77").header("Auth-Wait"), "5")
        self.assertEqual(self.ask("carol", "wrong", client_ip=b"192.0.2.78", attempt=b"10").header("Auth-Wait"),
                         None)
        self.assertEqual(self.ask("alice", "wrong", client_ip=b"192.0.2.79").header("Auth-Wait"), "2")
        self.assertOK(self.ask("carol", "c4rol", client_ip=b"192.0.2.1"), "192.0.2.10", 143, "c4rol")
        self.assertOK(self.ask("carol", self.APP, client_ip=b"192.0.2.1"), "192.0.2.10", 143, self.APP)
        self.clock.advance(300)  # auth.userSlowdownWindow
        self.assertEqual(self.ask("carol", "wrong", client_ip=b"192.0.2.80").header("Auth-Wait"), "2")


class SharedSecretTests(AuthHTTPMixin, SynchronousTestCase):
    """Only nginx, which knows the shared secret, may ask (and claim a Client-IP)."""

    def test_missing_or_wrong(self) -> None:
        """No secret header, a wrong one, or two of them: refused before any check."""
        for secret in ([], [b"wrong"], [SHARED + b"x"], [SHARED[:-1]], [SHARED, SHARED], [SHARED, b"wrong"]):
            self.assertRefused(self.ask(secret=None, X_Auth_Key=secret or None),
                               "Authentication service unavailable")
        self.assertEqual((self.users.lookups, self.verifier.hashes), (0, []))
        self.assertEqual({(e.result, e.reason) for e in self.audit.buffer}, {("refused", "bad-secret")})

    def test_right_secret(self) -> None:
        """The right secret is accepted."""
        self.assertOK(self.ask(secret=SHARED), "192.0.2.10", 143, "s3cret")

    def test_custom_header(self) -> None:
        """nginxAuth.secretHeader names the header (any case)."""
        self.build(secretHeader="X-Nginx-Token")
        self.assertRefused(self.ask(), "Authentication service unavailable")
        self.assertOK(self.ask(secret=None, x_nginx_token=[SHARED]), "192.0.2.10", 143, "s3cret")

    def test_no_secret_configured(self) -> None:
        """With no sharedSecret configured, no header is needed."""
        self.build(NginxAuthSettings())
        self.assertOK(self.ask(secret=None), "192.0.2.10", 143, "s3cret")


class PeerTests(AuthHTTPMixin, SynchronousTestCase):
    """Guarded: the socket's peer must be allowed, whatever the headers say."""

    def test_not_allowed_peer(self) -> None:
        """A non-loopback peer gets 403 from Guarded, with the right secret, and nothing is checked."""
        self.build(peer="203.0.113.9")
        answer = self.ask()
        self.assertEqual(answer.code, 403)
        self.assertEqual(answer.auth_headers(), {})
        self.assertEqual((self.users.lookups, self.audit.buffer), (0, []))

    def test_allowed_network(self) -> None:
        """A peer in nginxAuth.allowFrom is served."""
        self.build(peer="203.0.113.9", allowFrom=("203.0.113.0/24",))
        self.assertOK(self.ask(), "192.0.2.10", 143, "s3cret")


class AuditTests(AuthHTTPMixin, SynchronousTestCase):
    """The audit log: one entry per checked attempt, with its result and reason, never a password."""

    def test_one_entry_per_attempt(self) -> None:
        """Success, failure and temporary failure each add one entry with result, reason and backend."""
        self.ask()
        self.ask(password="wrong", protocol=b"smtp")
        self.ask("pat", "pinned", protocol=b"pop3")
        self.users.broken = True
        self.ask(client_ip=b"2001:db8::7")
        entries = [(e.time, e.user, e.protocol, e.client_ip, e.result, e.reason, e.backend)
                   for e in self.audit.buffer]
        self.assertEqual(entries, [
            (T0, "alice", "imap", "192.0.2.1", "success", "password", "192.0.2.10:143"),
            (T0, "alice", "smtp", "192.0.2.1", "failure", "bad-password", None),
            (T0, "pat", "pop3", "192.0.2.1", "success", "password", "198.51.100.7:1143"),
            (T0, "alice", "imap", "2001:db8::7", "tempfail", "unavailable", None)])
        self.assertEqual({e.latency_ms for e in self.audit.buffer}, {0.0})

    def test_never_the_password(self) -> None:
        """No entry holds a password, with or without its TOTP code."""
        code = self.totp()
        self.ask("tom", "pass" + code)
        self.ask("tom", "pass" + code)
        self.ask("alice", "s3cret")
        self.ask("alice", "zqx-wrong")
        self.assertEqual(len(self.audit.buffer), 4)
        for entry in self.audit.buffer:
            for field in entry:
                if isinstance(field, str):
                    for secret in ("s3cret", "zqx-wrong", "pass" + code, code):
                        self.assertNotIn(secret, field)

    def test_refused_requests(self) -> None:
        """A request refused before any check is recorded as refused, with why, and no claimed user or IP."""
        self.ask(method=b"cram-md5")
        self.ask(omit=(b"Auth-Pass",))
        self.assertEqual([(e.user, e.client_ip, e.result, e.reason) for e in self.audit.buffer],
                         [("", "", "refused", "unsupported-method"), ("", "", "refused", "bad-request")])

    def test_refusals_flood_neither_log_nor_audit(self) -> None:
        """Past MAX_REFUSALS_LOGGED refusals a second, the rest are only counted; the next second logs again."""
        limit = self.resource.MAX_REFUSALS_LOGGED
        for _ in range(limit + 5):
            self.ask(secret=b"wrong")
        self.assertEqual(len(self.audit.buffer), limit)
        self.assertEqual(self.resource.refusals_not_logged, 5)
        self.clock.advance(1)
        self.ask(secret=b"wrong")
        self.assertEqual(len(self.audit.buffer), limit + 1)

    def test_cancelled_login_is_neither_answered_nor_audited(self) -> None:
        """nginx gone while bcrypt waits (Klein cancels the request's work): the check stops, no entry, no error logged."""
        cancelled: list[bool] = []
        self.verifier.verify = lambda password, hashed: Deferred(lambda _: cancelled.append(True))
        headers = {b"auth-method": [b"plain"], b"auth-user": [b"alice"], b"auth-pass": [b"s3cret"],
                   b"auth-protocol": [b"imap"], b"auth-login-attempt": [b"1"], b"client-ip": [b"192.0.2.1"],
                   b"x-auth-key": [SHARED]}
        answer = Deferred.fromCoroutine(self.resource.answer(headers))
        answer.cancel()
        self.failureResultOf(answer, CancelledError)
        self.assertEqual((cancelled, list(self.audit.buffer)), ([True], []))

    def test_user_made_printable(self) -> None:
        """A user name with control characters is stored with them replaced."""
        self.ask("ev\r\nil", "x")
        self.assertEqual(self.audit.buffer[-1].user, "ev??il")


class WiringTests(SynchronousTestCase):
    """build_http puts the resource at nginxAuth.path behind the peer guard and the shared secret."""

    def test_build_http(self) -> None:
        """The listener's site answers nginx at the path, refuses without the secret, 403s other peers."""
        clock = Clock()
        clock.advance(T0)
        users = MemoryUsers()
        users.add("alice", "s3cret")
        auth = authenticator(clock, MemoryStateStore(clock), users)
        config = load_config(None, environ={})
        config = dataclasses.replace(config, enableHealthCheck=False, nginxAuth=dataclasses.replace(
            config.nginxAuth, sharedSecret=SHARED.decode(), path="/nginx/auth", backends=BACKENDS,
            healthCheckInterval=0, listen=("tcp:0:interface=127.0.0.1",)))
        audit = AuthLog(None, clock, 30)
        inputs = HTTPInputs(auth=SimpleNamespace(authenticator=auth, portal=portal_for(auth), rate_limiter=None,
                                                 state=None),
                            smtp=None, spool=None, writer_process=None, relay=None, audit=audit,
                            delivery=SimpleNamespace(stats=SimpleNamespace(attempt_observers=[])))
        http = build_http(config, MemoryReactorClock(), inputs)
        [listener] = [s for s in http.services if isinstance(s, ListeningService)]
        headers = {b"Auth-User": [b"alice"], b"Auth-Pass": [b"s3cret"], b"Auth-Protocol": [b"imap"],
                   b"Client-IP": [b"192.0.2.1"], b"X-Auth-Key": [SHARED]}
        # Without Client-IP (issue 14, item 10): refused by the real listener, as by the answerer.
        answer = WireBrowser(listener.factory).get("http://gomail.test/nginx/auth", headers={
            name: value for name, value in headers.items() if name != b"Client-IP"})
        self.assertEqual((answer.code, answer.header("Auth-Status"), answer.header("Auth-Wait")),
                         (400, "Invalid authentication request", None))
        answer = WireBrowser(listener.factory).get("http://gomail.test/nginx/auth", headers=headers)
        self.assertEqual((answer.header("Auth-Status"), answer.header("Auth-Server")), ("OK", "192.0.2.10"))
        self.assertEqual(len(audit.buffer), 2)
        answer = WireBrowser(listener.factory).get("http://gomail.test/nginx/auth",
                                                        headers={**headers, b"X-Auth-Key": [b"no"]})
        self.assertEqual(answer.header("Auth-Status"), "Authentication service unavailable")
        answer = WireBrowser(listener.factory, "198.51.100.1").get("http://gomail.test/nginx/auth",
                                                                         headers=headers)
        self.assertEqual((answer.code, answer.auth_headers()), (403, {}))
