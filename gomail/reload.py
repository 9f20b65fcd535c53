# -*- test-case-name: tests.test_reload -*-
"""
SIGHUP: read the configuration again and apply what can change safely while
the server runs.

What is applied at once (the objects holding it read it on every use):

  - C{rateLimits.*}: the sliding-window limits and their failure policy;
  - the lockout and slowdown policy: C{auth.maxFailAttempts},
    C{auth.maxFailAttemptsPerIP}, C{auth.failTTL}, C{auth.lockTTL},
    C{auth.userSlowdownAttempts}, C{auth.userSlowdownWindow},
    C{auth.userSlowdownDelay};
  - nginx's backends and how one is picked: C{nginxAuth.backends},
    C{nginxAuth.strategy} (a new backend is health-checked at once);
  - C{logging.level};
  - plugin settings and C{plugins.timeout} (L{gomail.extension.reloading});
  - the keys the admin API may change live (C{live_keys}, applied by
    C{after_reload}: L{gomail.admin.sysconfig.SystemConfig.reloaded}), which
    also applies the values stored through the API again: a stored value
    wins over the file's.

(The IP blacklist needs no reload: it lives in the user database, whose
changes are read within C{auth.blacklistRefresh}.)

Every other changed key is logged as needing a restart and is not applied
(listeners, the spool, the database, TLS...). A file that does not load (a
syntax error, an unknown key, a bad value) changes nothing: the error is
logged with the key it names. Values are never logged, only key names (some
are secrets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import Any

from twisted.logger import Logger, LogLevel, LogLevelFilterPredicate

from gomail.configload import ConfigError
from gomail.configschema import Config
from gomail.extension.loader import PluginError
from gomail.extension.reloading import PluginReloader
from gomail.web.service import default_backends

#: The auth keys the lockout reads on every check.
LOCKOUT_KEYS = frozenset({"maxFailAttempts", "maxFailAttemptsPerIP", "failTTL", "lockTTL",
                          "userSlowdownAttempts", "userSlowdownWindow", "userSlowdownDelay"})


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ between two configurations (or sections)."""
    keys = []
    for field in dataclasses.fields(old):
        before, after = getattr(old, field.name), getattr(new, field.name)
        name = prefix + field.name
        if dataclasses.is_dataclass(before) and not isinstance(before, type):
            keys += changed_keys(before, after, name + ".")
        elif before != after:
            keys.append(name)
    return keys


class ConfigReloader:
    """
    Loads the configuration again (C{load}, which also applies the command
    line's overrides) and hands the live parts of it to the running objects.

    @param rate_limiter: the object whose C{settings} are the C{rateLimits} section.
    @param lockout: the object whose C{settings} are the C{auth} section (only
        its L{LOCKOUT_KEYS} are taken from a new file).
    @param router: the L{gomail.auth.backends.BackendRouter} (None: auth_http is off).
    @param after_reload: called with the new configuration once it is applied
        (the admin side's system configuration applies its live keys, and its
        stored values again over the file's).
    @param live_keys: the dotted names C{after_reload} applies (not "needs a restart").
    """

    log = Logger()

    def __init__(self, current: Config, load: Callable[[], Config], rate_limiter: Any = None,
                 lockout: Any = None, router: Any = None, plugins: PluginReloader | None = None,
                 log_levels: LogLevelFilterPredicate | None = None,
                 after_reload: Callable[[Config], None] | None = None, live_keys: Collection[str] = ()) -> None:
        self.current = current
        self.load = load
        self.rate_limiter = rate_limiter
        self.lockout = lockout
        self.router = router
        self.plugins = plugins
        self.log_levels = log_levels
        self.after_reload = after_reload
        self.live_keys = frozenset(live_keys) if after_reload is not None else frozenset()

    def _live(self, section: str, name: str) -> bool:
        """Whether the key C{section.name} is applied while the server runs (by a part that is there)."""
        if f"{section}.{name}" in self.live_keys:
            return True
        if section == "rateLimits":
            return self.rate_limiter is not None
        if section == "auth":
            return name in LOCKOUT_KEYS and self.lockout is not None
        if section == "nginxAuth":
            return name in ("backends", "strategy") and self.router is not None
        if section == "logging":
            return name == "level" and self.log_levels is not None
        return False

    def reload(self) -> tuple[list[str], list[str]]:
        """Read and apply; returns (keys applied, keys that need a restart)."""
        try:
            new = self.load()
        except ConfigError as e:
            self.log.error("SIGHUP: configuration not reloaded, nothing changed: {error}", error=str(e))
            return [], []
        applied: list[str] = []
        restart: list[str] = []
        current = self.current
        apply_plugins = None
        if self.plugins is not None and new.plugins != current.plugins:
            try:
                applied, restart, apply_plugins = self.plugins.prepare(new.plugins)
            except PluginError as e:
                self.log.error("SIGHUP: configuration not reloaded, nothing changed: {error}", error=str(e))
                return [], []
        for key in changed_keys(current, new):
            section, _, name = key.partition(".")
            if section == "plugins" and apply_plugins is not None:
                continue  # the plugin reloader named these keys
            if self._live(section, name):
                applied.append(key)
            else:
                restart.append(key)
        if self.rate_limiter is not None and any(key.startswith("rateLimits.") for key in applied):
            self.rate_limiter.settings = new.rateLimits
            current = dataclasses.replace(current, rateLimits=new.rateLimits)
        lockout_changes = {key.partition(".")[2] for key in applied if key.startswith("auth.")} & LOCKOUT_KEYS
        if lockout_changes and self.lockout is not None:
            auth = dataclasses.replace(current.auth, **{name: getattr(new.auth, name) for name in lockout_changes})
            self.lockout.settings = dataclasses.replace(self.lockout.settings,
                                                        **{name: getattr(new.auth, name) for name in lockout_changes})
            current = dataclasses.replace(current, auth=auth)
        if self.router is not None and any(key in ("nginxAuth.backends", "nginxAuth.strategy") for key in applied):
            self.router.replace(default_backends(new), new.nginxAuth.strategy).addErrback(
                lambda failure: self.log.failure("SIGHUP: checking the new backends failed", failure))
            current = dataclasses.replace(current, nginxAuth=dataclasses.replace(
                current.nginxAuth, backends=new.nginxAuth.backends, strategy=new.nginxAuth.strategy))
        if apply_plugins is not None:
            apply_plugins()  # every plugin checked its settings in prepare(): this only sets them
            current = dataclasses.replace(current, plugins=new.plugins)
        if "logging.level" in applied and self.log_levels is not None:
            self.log_levels.defaultLogLevel = LogLevel.levelWithName(new.logging.level)
            current = dataclasses.replace(current, logging=dataclasses.replace(current.logging,
                                                                               level=new.logging.level))
        for key in applied:
            if key in self.live_keys:
                section, _, name = key.partition(".")
                current = dataclasses.replace(current, **{section: dataclasses.replace(
                    getattr(current, section), **{name: getattr(getattr(new, section), name)})})
        self.current = current
        if self.after_reload is not None:
            self.after_reload(new)
        for key in applied:
            self.log.info("SIGHUP: applied {key}", key=key)
        for key in restart:
            self.log.warn("SIGHUP: {key} changed but needs a restart: not applied", key=key)
        if not applied and not restart:
            self.log.info("SIGHUP: configuration reloaded, nothing changed")
        return applied, restart
