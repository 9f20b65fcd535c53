"""
Plugin credential sources (IAuthSource) and backend strategies
(IBackendStrategy): a user the database does not hold logs in over SMTP AUTH
and over nginx auth_http through a source, inside the same refusal, lockout
and temporary-failure rules; a strategy plugin picks nginx's backend and
falls back to the configured strategy when it cannot.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import smtplib
import urllib.request
from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from gomail.auth import userdb
from gomail.auth.backends import BackendRouter
from gomail.auth.credentials import Account, AuthFailure, LoginAttempt, TemporaryAuthError
from gomail.auth.passwords import hash_password
from gomail.auth.records import BlacklistEntry
from gomail.auth.service import build_auth
from gomail.auth.sources import AuthSources
from gomail.configload import load_config
from gomail.configschema import Backend
from gomail.extension.runner import HookRunner
from gomail.interfaces import IAuthSource, IBackendStrategy
from gomail.plugin import SourceUser
from gomail.servicekit import ListeningService
from gomail.state.memory import MemoryStateStore
from gomail.web.service import HTTPInputs, build_http
from tests.authtesting import MemoryUsers, authenticator, portal_for
from tests.gomailprocess import GomailNode
from tests.processes import free_port
from tests.test_smtp_auth import AuthHarnessMixin, plain
from tests.test_web_authhttp import SHARED, URL, AuthHTTPMixin
from tests.webtesting import WireBrowser, parse_response

DIRECTORY_PASSWORD = "ldap pw"


@implementer(IAuthSource)
class Directory:
    """An LDAP-like source: knows carol@example.org; C{answer} overrides what it says."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str | None]] = []
        self.answer: Any = None

    def authenticate(self, name: str, password: str, protocol: str, client: str | None) -> Any:
        self.asked.append((name, protocol, client))
        if self.answer is not None:
            return self.answer() if callable(self.answer) else self.answer
        if name == "carol@example.org" and password == DIRECTORY_PASSWORD:
            return SourceUser("carol@example.org", allowed_senders=("@example.org",))
        return None


def pending(browser: WireBrowser, user: bytes, password: bytes) -> Any:
    """Send an nginx request whose answer may not be ready yet: the connection's transport, to read later."""
    protocol, transport = browser.connect()
    protocol.dataReceived(WireBrowser.encode("GET", URL, headers={
        b"Auth-Method": [b"plain"], b"Auth-User": [user], b"Auth-Pass": [password], b"Auth-Protocol": [b"imap"],
        b"Auth-Login-Attempt": [b"1"], b"Client-IP": [b"192.0.2.1"], b"X-Auth-Key": [SHARED]}))
    return transport


class SMTPSourceTests(AuthHarnessMixin, TestCase):
    """SMTP AUTH through a source."""

    def setUp(self) -> None:
        self.h = self.auth_harness()
        self.directory = Directory()
        self.runner = HookRunner(self.h.clock, 5.0)
        self.auth.sources = AuthSources([("directory", self.directory)], self.runner)

    def login(self, user: str, password: str) -> bytes:
        client = self.secure_client(self.h)
        self.client = client
        return client.send(b"AUTH PLAIN " + plain(user, password) + b"\r\n")

    def test_source_user_logs_in_and_sends(self) -> None:
        """A user only the source knows gets 235 and may send as the addresses the source allows."""
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD),
                         b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(self.client.send(b"MAIL FROM:<carol@example.org>\r\n"), b"250 2.1.0 Sender ok\r\n")
        self.client.send(b"RSET\r\n")
        self.assertEqual(self.client.send(b"MAIL FROM:<carol@elsewhere.example>\r\n")[:3], b"553")
        self.assertEqual(self.directory.asked, [("carol@example.org", "smtp", "127.0.0.1")])

    def test_wrong_password_is_a_refusal_that_counts(self) -> None:
        """A source's no is 535 like any wrong password, and counts toward the lockout: after
        auth.maxFailAttempts of them even the right password is refused."""
        self.auth = authenticator(self.h.clock, self.state, self.users, maxFailAttempts=2)
        self.auth.sources = AuthSources([("directory", self.directory)], self.runner)
        self.h.server.portal = portal_for(self.auth)
        for _ in range(2):
            self.assertEqual(self.login("carol@example.org", "wrong")[:3], b"535")
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD)[:3], b"535")

    def test_database_user_never_reaches_the_source(self) -> None:
        """A user the database holds is checked there only."""
        self.assertEqual(self.login("alice@example.org", "correct horse")[:3], b"235")
        self.assertEqual(self.directory.asked, [])

    def test_raising_source_is_temporary(self) -> None:
        """A source that raises: 454 (try again), never 235."""
        self.directory.answer = lambda: 1 / 0
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD)[:3], b"454")
        self.flushLoggedErrors(ZeroDivisionError)

    def test_hanging_source_times_out_to_temporary(self) -> None:
        """A source that never answers is cut off after plugins.timeout: 454."""
        self.directory.answer = lambda: Deferred()
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD), b"")
        self.h.clock.advance(5.0)
        self.assertEqual(self.client.take()[:3], b"454")

    def test_answer_for_another_user_is_refused(self) -> None:
        """A source answering with another user's name does not log anyone in."""
        self.directory.answer = SourceUser("alice@example.org")
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD)[:3], b"535")

    def test_temporary_failure_does_not_count(self) -> None:
        """A failing source answers 454 but is no wrong password: with auth.maxFailAttempts = 1,
        two source failures leave the user free to log in once the source is back."""
        self.auth = authenticator(self.h.clock, self.state, self.users, maxFailAttempts=1)
        self.auth.sources = AuthSources([("directory", self.directory)], self.runner)
        self.h.server.portal = portal_for(self.auth)
        self.directory.answer = lambda: 1 / 0
        for _ in range(2):
            self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD)[:3], b"454")
        self.flushLoggedErrors(ZeroDivisionError)
        self.directory.answer = None
        self.assertEqual(self.login("carol@example.org", DIRECTORY_PASSWORD)[:3], b"235")

    def test_refusals_cost_one_bcrypt(self) -> None:
        """The equal-time rule holds around the sources: a name no source knows, a wrong password
        and an answer for another user each cost exactly one (dummy) bcrypt verification."""
        verifier = self.auth.verifier
        for user, password, answer in (("nobody@example.org", "x", None),
                                       ("carol@example.org", "wrong", None),
                                       ("carol@example.org", DIRECTORY_PASSWORD, SourceUser("alice@example.org"))):
            self.directory.answer = answer
            before = len(verifier.hashes)  # type: ignore[attr-defined]
            self.assertEqual(self.login(user, password)[:3], b"535")
            self.assertEqual(len(verifier.hashes) - before, 1, user)  # type: ignore[attr-defined]


class AuthHTTPSourceTests(AuthHTTPMixin, SynchronousTestCase):
    """nginx auth_http through a source."""

    def build(self, *args: Any, **kwargs: Any) -> None:
        super().build(*args, **kwargs)
        self.directory = getattr(self, "directory", None) or Directory()
        self.auth.sources = AuthSources([("directory", self.directory)], HookRunner(self.clock, 5.0))

    def test_source_user_gets_a_backend(self) -> None:
        """Auth-Status OK with the backend headers, for a user only the source knows."""
        answer = self.ask("carol@example.org", DIRECTORY_PASSWORD)
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual((answer.header("Auth-Server"), answer.header("Auth-Port")), ("192.0.2.10", "143"))
        self.assertEqual(self.directory.asked, [("carol@example.org", "imap", "192.0.2.1")])

    def test_wrong_password_refused(self) -> None:
        """A source's no is nginx's usual refusal."""
        answer = self.ask("carol@example.org", "wrong")
        self.assertNotOK(answer)
        self.assertEqual(answer.header("Auth-Status"), "Invalid login or password")

    def test_raising_source_is_temporary(self) -> None:
        """A source that raises gives the temporary failure."""
        self.directory.answer = lambda: 1 / 0
        self.assertTemporary(self.ask("carol@example.org", DIRECTORY_PASSWORD))
        self.flushLoggedErrors(ZeroDivisionError)

    def test_hanging_source_is_temporary(self) -> None:
        """A source that never answers: nothing until plugins.timeout, then the temporary failure."""
        self.directory.answer = lambda: Deferred()
        transport = pending(self.browser, b"carol@example.org", b"ldap%20pw")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(5.0)
        self.assertTemporary(parse_response(transport.value()))

    def test_answer_for_another_user_is_refused(self) -> None:
        """A source vouching for another name gets nginx's usual refusal, never OK."""
        self.directory.answer = SourceUser("alice")
        answer = self.ask("carol@example.org", DIRECTORY_PASSWORD)
        self.assertNotOK(answer)
        self.assertEqual(answer.header("Auth-Status"), "Invalid login or password")


class SourceChainTests(SynchronousTestCase):
    """The LoginChecker's chain with sources, asked directly: order, answers, and the gates before them."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.users = MemoryUsers()
        self.users.add("alice@example.org", "correct horse")
        self.first, self.second = Directory(), Directory()
        self.auth = authenticator(self.clock, MemoryStateStore(self.clock), self.users, maxFailAttempts=1)
        self.auth.sources = AuthSources([("first", self.first), ("second", self.second)],
                                        HookRunner(self.clock, 5.0))

    def check(self, name: str = "carol@example.org", password: str = DIRECTORY_PASSWORD,
              client: str = "192.0.2.7") -> Deferred:
        return self.auth.authenticate(LoginAttempt(name, password, client, "imap"))

    def test_asked_in_order(self) -> None:
        """The first source that says yes logs the user in (via plugin:<its name>); those before it were asked."""
        self.first.answer = lambda: None
        account = self.successResultOf(self.check())
        self.assertIsInstance(account, Account)
        self.assertEqual((account.name, account.via, account.user.allowed_senders, account.user.backend),
                         ("carol@example.org", "plugin:second", ("@example.org",), None))
        self.assertEqual([len(self.first.asked), len(self.second.asked)], [1, 1])

    def test_first_yes_wins(self) -> None:
        """A yes from the first source ends the chain: the second is not asked."""
        self.assertEqual(self.successResultOf(self.check()).via, "plugin:first")
        self.assertEqual(self.second.asked, [])

    def test_failing_source_stops_the_chain(self) -> None:
        """A failing source makes the login temporary even though a later one would vouch: its no might
        have been meant, so a later yes cannot be trusted in its place."""
        self.first.answer = lambda: 1 / 0
        self.failureResultOf(self.check(), TemporaryAuthError)
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(self.second.asked, [])

    def test_canonical_name_asked_and_answered(self) -> None:
        """Sources are asked the canonical name; an answer in another spelling of it is the same user."""
        self.first.answer = SourceUser("Carol@Example.org", allowed_senders="carol@example.org")  # type: ignore[arg-type]
        account = self.successResultOf(self.check(" CAROL@example.org"))
        self.assertEqual(self.first.asked[0][0], "carol@example.org")
        self.assertEqual(account.name, "carol@example.org")
        # One address given as a string is one allowed sender, not one per character.
        self.assertEqual(account.user.allowed_senders, ("carol@example.org",))

    def test_odd_answers(self) -> None:
        """An answer that is not a SourceUser is refused; a SourceUser with senders that are not
        strings is the source's bug: temporary. Neither logs anyone in."""
        self.first.answer = True
        self.assertEqual(self.failureResultOf(self.check(), AuthFailure).value.reason, "source-mismatch")
        self.clock.advance(3600)  # past the lock that refusal set (maxFailAttempts = 1)
        self.first.answer = SourceUser("carol@example.org", allowed_senders=(1,))  # type: ignore[arg-type]
        self.failureResultOf(self.check(client="192.0.2.8"), TemporaryAuthError)

    def test_blacklisted_client_never_reaches_sources(self) -> None:
        """The blacklist comes before the sources: a blacklisted client's login asks none of them."""
        self.users.blacklist.append(BlacklistEntry("192.0.2.0/24", None))
        self.failureResultOf(self.check(), AuthFailure)
        self.assertEqual((self.first.asked, self.second.asked), ([], []))

    def test_locked_out_never_reaches_sources(self) -> None:
        """The lockouts come before the sources: once locked, even the source's right password is
        refused without asking it."""
        self.first.answer = lambda: None
        self.second.answer = lambda: None
        self.failureResultOf(self.check(password="wrong"), AuthFailure)
        self.first.answer = self.second.answer = None
        self.first.asked.clear()
        self.assertEqual(self.failureResultOf(self.check(), AuthFailure).value.reason, "locked")
        self.assertEqual(self.first.asked, [])


@implementer(IBackendStrategy)
class PickSecond:
    """Picks the second backend, or what C{answer} says."""

    def __init__(self) -> None:
        self.answer: Any = "second"
        self.asked: list[tuple[str, str, str | None, int]] = []

    def choose(self, user: str, protocol: str, client: str | None, backends: list[Backend]) -> Any:
        self.asked.append((user, protocol, client, len(backends)))
        if self.answer == "second":
            return backends[1]
        return self.answer() if callable(self.answer) else self.answer


class BackendStrategyTests(SynchronousTestCase):
    """BackendRouter.pick with a strategy plugin."""

    def setUp(self) -> None:
        self.backends = (Backend(protocol="imap", address="192.0.2.10", port=143),
                         Backend(protocol="imap", address="192.0.2.11", port=143))
        self.strategy = PickSecond()
        self.router = BackendRouter(self.backends, "hash", MemoryReactorClock(), interval=0,
                                    plugin=("picker", self.strategy), runner=HookRunner(Clock(), 5.0))
        self.plain = BackendRouter(self.backends, "hash", MemoryReactorClock(), interval=0)
        for router in (self.router, self.plain):
            for state in router.pools["imap"]:
                state.address = state.config.address

    def pick(self, router: BackendRouter, assignment: str | None = None) -> tuple[str, int]:
        return self.successResultOf(Deferred.fromCoroutine(router.pick("imap", "dave", "192.0.2.9", assignment)))

    def test_plugin_picks(self) -> None:
        """The plugin's choice is the backend, asked with the live backends."""
        self.assertEqual(self.pick(self.router), ("192.0.2.11", 143))
        self.assertEqual(self.strategy.asked, [("dave", "imap", "192.0.2.9", 2)])

    def test_none_falls_back(self) -> None:
        """None: the configured strategy's pick."""
        self.strategy.answer = None
        self.assertEqual(self.pick(self.router), self.pick(self.plain))

    def test_raising_or_foreign_falls_back(self) -> None:
        """A raising plugin, or one naming a backend that is not configured, falls back (logged)."""
        self.strategy.answer = lambda: 1 / 0
        self.assertEqual(self.pick(self.router), self.pick(self.plain))
        self.flushLoggedErrors(ZeroDivisionError)
        self.strategy.answer = Backend(protocol="imap", address="203.0.113.1", port=143)
        self.assertEqual(self.pick(self.router), self.pick(self.plain))

    def test_assignment_wins(self) -> None:
        """A user's own backend assignment comes before the plugin."""
        self.assertEqual(self.pick(self.router, "198.51.100.7:1143"), ("198.51.100.7", 1143))
        self.assertEqual(self.strategy.asked, [])


TWO_IMAP = (Backend(protocol="imap", address="192.0.2.10", port=143),
            Backend(protocol="imap", address="192.0.2.20", port=143))


class StrategyAuthHTTPTests(AuthHTTPMixin, SynchronousTestCase):
    """nginx auth_http with a backend-strategy plugin (and a credential source) on the router."""

    def build(self, *args: Any, **kwargs: Any) -> None:
        self.strategy = getattr(self, "strategy", None) or PickSecond()
        runner = HookRunner(self.clock, 5.0)
        router = BackendRouter(TWO_IMAP, "hash", MemoryReactorClock(), interval=0,
                               plugin=("picker", self.strategy), runner=runner)
        super().build(*args, router=router, **kwargs)
        self.auth.sources = AuthSources([("directory", Directory())], runner)

    def test_plugin_picks_for_database_and_source_users(self) -> None:
        """The plugin's backend is nginx's Auth-Server, for a database user and for a source's user,
        asked with the user, protocol, client IP and the live backends."""
        for user, password in (("alice", "s3cret"), ("carol@example.org", DIRECTORY_PASSWORD)):
            answer = self.ask(user, password, client_ip=b"192.0.2.99")
            self.assertEqual(answer.header("Auth-Status"), "OK")
            self.assertEqual((answer.header("Auth-Server"), answer.header("Auth-Port")), ("192.0.2.20", "143"))
        self.assertEqual(self.strategy.asked, [("alice", "imap", "192.0.2.99", 2),
                                               ("carol@example.org", "imap", "192.0.2.99", 2)])

    def test_assignment_wins_over_plugin(self) -> None:
        """A user with their own backend assignment gets it; the plugin is not asked."""
        answer = self.ask("pat", "pinned")
        self.assertEqual((answer.header("Auth-Status"), answer.header("Auth-Server"), answer.header("Auth-Port")),
                         ("OK", "198.51.100.7", "1143"))
        self.assertEqual(self.strategy.asked, [])

    def test_hanging_plugin_falls_back(self) -> None:
        """A plugin that never answers is cut off after plugins.timeout and nginx still gets OK, with the
        configured strategy's backend."""
        self.strategy.answer = lambda: Deferred()
        transport = pending(self.browser, b"alice", b"s3cret")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(5.0)
        answer = parse_response(transport.value())
        plain_router = BackendRouter(TWO_IMAP, "hash", MemoryReactorClock(), interval=0)
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual((answer.header("Auth-Server"), int(answer.header("Auth-Port") or 0)),
                         plain_router.choose("imap", "alice"))

    def test_raising_plugin_still_answers_ok(self) -> None:
        """A raising plugin: the login succeeds all the same, on the configured strategy's backend."""
        self.strategy.answer = lambda: 1 / 0
        answer = self.ask()
        self.flushLoggedErrors(ZeroDivisionError)
        plain_router = BackendRouter(TWO_IMAP, "hash", MemoryReactorClock(), interval=0)
        self.assertEqual(answer.header("Auth-Status"), "OK")
        self.assertEqual((answer.header("Auth-Server"), int(answer.header("Auth-Port") or 0)),
                         plain_router.choose("imap", "alice"))


class WiringTests(SynchronousTestCase):
    """build_auth and build_http hand the plugins' parts to the login chain and the router."""

    def config(self) -> Any:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = load_config(None, environ={})
        return dataclasses.replace(
            config, enableHealthCheck=False,
            auth=dataclasses.replace(config.auth, database=os.path.join(directory, "users.db"),
                                     secretFile=os.path.join(directory, "auth.secret")),
            nginxAuth=dataclasses.replace(config.nginxAuth, sharedSecret=SHARED.decode(), backends=TWO_IMAP,
                                          healthCheckInterval=0, listen=("tcp:0:interface=127.0.0.1",)))

    def test_build_auth_gives_the_chain_its_sources(self) -> None:
        """With sources and a runner, the LoginChecker asks them (through that runner); without, it has none."""
        config, clock = self.config(), MemoryReactorClock()
        directory, runner = Directory(), HookRunner(clock, 5.0)
        parts, _ = build_auth(config, clock, [("directory", directory)], runner)
        self.addCleanup(parts.users.close)
        sources = parts.authenticator.sources
        self.assertIsInstance(sources, AuthSources)
        self.assertEqual((sources.sources, sources.runner), ([("directory", directory)], runner))
        bare, _ = build_auth(config, clock)
        self.addCleanup(bare.users.close)
        self.assertIsNone(bare.authenticator.sources)

    def test_build_http_gives_the_router_the_strategy(self) -> None:
        """The auth_http listener's router asks the configured strategy plugin."""
        clock = Clock()
        clock.advance(1_700_000_000)
        users = MemoryUsers()
        users.add("alice", "s3cret")
        auth = authenticator(clock, MemoryStateStore(clock), users)
        strategy = PickSecond()
        inputs = HTTPInputs(auth=SimpleNamespace(authenticator=auth, portal=portal_for(auth), rate_limiter=None,
                                                 state=None),
                            smtp=None, spool=None, writer_process=None, relay=None, audit=None,
                            delivery=SimpleNamespace(stats=SimpleNamespace(attempt_observers=[])),
                            backend_strategy=("picker", strategy), runner=HookRunner(clock, 5.0))
        http = build_http(self.config(), MemoryReactorClock(), inputs)
        [listener] = [s for s in http.services if isinstance(s, ListeningService)]
        headers = {b"Auth-User": [b"alice"], b"Auth-Pass": [b"s3cret"], b"Auth-Protocol": [b"imap"],
                   b"Client-IP": [b"192.0.2.1"], b"X-Auth-Key": [SHARED]}
        answer = WireBrowser(listener.factory).get(URL, headers=headers)
        self.assertEqual((answer.header("Auth-Status"), answer.header("Auth-Server")), ("OK", "192.0.2.20"))
        self.assertEqual(strategy.asked, [("alice", "imap", "192.0.2.1", 2)])


PLUGIN = '''
import json
from zope.interface import implementer
from gomail.interfaces import IAuthSource, IBackendStrategy
from gomail.plugin import SourceUser, plugin


@implementer(IAuthSource)
class Directory:
    def __init__(self, settings, context):
        self.users = {name: password for name, password in settings.tables("users")[0].items()}
        self.asked = settings.text("asked")

    def authenticate(self, name, password, protocol, client):
        with open(self.asked, "a") as f:
            f.write(json.dumps([name, protocol, client]) + "\\n")
        if self.users.get(name) == password:
            return SourceUser(name, allowed_senders=("@example.org",))
        return None


@implementer(IBackendStrategy)
class Last:
    def __init__(self, settings, context):
        pass

    def choose(self, user, protocol, client, backends):
        return backends[-1]


directory = plugin("directory", Directory, "Users of a directory")
last_backend = plugin("last_backend", Last, "Always the last backend")
'''

PROCESS_CONFIG = """
smtpHost = "127.0.0.1"
smtpPort = {port}
dataDir = "{data}"
enableHealthCheck = false
[smtp]
hostname = "mx.test"
allowPlaintextAuthLoopback = true
greetingDelay = 0
[spool]
minFreeSpaceMB = 0
[auth]
database = "{database}"
bcryptRounds = 4
[nginxAuth]
listen = ["tcp:{http}:interface=127.0.0.1"]
sharedSecret = "{shared}"
healthCheckInterval = 0
[[nginxAuth.backends]]
protocol = "imap"
address = "192.0.2.10"
port = 143
[[nginxAuth.backends]]
protocol = "imap"
address = "192.0.2.20"
port = 993
[plugins]
path = ["{plugins}"]
[plugins.directory]
asked = "{asked}"
[[plugins.directory.users]]
"carol@example.org" = "carol-directory-pw"
[plugins.last_backend]
"""


class PluginProcessTests(TestCase):
    """A real twistd with a credential-source and a backend-strategy plugin from a plugin directory."""

    timeout = 60

    def test_source_and_strategy_in_a_real_server(self) -> Deferred:
        """
        Through the composition root: Carol, known only to the directory
        plugin, logs in over SMTP AUTH (235) and may send as its allowed
        senders only (250, then 553); Alice, in the real SQLite user
        database, logs in without the plugin being asked; nginx's auth_http
        request for Carol answers OK with the strategy plugin's backend.
        """
        workdir = os.path.abspath(self.mktemp())
        plugins, data = os.path.join(workdir, "plugins"), os.path.join(workdir, "data")
        os.makedirs(plugins)
        os.makedirs(data)
        with open(os.path.join(plugins, "directory_test.py"), "w") as f:
            f.write(PLUGIN)
        database, asked = os.path.join(workdir, "users.db"), os.path.join(workdir, "asked.jsonl")
        conn = userdb.open_connection(database)
        try:
            userdb.transact(conn, userdb.migrate)
            userdb.transact(conn, userdb.add_user, "alice@example.org", hash_password("alice-pw", 4), 0.0)
        finally:
            conn.close()
        port, http = free_port(), free_port()
        node = GomailNode(self, PROCESS_CONFIG, workdir=workdir, data=data, port=port, http=http,
                          database=database, plugins=plugins, asked=asked, shared=SHARED.decode())

        def auth(client: smtplib.SMTP, name: str, password: str) -> tuple[int, bytes]:
            return client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{name}\0{password}".encode()).decode())

        def smtp() -> list[tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.ehlo("client.test")
                replies = [auth(client, "carol@example.org", "carol-directory-pw"),
                           client.docmd("MAIL", "FROM:<carol@example.org>")]
                client.rset()
                replies.append(client.docmd("MAIL", "FROM:<carol@elsewhere.example>"))
            with smtplib.SMTP("127.0.0.1", port, "client.test", 20) as client:
                client.ehlo("client.test")
                replies.append(auth(client, "alice@example.org", "alice-pw"))
            return replies

        def auth_http() -> dict[str, str]:
            request = urllib.request.Request(f"http://127.0.0.1:{http}/api/auth", headers={
                "Auth-Method": "plain", "Auth-User": "carol@example.org", "Auth-Pass": "carol-directory-pw",
                "Auth-Protocol": "imap", "Auth-Login-Attempt": "1", "Client-IP": "192.0.2.5",
                "X-Auth-Key": SHARED.decode()})
            with urllib.request.urlopen(request, timeout=20) as response:
                return {name: value for name, value in response.headers.items() if name.startswith("Auth-")}

        async def run() -> None:
            await node.start()
            self.assertIn(b"plugin directory loaded from " + plugins.encode(), node.output)
            codes = [code for code, _ in await deferToThread(smtp)]
            self.assertEqual(codes, [235, 250, 553, 235], node.output.decode(errors="replace"))
            headers = await deferToThread(auth_http)
            self.assertEqual((headers.get("Auth-Status"), headers.get("Auth-Server"), headers.get("Auth-Port")),
                             ("OK", "192.0.2.20", "993"))
            with open(asked) as f:
                self.assertEqual([json.loads(line) for line in f],
                                 [["carol@example.org", "smtp", "127.0.0.1"],
                                  ["carol@example.org", "imap", "192.0.2.5"]])
            await node.stop_cleanly()

        return Deferred.fromCoroutine(run())
