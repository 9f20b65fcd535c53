# -*- test-case-name: tests.test_plugins -*-
"""
Finding plugins and building the enabled ones.

Discovery is C{twisted.plugin.getPlugins(IGomailPlugin, gomail.plugins)}:
the built-in plugins, the C{gomail/plugins/} drop-ins of installed packages,
and the directories of C{plugins.path}, added to the package's path. Every
module there is imported first, here, so that one that cannot be imported
stops the start with one line naming its file (C{getPlugins} alone would log
the traceback and go on without it).

A plugin is enabled by its table, C{[plugins.<name>]} (C{enabled = false} in
it disables it again), and built with that table as its settings; the
extension object it returns must provide at least one of
L{EXTENSION_INTERFACES}, each verified with C{zope.interface.verify}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from twisted.plugin import getPlugins
from twisted.python.modules import getModule
from zope.interface import Interface
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

import gomail.plugins
from gomail.configschema import PluginSettings
from gomail.interfaces import (
    IAuthSource,
    IBackendStrategy,
    IDeliveryObserver,
    IGomailPlugin,
    IHeaderFilter,
    IRoutedDeliveryAgent,
    IServiceProvider,
    ISMTPHook,
)
from gomail.plugin import PluginConfigError, PluginContext, Settings

#: What an enabled plugin's object may provide (at least one).
EXTENSION_INTERFACES: tuple[type[Interface], ...] = (
    ISMTPHook, IHeaderFilter, IRoutedDeliveryAgent, IDeliveryObserver, IAuthSource, IBackendStrategy,
    IServiceProvider)


class PluginError(Exception):
    """A plugin cannot be loaded or built: C{str()} is one line naming it and the reason."""


@dataclass(frozen=True)
class FoundPlugin:
    """A plugin discovered: its declaration and the file it came from."""

    spec: Any  # an IGomailPlugin provider
    source: str

    @property
    def name(self) -> str:
        """The plugin's name, as tables enable it."""
        return str(self.spec.name)


@dataclass(frozen=True)
class LoadedPlugin:
    """An enabled plugin: its extension object and the interfaces it provides."""

    name: str
    extension: Any
    interfaces: tuple[type[Interface], ...]
    source: str


class Plugins:
    """The enabled plugins, in the configuration's order."""

    def __init__(self, loaded: Iterable[LoadedPlugin] = ()) -> None:
        self.loaded = list(loaded)

    def providing(self, interface: type[Interface]) -> list[tuple[str, Any]]:
        """(name, extension) of each enabled plugin providing C{interface}, in order."""
        return [(p.name, p.extension) for p in self.loaded if interface in p.interfaces]

    def __iter__(self) -> Iterator[LoadedPlugin]:
        return iter(self.loaded)

    def __len__(self) -> int:
        return len(self.loaded)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def use_path(paths: Iterable[str]) -> None:
    """Add the directories of C{plugins.path} to the drop-in package (once each)."""
    package_path = gomail.plugins.__path__
    for directory in paths:
        directory = os.path.abspath(directory)
        if not os.path.isdir(directory):
            raise PluginError(f"plugins.path: {directory} is not a directory")
        if directory not in package_path:
            package_path.append(directory)


def discover(paths: Iterable[str] = ()) -> dict[str, FoundPlugin]:
    """
    Every plugin found, by name.

    @raise PluginError: a plugin module cannot be imported, or two plugins share a name.
    """
    use_path(paths)
    sources: dict[int, str] = {}
    for module in getModule(gomail.plugins.__name__).iterModules():
        try:
            loaded = module.load()
        except BaseException as e:
            raise PluginError(f"plugin module {module.filePath.path} cannot be imported: {_one_line(e)}") from e
        for value in vars(loaded).values():
            if IGomailPlugin.providedBy(value):
                sources[id(value)] = module.filePath.path
    found: dict[str, FoundPlugin] = {}
    for spec in getPlugins(IGomailPlugin, gomail.plugins):
        source = sources.get(id(spec), "?")
        name = str(getattr(spec, "name", ""))
        if name in found and found[name].spec is not spec:
            raise PluginError(f"plugin {name}: defined twice, in {found[name].source} and {source}")
        found[name] = FoundPlugin(spec, source)
    return found


def load_plugins(settings: PluginSettings, reactor: Any, hostname: str, data_dir: str) -> Plugins:
    """
    Build every enabled plugin.

    @raise PluginError: one line naming the plugin and what is wrong.
    """
    enabled = [(name, table) for name, table in settings.enabled if table.get("enabled", True) is not False]
    if not enabled:
        return Plugins()
    found = discover(settings.path)
    loaded = []
    for name, table in enabled:
        plugin = found.get(name)
        if plugin is None:
            known = ", ".join(sorted(found)) or "none"
            raise PluginError(f"plugins.{name}: no such plugin (found: {known})")
        if not isinstance(table.get("enabled", True), bool):
            raise PluginError(f"plugins.{name}.enabled: must be true or false")
        loaded.append(build_found(plugin, table, PluginContext(reactor, hostname, data_dir, name)))
    return Plugins(loaded)


def build_found(plugin: FoundPlugin, table: dict[str, Any], context: PluginContext) -> LoadedPlugin:
    """
    Build a discovered plugin with its table, and check what it built.

    @raise PluginError: one line naming the plugin and what is wrong.
    """
    name = plugin.name
    settings = Settings(name, table)
    try:
        extension = plugin.spec.build(settings, context)
    except PluginConfigError as e:
        raise PluginError(f"plugins.{name}.{e.key}: {e.problem}" if e.key else f"plugins.{name}: {e.problem}") from e
    except Exception as e:
        raise PluginError(f"plugin {name} ({plugin.source}) could not be built: {_one_line(e)}") from e
    unread = settings.unread()
    if unread:
        raise PluginError(f"plugins.{name}.{unread[0]}: unknown key")
    interfaces = tuple(i for i in EXTENSION_INTERFACES if i.providedBy(extension))
    if not interfaces:
        wanted = ", ".join(i.__name__ for i in EXTENSION_INTERFACES)
        raise PluginError(f"plugin {name} ({plugin.source}) provides none of gomail's interfaces ({wanted})")
    for interface in interfaces:
        try:
            verifyObject(interface, extension)
        except Invalid as e:
            raise PluginError(f"plugin {name} does not implement {interface.__name__}: {_one_line(e)}") from e
    return LoadedPlugin(name, extension, interfaces, plugin.source)
