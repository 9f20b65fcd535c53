# -*- test-case-name: tests.test_plugins -*-
"""
The enabled plugins, sorted by what they extend, for the composition root
(L{gomail.root.build_service}) to hand to each part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import IService, Service
from twisted.logger import Logger

from gomail.configschema import Config
from gomail.extension.events import DeliveryEvents
from gomail.extension.loader import PluginError, Plugins, load_plugins
from gomail.extension.runner import HookRunner
from gomail.extension.smtphooks import SMTPHooks
from gomail.interfaces import (
    IAuthSource,
    IBackendStrategy,
    IDeliveryObserver,
    IHeaderFilter,
    IRoutedDeliveryAgent,
    IServiceProvider,
    ISMTPHook,
)

log = Logger()
#: Settings whose values are not logged: secrets, and URLs (a webhook's path often holds a token).
_SECRET_KEY = re.compile(r"secret|password|passwd|token|key|credential|url|uri", re.IGNORECASE)


@dataclass
class PluginParts:
    """What the plugins add to each part of the server."""

    plugins: Plugins
    runner: HookRunner
    smtp_hooks: SMTPHooks
    routes: list[tuple[str, Any]] = field(default_factory=list)  # (domain, IRoutedDeliveryAgent)
    events: DeliveryEvents | None = None
    auth_sources: list[tuple[str, Any]] = field(default_factory=list)
    backend_strategy: tuple[str, Any] | None = None
    services: list[IService] = field(default_factory=list)


def build_plugins(config: Config, reactor: Any) -> PluginParts:
    """
    Load and build the enabled plugins (L{gomail.extension.loader}) and log each one.

    @raise PluginError: one line naming the plugin that cannot be used.
    """
    plugins = load_plugins(config.plugins, reactor, config.smtp.hostname, config.dataDir)
    runner = HookRunner(reactor, config.plugins.timeout)
    for plugin in plugins:
        log.info("plugin {name} loaded from {source}: {interfaces}; settings: {settings}", name=plugin.name,
                 source=plugin.source, interfaces=", ".join(i.__name__ for i in plugin.interfaces),
                 settings=_printable(dict(config.plugins.enabled).get(plugin.name, {})))
    routes: list[tuple[str, Any]] = []
    for name, agent in plugins.providing(IRoutedDeliveryAgent):
        domains = list(agent.domains)
        if not domains:
            raise PluginError(f"plugin {name} delivers mail but names no domains")
        routes.extend((domain, agent) for domain in domains)
    observers = plugins.providing(IDeliveryObserver)
    strategies = plugins.providing(IBackendStrategy)
    if len(strategies) > 1:
        raise PluginError(f"plugins {strategies[0][0]} and {strategies[1][0]} both choose nginx backends: "
                          "enable one")
    parts = PluginParts(
        plugins, runner,
        SMTPHooks(runner, plugins.providing(ISMTPHook), plugins.providing(IHeaderFilter)),
        routes=routes,
        events=DeliveryEvents(runner, observers, reactor) if observers else None,
        auth_sources=plugins.providing(IAuthSource),
        backend_strategy=strategies[0] if strategies else None)
    return parts


def plugin_services(parts: PluginParts, context: Any) -> list[IService]:
    """The services the IServiceProvider plugins contribute."""
    services: list[IService] = []
    for name, provider in parts.plugins.providing(IServiceProvider):
        try:
            contributed = list(provider.services(context))
        except Exception as e:
            raise PluginError(f"plugin {name}: services() failed: {type(e).__name__}: {e}") from e
        for service in contributed:
            if not IService.providedBy(service):
                raise PluginError(f"plugin {name}: services() gave {service!r}, not an IService")
        services.extend(contributed)
    stoppable = [p.extension for p in parts.plugins if callable(getattr(p.extension, "stop", None))]
    if stoppable:
        services.append(_Stopper(stoppable))
    return services


class _Stopper(Service):
    """Calls the plugins' C{stop()} when gomail stops (before the parts they use stop)."""

    name = "plugins"  # type: ignore[assignment]

    def __init__(self, extensions: list[Any]) -> None:
        self.extensions = extensions

    def stopService(self) -> None:  # type: ignore[override]
        super().stopService()
        for extension in self.extensions:
            try:
                extension.stop()
            except Exception:  # noqa: BLE001 -- one plugin's failure must not keep gomail from stopping
                log.failure("plugin stop() failed")


def _printable(settings: dict[str, Any]) -> str:
    """A plugin's settings for the log, values of keys that look secret left out, at any depth."""
    return ", ".join(f"{key}={value!r}" for key, value in _redacted(settings).items()) or "none"


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: ("(set)" if _SECRET_KEY.search(str(key)) else _redacted(item)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item) for item in value]
    return value
