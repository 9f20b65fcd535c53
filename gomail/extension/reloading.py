# -*- test-case-name: tests.test_plugins_reload -*-
"""
SIGHUP for plugins (see L{gomail.reload}): what of a new C{[plugins]}
section can change while the server runs.

- C{plugins.timeout}: at once.
- A plugin's settings, when the plugin is a stateless policy (it provides
  only L{ISMTPHook} and L{IHeaderFilter}): it is built again from its new
  table and replaces the old object in the hook lists; the next command of
  every session uses it, sessions are not dropped.
- A plugin's settings, when its object has a C{reconfigure(settings)} method
  (a plugin with state, such as a queue): called with the new
  L{gomail.plugin.Settings}, it checks them (raising L{PluginConfigError})
  and returns a function of no arguments that applies them; it changes
  nothing itself. Every plugin's check runs before anything is applied.
- Anything else (a plugin enabled or disabled, C{plugins.path}, a plugin that
  neither is stateless nor can reconfigure) needs a restart.

Everything is prepared first: a new table a plugin refuses stops the whole
reload (L{PluginError}), and nothing changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gomail.configschema import PluginSettings
from gomail.extension.loader import PluginError, build_found, discover
from gomail.extension.wiring import PluginParts
from gomail.interfaces import IHeaderFilter, ISMTPHook
from gomail.plugin import PluginConfigError, PluginContext, Settings

_STATELESS = {ISMTPHook, IHeaderFilter}


class PluginReloader:
    """Applies a new C{[plugins]} section to the running plugins (see the module docstring)."""

    def __init__(self, parts: PluginParts, settings: PluginSettings, reactor: Any, hostname: str,
                 data_dir: str) -> None:
        self.parts, self.settings = parts, settings
        self.reactor, self.hostname, self.data_dir = reactor, hostname, data_dir

    def prepare(self, new: PluginSettings) -> tuple[list[str], list[str], Callable[[], None]]:
        """
        What a new section would change: (keys applied, keys needing a restart,
        the function applying them).

        @raise PluginError: a plugin refuses its new settings (nothing is applied).
        """
        old = self.settings
        applied, restart = [], []
        steps: list[Callable[[], None]] = []
        if new.timeout != old.timeout:
            applied.append("plugins.timeout")
            steps.append(lambda: setattr(self.parts.runner, "timeout", new.timeout))
        if new.path != old.path:
            restart.append("plugins.path")
        before, after = _enabled(old), _enabled(new)
        restart += [f"plugins.{name}" for name in sorted(set(before) ^ set(after))]
        for plugin in self.parts.plugins:
            name = plugin.name
            if name not in after or after[name] == before.get(name):
                continue
            step = self._change(plugin, after[name])
            if step is None:
                restart.append(f"plugins.{name}")
            else:
                applied.append(f"plugins.{name}")
                steps.append(step)

        def apply() -> None:
            for step in steps:
                step()
            self.settings = new

        return applied, restart, apply

    def _change(self, plugin: Any, table: dict[str, Any]) -> Callable[[], None] | None:
        if set(plugin.interfaces) <= _STATELESS:
            found = discover(self.settings.path).get(plugin.name)
            if found is None:
                return None
            context = PluginContext(self.reactor, self.hostname, self.data_dir, plugin.name)
            replacement = build_found(found, table, context)
            return lambda: self._replace(plugin, replacement)
        reconfigure = getattr(plugin.extension, "reconfigure", None)
        if reconfigure is None:
            return None
        settings = Settings(plugin.name, table)
        try:
            apply = reconfigure(settings)
        except PluginConfigError as e:
            raise PluginError(f"plugins.{plugin.name}.{e.key}: {e.problem}") from e
        unread = settings.unread()
        if unread:
            raise PluginError(f"plugins.{plugin.name}.{unread[0]}: unknown key")
        if not callable(apply):
            raise PluginError(f"plugin {plugin.name}: reconfigure() must return the function applying the "
                              "settings it checked")
        return apply

    def _replace(self, plugin: Any, replacement: Any) -> None:
        hooks = self.parts.smtp_hooks
        for entries in (hooks.hooks, hooks.filters):
            for index, (name, _) in enumerate(entries):
                if name == plugin.name:
                    entries[index] = (name, replacement.extension)
        self.parts.plugins.loaded = [replacement if p is plugin else p for p in self.parts.plugins.loaded]


def _enabled(settings: PluginSettings) -> dict[str, dict[str, Any]]:
    return {name: table for name, table in settings.enabled if table.get("enabled", True) is not False}
