# -*- test-case-name: tests.test_admin_config -*-
"""
The system configuration: the settings an admin may change while the server
runs, persisted in the C{system_config} table and applied at once (and again
at every start, over the configuration file's values).

Each L{LiveKey} says its JSON Schema, its default (from the configuration
file, or MailGateway's for its own keys) and how it is applied to the
running parts (L{gomail.admin.service.ServerParts}). Every other
configuration key is shown read-only by the API.

Precedence: a value stored here wins over the configuration file's, at
start (L{SystemConfig.load}) and after a SIGHUP reload of the file
(L{SystemConfig.reloaded}, called by L{gomail.reload.ConfigReloader}); a key
not stored follows the file (its default is the file's value).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from twisted.logger import Logger, LogLevel

from gomail.admin import oplog
from gomail.admin.login import LockPolicy
from gomail.configschema import Config


class ConfigChangeError(ValueError):
    """A change the system configuration refuses (the text names the key, also in C{key})."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class LiveKey:
    """One key that may change live."""

    name: str
    schema: dict[str, Any]
    description: str
    default: Callable[[Config], Any]
    #: apply(parts, value): hands the value to the running object (None: read where used, through get()).
    apply: Callable[[Any, Any], None] | None = None
    #: The lowest role that may change it: the admin logins' own lockout guards
    #: superadmins too, so only a superadmin may weaken it.
    role: str = "admin"


#: The keys, in the order the API lists them (route modules and tests may read it).
LIVE_KEYS: dict[str, LiveKey] = {}


def live_key(key: LiveKey) -> LiveKey:
    """Register C{key}."""
    LIVE_KEYS[key.name] = key
    return key


live_key(LiveKey("LOCKED", {"type": "boolean"}, "lock admin logins after LOCK_ERRORS failures",
                 lambda config: True, role="superadmin"))
live_key(LiveKey("LOCK_ERRORS", {"type": "integer", "minimum": 1, "maximum": 1000},
                 "failed admin logins (per admin name, per client IP) before a lock", lambda config: 5,
                 role="superadmin"))
live_key(LiveKey("LOCK_TIME", {"type": "integer", "minimum": 1, "maximum": 10080},
                 "minutes an admin login lock lasts", lambda config: 30, role="superadmin"))


#: The upper bound of the counts and durations the configuration file leaves open: a TTL past it
#: would be refused by Redis (and means "for ever" anyway).
_MAX = 2**31 - 1


def _integer(low: int, high: int = _MAX) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def _replace_setting(holder: Any, name: str, value: Any) -> None:
    """C{holder.settings} (a frozen settings dataclass) with C{name} set to C{value}; nothing when absent."""
    if holder is not None and getattr(holder, "settings", None) is not None:
        holder.settings = dataclasses.replace(holder.settings, **{name: value})


def _authenticator(parts: Any) -> Any:
    return getattr(getattr(parts, "auth", None), "authenticator", None)


def _section_key(section: str, name: str, schema: dict[str, Any], description: str,
                 apply: Callable[[Any, Any], None]) -> None:
    live_key(LiveKey(f"{section}.{name}", schema, description,
                     lambda config: getattr(getattr(config, section), name), apply))


def _lockout_key(name: str, schema: dict[str, Any], description: str) -> None:
    # The lockout reads its settings on every login (as a SIGHUP changes them).
    _section_key("auth", name, schema, description,
                 lambda parts, value: _replace_setting(getattr(_authenticator(parts), "lockout", None), name,
                                                       value))


def _rate_key(name: str, schema: dict[str, Any], description: str) -> None:
    _section_key("rateLimits", name, schema, description,
                 lambda parts, value: _replace_setting(getattr(getattr(parts, "auth", None), "rate_limiter", None),
                                                       name, value))


def _nginx_key(name: str, schema: dict[str, Any], description: str) -> None:
    # The auth_http answerer (None when nginxAuth is off) reads its settings on every answer.
    _section_key("nginxAuth", name, schema, description,
                 lambda parts, value: _replace_setting(getattr(parts, "answerer", None), name, value))


def _set_cache_ttl(parts: Any, value: int) -> None:
    # The login checker reads settings.cacheTTL on every login: 0 turns the cache off at once.
    _replace_setting(_authenticator(parts), "cacheTTL", value)


def _set_log_level(parts: Any, value: str) -> None:
    levels = getattr(parts, "log_levels", None)
    if levels is not None:
        levels.defaultLogLevel = LogLevel.levelWithName(value)


_lockout_key("maxFailAttempts", _integer(1), "failed logins of one user from one client IP before that pair is "
             "locked for auth.lockTTL")
_lockout_key("maxFailAttemptsPerIP", _integer(1), "failed logins from one client IP (any users) before the IP "
             "is locked for auth.lockTTL")
_lockout_key("failTTL", _integer(1), "seconds a failed login is counted for the locks")
_lockout_key("lockTTL", _integer(1), "seconds a lock lasts")
_lockout_key("userSlowdownAttempts", _integer(1), "failed logins of one user (any client IPs) within "
             "auth.userSlowdownWindow before its failures are answered late")
_lockout_key("userSlowdownWindow", _integer(1), "seconds a user's failed logins are counted for the slowdown")
_lockout_key("userSlowdownDelay", _integer(0, 60), "seconds a slowed-down user's failure is answered late "
             "(0: no slowdown)")
_section_key("auth", "cacheTTL", _integer(0), "seconds a verified password is remembered (0: no cache)",
             _set_cache_ttl)
_rate_key("enabled", {"type": "boolean"}, "enforce the message rate limits")
_rate_key("maxPerHour", _integer(1), "messages one sender may send per hour")
_rate_key("maxPerDay", _integer(1), "messages one sender may send per day")
_rate_key("globalMaxPerHour", _integer(1), "messages all senders together may send per hour")
_rate_key("globalMaxPerDay", _integer(1), "messages all senders together may send per day")
_rate_key("failurePolicy", {"type": "string", "enum": ["allow", "refuse"]},
          "when the state store cannot answer: allow (limits skipped) or refuse (451)")
_nginx_key("waitSeconds", _integer(0, 3600), "Auth-Wait nginx is told after a failed login, times the "
           "attempt number")
_nginx_key("maxWaitSeconds", _integer(0, 3600), "the longest Auth-Wait")
_nginx_key("maxLoginAttempts", _integer(1, 1000), "failed logins nginx may retry on one connection")
_section_key("logging", "level", {"type": "string", "enum": ["debug", "info", "warn", "error", "critical"]},
             "the lowest level logged", _set_log_level)


def _rows(cursor: Any) -> list[tuple[str, str]]:
    return cursor.execute("SELECT key, value FROM system_config ORDER BY key").fetchall()


def _store(cursor: Any, changes: dict[str, Any], before: dict[str, Any], actor: str, client_ip: str,
           now: float) -> None:
    for name, value in changes.items():
        cursor.execute("INSERT INTO system_config (key, value, updated, actor) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated, "
                       "actor = excluded.actor", (name, json.dumps(value), now, actor))
    oplog.record(cursor, now, actor, "config.set", ",".join(sorted(changes)),
                 {k: before[k] for k in changes}, changes, client_ip)


class SystemConfig:
    """
    The live values. L{load} reads the stored ones at start; L{change}
    validates a whole change, stores it with its operation-log entry in one
    transaction, then applies it.

    @param db: runs C{fn(cursor, ...)} in the database thread.
    @param parts: what L{LiveKey.apply} functions act on.
    """

    log = Logger()

    def __init__(self, config: Config, db: Any, clock: Any, parts: Any = None) -> None:
        self.config, self.db, self.clock, self.parts = config, db, clock, parts
        self.values: dict[str, Any] = {name: key.default(config) for name, key in LIVE_KEYS.items()}
        self.stored: set[str] = set()

    def get(self, name: str) -> Any:
        """The value of the live key C{name} now."""
        return self.values[name]

    def lock_policy(self) -> LockPolicy:
        """The admin login lockout policy now."""
        return LockPolicy(self.values["LOCKED"], self.values["LOCK_ERRORS"], self.values["LOCK_TIME"])

    async def load(self) -> None:
        """Apply the stored values (a stored value no longer valid is logged and skipped)."""
        for name, text in await self.db(_rows):
            key = LIVE_KEYS.get(name)
            try:
                value = json.loads(text)
                if key is None:
                    raise ConfigChangeError("no such live key", name)
                value = self._checked(name, value)
            except (ValueError, ConfigChangeError) as e:
                self.log.warn("system_config: ignoring stored {key}: {error}", key=name, error=str(e))
                continue
            self._apply(name, value)
            self.stored.add(name)

    def _checked(self, name: str, value: Any) -> Any:
        """C{value} if valid for C{name} (2.0 for an integer key becomes 2). @raise ConfigChangeError:"""
        key = LIVE_KEYS.get(name)
        if key is None:
            raise ConfigChangeError(f"{name!r} cannot be changed live (see GET /api/config)", name)
        error = next(iter(Draft202012Validator(key.schema).iter_errors(value)), None)
        if error is not None:
            raise ConfigChangeError(f"{name}: {error.message}", name)
        # JSON Schema counts 2.0 as an integer; the running objects (and Redis TTLs) want an int.
        return int(value) if key.schema.get("type") == "integer" else value

    def _apply(self, name: str, value: Any) -> None:
        key = LIVE_KEYS[name]
        if key.apply is not None and self.parts is not None:
            key.apply(self.parts, value)
        self.values[name] = value

    def reloaded(self, config: Config) -> None:
        """
        The configuration file was read again (SIGHUP) and its live values
        applied: apply the stored values again over them (they win), and take
        the file's values as the defaults, and the values, of the keys not
        stored.
        """
        self.config = config
        for name, key in LIVE_KEYS.items():
            value = self.values[name] if name in self.stored else key.default(config)
            try:
                self._apply(name, value)
            except Exception as e:  # noqa: BLE001 -- one key's failure must not keep the others from applying
                self.log.error("system config: could not apply {key} after a reload: {error}", key=name,
                               error=str(e) or type(e).__name__)

    def default(self, name: str) -> Any:
        """The value C{name} has when none is stored: the configuration file's (or MailGateway's)."""
        return LIVE_KEYS[name].default(self.config)

    async def change(self, changes: dict[str, Any], actor: str, client_ip: str = "") -> dict[str, Any]:
        """
        Validate, store and apply C{changes} (all or none); returns the values before.
        @raise ConfigChangeError: a key that cannot change live, or a bad value.
        """
        changes = {name: self._checked(name, value) for name, value in changes.items()}
        before = {name: self.values[name] for name in changes}
        await self.db(_store, changes, before, actor, client_ip, self.clock.seconds())
        for name, value in changes.items():
            self._apply(name, value)
            self.stored.add(name)
            self.log.info("system config: {key} changed by {actor}", key=name, actor=actor)
        return before
