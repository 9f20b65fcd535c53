# -*- test-case-name: tests.test_admin_config -*-
"""
The system configuration: the settings an admin may change while the server
runs, persisted in the C{system_config} table and applied at once (and again
at every start, over the configuration file's values).

Each L{LiveKey} says its JSON Schema, its default (from the configuration
file, or MailGateway's for its own keys) and how it is applied to the
running parts. Every other configuration key is shown read-only by the API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from twisted.logger import Logger

from gomail.admin import oplog
from gomail.admin.login import LockPolicy
from gomail.configschema import Config


class ConfigChangeError(ValueError):
    """A change the system configuration refuses (the text names the key)."""


@dataclass(frozen=True)
class LiveKey:
    """One key that may change live."""

    name: str
    schema: dict[str, Any]
    description: str
    default: Callable[[Config], Any]
    #: apply(parts, value): hands the value to the running object (None: read where used, through get()).
    apply: Callable[[Any, Any], None] | None = None


#: The keys, in the order the API lists them (route modules and tests may read it).
LIVE_KEYS: dict[str, LiveKey] = {}


def live_key(key: LiveKey) -> LiveKey:
    """Register C{key}."""
    LIVE_KEYS[key.name] = key
    return key


live_key(LiveKey("LOCKED", {"type": "boolean"}, "lock admin logins after LOCK_ERRORS failures",
                 lambda config: True))
live_key(LiveKey("LOCK_ERRORS", {"type": "integer", "minimum": 1, "maximum": 1000},
                 "failed admin logins (per admin name, per client IP) before a lock", lambda config: 5))
live_key(LiveKey("LOCK_TIME", {"type": "integer", "minimum": 1, "maximum": 10080},
                 "minutes an admin login lock lasts", lambda config: 30))


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
                    raise ConfigChangeError("no such live key")
                self._check(name, value)
            except (ValueError, ConfigChangeError) as e:
                self.log.warn("system_config: ignoring stored {key}: {error}", key=name, error=str(e))
                continue
            self._apply(name, value)
            self.stored.add(name)

    def _check(self, name: str, value: Any) -> None:
        key = LIVE_KEYS.get(name)
        if key is None:
            raise ConfigChangeError(f"{name!r} cannot be changed live (see GET /api/config)")
        error = next(iter(Draft202012Validator(key.schema).iter_errors(value)), None)
        if error is not None:
            raise ConfigChangeError(f"{name}: {error.message}")

    def _apply(self, name: str, value: Any) -> None:
        key = LIVE_KEYS[name]
        if key.apply is not None and self.parts is not None:
            key.apply(self.parts, value)
        self.values[name] = value

    async def change(self, changes: dict[str, Any], actor: str, client_ip: str = "") -> dict[str, Any]:
        """
        Validate, store and apply C{changes} (all or none); returns the values before.
        @raise ConfigChangeError: a key that cannot change live, or a bad value.
        """
        for name, value in changes.items():
            self._check(name, value)
        before = {name: self.values[name] for name in changes}
        await self.db(_store, changes, before, actor, client_ip, self.clock.seconds())
        for name, value in changes.items():
            self._apply(name, value)
            self.stored.add(name)
            self.log.info("system config: {key} changed by {actor}", key=name, actor=actor)
        return before
