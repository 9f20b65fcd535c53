"""
The system configuration through the admin API (L{gomail.admin.api_system},
L{gomail.admin.sysconfig}): every setting shown with its secrets redacted, the
live keys changed at once on the running objects (a real login checker and
lockout, rate limiter, auth_http answerer and log filter), kept in the
database over the file's values, at start and after a SIGHUP reload.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from gomail.admin.sysconfig import LIVE_KEYS, SystemConfig
from gomail.auth.blacklist import Blacklist
from gomail.auth.checker import LoginChecker
from gomail.configdelivery import Route
from gomail.configschema import (
    AuthSettings,
    Backend,
    Config,
    LoggingSettings,
    NginxAuthSettings,
    PluginSettings,
    Provider,
    RateLimits,
    RedisSettings,
)
from gomail.limits.rate import RateLimiter
from gomail.reload import ConfigReloader
from gomail.web.authhttp import AuthHTTPAnswerer
from tests.admintesting import AdminHarness

CONFIG = Config(
    forwardPassword="smarthost secret", forwardProviders=(Provider(host="relay.example", password="provider pw"),),
    routes=(Route(domain="example.org", host="mx.example.org", password="route pw"),),
    auth=AuthSettings(bcryptRounds=4, cacheTTL=300),
    redis=RedisSettings(password="redis pw"), rateLimits=RateLimits(maxPerHour=500),
    nginxAuth=NginxAuthSettings(sharedSecret="nginx secret", backends=(Backend(address="10.0.0.1"),)),
    logging=LoggingSettings(level="info"),
    plugins=PluginSettings(enabled=(("webhook", {"url": "https://hooks.example/t0ken", "timeout": 5,
                                                 "auth": {"apiKey": "plugin key", "user": "bot"}}),)),
)
SECRETS = ("smarthost secret", "provider pw", "route pw", "redis pw", "nginx secret", "t0ken", "plugin key")


class NoUsers:
    """A user store with an empty blacklist (the checker is never asked to check a login here)."""

    def list_blacklist(self, now: float) -> Deferred:
        return Deferred.fromCoroutine(_nothing())


async def _nothing() -> list[Any]:
    return []


class ConfigTestCase(TestCase):
    """An admin harness whose server parts are real: login checker, rate limiter, auth_http answerer."""

    config = CONFIG

    def setUp(self) -> None:
        self.answerer = AuthHTTPAnswerer(self.config.nginxAuth, None, None, None)  # type: ignore[arg-type]
        self.h = self.harness()
        self.token = self.h.token("root", "admin")

    def harness(self) -> AdminHarness:
        h = AdminHarness(self, config=self.config, answerer=self.answerer)
        h.server.auth.authenticator = LoginChecker(NoUsers(), h.state, Blacklist(NoUsers(), h.clock, 10), None,
                                                   h.clock, b"k" * 32, self.config.auth)  # type: ignore[arg-type]
        h.server.auth.rate_limiter = RateLimiter(h.state, self.config.rateLimits)
        return h

    def put(self, body: Any, token: str | None = None) -> Any:
        return self.h.call("PUT", "/api/config", token=token or self.token, body=body)

    def stored(self) -> dict[str, Any]:
        rows = self.h.db.run(lambda c: c.execute("SELECT key, value FROM system_config").fetchall())
        return {key: json.loads(value) for key, value in rows}


class ShowTests(ConfigTestCase):
    """GET /api/config."""

    def test_settings_redacted(self) -> None:
        """Every setting by dotted name; secrets, at any depth and in plugin tables, are "[redacted]"."""
        answer = self.h.call("GET", "/api/config", token=self.token)
        self.assertEqual(answer.code, 200, answer.body)
        for secret in SECRETS:
            self.assertNotIn(secret.encode(), answer.body)
        settings = self.h.json(answer)["settings"]
        self.assertEqual(settings["smtp.maxMessageSize"], 26214400)
        self.assertEqual(settings["smtp.trustedNetworks"], ["127.0.0.0/8", "::1/128"])
        self.assertEqual((settings["redis.password"], settings["nginxAuth.sharedSecret"]),
                         ("[redacted]", "[redacted]"))
        self.assertEqual(settings["monitor.bearerToken"], "")  # not set: nothing to hide
        self.assertEqual(settings["forwardProviders"][0]["host"], "relay.example")
        self.assertEqual(settings["forwardProviders"][0]["password"], "[redacted]")
        self.assertEqual(settings["routes"][0]["password"], "[redacted]")
        self.assertEqual(settings["nginxAuth.backends"], [{"protocol": "imap", "address": "10.0.0.1", "port": 143,
                                                            "weight": 1, "loginTicket": False}])
        self.assertEqual(settings["plugins.enabled"], {"webhook": {"url": "[redacted]", "timeout": 5,
                                                                   "auth": {"apiKey": "[redacted]", "user": "bot"}}})

    def test_live_keys(self) -> None:
        """Every live key with its value, default (the file's), description, schema and whether it is stored."""
        live = self.h.json(self.h.call("GET", "/api/config", token=self.token))["live"]
        self.assertEqual(sorted(live), sorted(LIVE_KEYS))
        for name in ("LOCKED", "auth.maxFailAttempts", "auth.cacheTTL", "rateLimits.maxPerHour",
                     "nginxAuth.waitSeconds", "logging.level"):
            self.assertIn(name, live)
        self.assertEqual(live["auth.cacheTTL"], {"value": 300, "default": 300, "stored": False,
                                                 "description": LIVE_KEYS["auth.cacheTTL"].description,
                                                 "schema": {"type": "integer", "minimum": 0,
                                                            "maximum": 2**31 - 1}})
        self.assertEqual(live["LOCK_ERRORS"]["value"], 5)

    def test_roles(self) -> None:
        """Without a session 401; an auditor may neither read nor change the configuration (403)."""
        auditor = self.h.token("watcher", "auditor")
        self.assertEqual(self.h.call("GET", "/api/config").code, 401)
        self.assertEqual(self.h.call("PUT", "/api/config", body={"logging.level": "debug"}).code, 401)
        self.assertEqual(self.h.call("GET", "/api/config", token=auditor).code, 403)
        self.assertEqual(self.put({"logging.level": "debug"}, token=auditor).code, 403)
        self.assertEqual(self.h.server.log_levels.defaultLogLevel, LogLevel.info)


class ChangeTests(ConfigTestCase):
    """PUT /api/config."""

    def test_rate_limits_at_once(self) -> None:
        """New rate limits hold for the next message: one per hour, the second is refused."""
        limiter = self.h.server.auth.rate_limiter
        answer = self.put({"rateLimits.enabled": True, "rateLimits.maxPerHour": 1})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.h.json(answer)["live"]["rateLimits.maxPerHour"]["value"], 1)
        self.assertTrue(self.successResultOf(limiter.allows("alice")))
        self.successResultOf(limiter.count("alice"))
        self.assertFalse(self.successResultOf(limiter.allows("alice")))
        self.assertEqual(limiter.settings.maxPerDay, 2000)  # the rest as it was

    def test_lockout_at_once(self) -> None:
        """With auth.maxFailAttempts 1, one failed login locks the user on that IP."""
        lockout = self.h.server.auth.authenticator.lockout
        self.assertEqual(self.put({"auth.maxFailAttempts": 1, "auth.lockTTL": 60}).code, 200)
        self.assertEqual((lockout.settings.maxFailAttempts, lockout.settings.lockTTL), (1, 60))
        self.successResultOf(Deferred.fromCoroutine(lockout.failed("alice", "192.0.2.1")))
        self.assertTrue(self.successResultOf(Deferred.fromCoroutine(lockout.locked("alice", "192.0.2.1"))))
        self.h.clock.advance(60)
        self.assertFalse(self.successResultOf(Deferred.fromCoroutine(lockout.locked("alice", "192.0.2.1"))))

    def test_cache_nginx_and_log_level(self) -> None:
        """The auth cache TTL, the auth_http wait policy and the log level change on the running objects."""
        answer = self.put({"auth.cacheTTL": 0, "nginxAuth.waitSeconds": 7, "nginxAuth.maxLoginAttempts": 3,
                           "logging.level": "warn"})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.h.server.auth.authenticator.settings.cacheTTL, 0)
        self.assertEqual((self.answerer.settings.waitSeconds, self.answerer.settings.maxLoginAttempts), (7, 3))
        self.assertEqual(self.h.server.log_levels.defaultLogLevel, LogLevel.warn)

    def test_persisted(self) -> None:
        """A change is stored, logged, and applied again by a new start's load, over the file's values."""
        self.assertEqual(self.put({"rateLimits.maxPerHour": 42, "auth.lockTTL": 60.0}).code, 200)
        self.assertEqual(self.stored(), {"rateLimits.maxPerHour": 42, "auth.lockTTL": 60})
        [(actor, target, before, after)] = self.h.db.run(lambda c: c.execute(
            "SELECT actor, target, before, after FROM op_log WHERE action = 'config.set'").fetchall())
        self.assertEqual((actor, target, json.loads(before), json.loads(after)),
                         ("root", "auth.lockTTL,rateLimits.maxPerHour",
                          {"rateLimits.maxPerHour": 500, "auth.lockTTL": 300},
                          {"rateLimits.maxPerHour": 42, "auth.lockTTL": 60}))
        restarted = self.harness()  # new running parts, holding the file's values
        self.assertEqual(restarted.server.auth.rate_limiter.settings.maxPerHour, 500)
        sysconfig = SystemConfig(self.config, self.h.db, self.h.clock, restarted.server)
        self.successResultOf(Deferred.fromCoroutine(sysconfig.load()))
        self.assertEqual(restarted.server.auth.rate_limiter.settings.maxPerHour, 42)
        self.assertEqual(restarted.server.auth.authenticator.lockout.settings.lockTTL, 60)
        self.assertEqual((sysconfig.stored, sysconfig.get("auth.lockTTL")), ({"rateLimits.maxPerHour",
                                                                               "auth.lockTTL"}, 60))
        self.assertIsInstance(sysconfig.get("auth.lockTTL"), int)

    def test_refused(self) -> None:
        """A key that is not live, or a bad value, is 422 naming the key; nothing of the change applies."""
        limiter = self.h.server.auth.rate_limiter
        cases = [({"rateLimits.maxPerHour": 7, "smtp.maxMessageSize": 5}, "smtp.maxMessageSize"),
                 ({"rateLimits.maxPerHour": 7, "auth.failTTL": 0}, "auth.failTTL"),
                 ({"rateLimits.maxPerHour": 7, "logging.level": "loud"}, "logging.level"),
                 ({"rateLimits.maxPerHour": 7, "nginxAuth.waitSeconds": 3601}, "nginxAuth.waitSeconds"),
                 ({"rateLimits.maxPerHour": 7, "auth.userSlowdownDelay": 1.5}, "auth.userSlowdownDelay"),
                 ({"rateLimits.maxPerHour": 7, "rateLimits.enabled": "yes"}, "rateLimits.enabled"),
                 ({"rateLimits.maxPerHour": 7, "redis.password": "x"}, "redis.password")]
        for body, key in cases:
            answer = self.put(body)
            self.assertEqual(answer.code, 422, (body, answer.body))
            self.assertIn(repr(key), self.h.json(answer)["error"])
        self.assertEqual(self.put({}).code, 422)
        self.assertEqual(self.h.call("PUT", "/api/config", token=self.token, raw=b"[1]").code, 422)
        self.assertEqual(self.h.call("PUT", "/api/config", token=self.token, raw=b"{").code, 400)
        self.assertEqual(limiter.settings.maxPerHour, 500)
        self.assertEqual(self.stored(), {})


class ReloadTests(ConfigTestCase):
    """SIGHUP (L{ConfigReloader}) with the admin side's hook: a stored value survives a reload of the file."""

    def test_stored_values_win(self) -> None:
        """
        After a reload changing three live keys in the file, the one stored
        through the API keeps its stored value; the others take the file's
        (auth.cacheTTL too, which SIGHUP alone does not apply), and the
        defaults shown are the new file's.
        """
        checker = self.h.server.auth.authenticator
        limiter = self.h.server.auth.rate_limiter
        self.assertEqual(self.put({"rateLimits.maxPerHour": 7}).code, 200)
        new = dataclasses.replace(self.config, rateLimits=RateLimits(maxPerHour=99, maxPerDay=1234),
                                  auth=AuthSettings(bcryptRounds=4, cacheTTL=30, lockTTL=77))
        reloader = ConfigReloader(self.config, lambda: new, rate_limiter=limiter, lockout=checker.lockout,
                                  log_levels=self.h.server.log_levels, after_reload=self.h.sysconfig.reloaded,
                                  live_keys=[key for key in LIVE_KEYS if "." in key])
        applied, restart = reloader.reload()
        self.assertIn("auth.cacheTTL", applied)
        self.assertNotIn("auth.cacheTTL", restart)
        self.assertEqual((limiter.settings.maxPerHour, limiter.settings.maxPerDay), (7, 1234))
        self.assertEqual((checker.settings.cacheTTL, checker.lockout.settings.lockTTL), (30, 77))
        live = self.h.json(self.h.call("GET", "/api/config", token=self.token))["live"]
        self.assertEqual(live["rateLimits.maxPerHour"], {**live["rateLimits.maxPerHour"], "value": 7, "default": 99,
                                                         "stored": True})
        self.assertEqual((live["auth.cacheTTL"]["value"], live["auth.cacheTTL"]["default"]), (30, 30))
        # A second reload of the same file changes nothing (the reloader's view is up to date).
        self.assertEqual(reloader.reload(), ([], []))
        self.assertEqual(limiter.settings.maxPerHour, 7)
