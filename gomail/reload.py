# -*- test-case-name: tests.test_reload -*-
"""
SIGHUP: read the configuration again and apply what can change safely while
the server runs.

What is applied at once (the objects holding it read it on every use):

  - C{rateLimits.*}: the sliding-window limits and their failure policy;
  - the lockout and slowdown policy: C{auth.maxFailAttempts},
    C{auth.maxFailAttemptsPerIP}, C{auth.failTTL}, C{auth.lockTTL},
    C{auth.userSlowdownAttempts}, C{auth.userSlowdownWindow},
    C{auth.userSlowdownDelay}.

Every other changed key is logged as needing a restart and is not applied
(listeners, the spool, the database, TLS...). A file that does not load (a
syntax error, an unknown key, a bad value) changes nothing: the error is
logged with the key it names. Values are never logged, only key names (some
are secrets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from gomail.configload import ConfigError
from gomail.configschema import Config

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
    """

    log = Logger()

    def __init__(self, current: Config, load: Callable[[], Config], rate_limiter: Any = None,
                 lockout: Any = None) -> None:
        self.current = current
        self.load = load
        self.rate_limiter = rate_limiter
        self.lockout = lockout

    def reload(self) -> tuple[list[str], list[str]]:
        """Read and apply; returns (keys applied, keys that need a restart)."""
        try:
            new = self.load()
        except ConfigError as e:
            self.log.error("SIGHUP: configuration not reloaded, nothing changed: {error}", error=str(e))
            return [], []
        applied, restart = [], []
        current = self.current
        for key in changed_keys(current, new):
            section, _, name = key.partition(".")
            if section == "rateLimits" and self.rate_limiter is not None or section == "auth" and name in LOCKOUT_KEYS and self.lockout is not None:
                applied.append(key)
            else:
                restart.append(key)
        if any(key.startswith("rateLimits.") for key in applied):
            self.rate_limiter.settings = new.rateLimits
            current = dataclasses.replace(current, rateLimits=new.rateLimits)
        lockout_changes = {key.partition(".")[2] for key in applied if key.startswith("auth.")}
        if lockout_changes:
            auth = dataclasses.replace(current.auth, **{name: getattr(new.auth, name) for name in lockout_changes})
            self.lockout.settings = dataclasses.replace(self.lockout.settings,
                                                        **{name: getattr(new.auth, name) for name in lockout_changes})
            current = dataclasses.replace(current, auth=auth)
        self.current = current
        for key in applied:
            self.log.info("SIGHUP: applied {key}", key=key)
        for key in restart:
            self.log.warn("SIGHUP: {key} changed but needs a restart: not applied", key=key)
        if not applied and not restart:
            self.log.info("SIGHUP: configuration reloaded, nothing changed")
        return applied, restart
