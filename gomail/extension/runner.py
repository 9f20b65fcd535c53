# -*- test-case-name: tests.test_plugins -*-
"""
Every call into a plugin goes through L{HookRunner}: bounded by
C{plugins.timeout}, its failure kept from the caller's own work, and counted
per plugin (calls, failures by kind, seconds) for C{/metrics}.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure


class HookFailed(Exception):
    """A plugin's hook raised or did not answer in time (logged already): the caller answers 'try again later'."""

    def __init__(self, plugin: str, kind: str) -> None:
        super().__init__(plugin, kind)
        self.plugin, self.kind = plugin, kind


@dataclass
class PluginStats:
    """One plugin's calls, failures (C{error}: raised, C{timeout}: cut off) and the seconds they took."""

    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    seconds: float = 0.0


class HookRunner:
    """Calls plugins' methods, bounded and counted (see the module docstring)."""

    log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.stats: dict[str, PluginStats] = {}

    def _stats(self, plugin: str) -> PluginStats:
        stats = self.stats.get(plugin)
        if stats is None:
            stats = self.stats[plugin] = PluginStats()
        return stats

    def call(self, plugin: str, method: Callable[..., Any], *args: Any) -> Deferred:
        """
        C{method(*args)}, whose answer may be a value, a Deferred or a coroutine.

        @return: a Deferred firing with the answer, or failing with
            L{HookFailed} when the hook raised or took longer than the timeout
            (then its Deferred is cancelled).
        """
        stats = self._stats(plugin)
        stats.calls += 1
        started = self.clock.seconds()
        d = maybeDeferred(_answer, method, *args)
        d.addTimeout(self.timeout, self.clock)

        def done(result: Any) -> Any:
            stats.seconds += self.clock.seconds() - started
            if not isinstance(result, Failure):
                return result
            name = getattr(method, "__name__", "hook")
            if result.check(CancelledError):
                return result  # the caller gave up (its client left): not the plugin's failure
            if result.check(TimeoutError):
                stats.timeouts += 1
                self.log.error("plugin {plugin}: {hook} did not answer within plugins.timeout ({timeout} s)",
                               plugin=plugin, hook=name, timeout=self.timeout)
                raise HookFailed(plugin, "timeout")
            stats.errors += 1
            self.log.failure("plugin {plugin}: {hook} failed", result, plugin=plugin, hook=name)
            raise HookFailed(plugin, "error")

        return d.addBoth(done)

    def call_now(self, plugin: str, method: Callable[..., Any], *args: Any, default: Any = None) -> Any:
        """A quick synchronous call (a header filter's): its answer, or C{default} when it raised (logged, counted)."""
        stats = self._stats(plugin)
        stats.calls += 1
        try:
            return method(*args)
        except Exception:  # noqa: BLE001 -- a plugin's bug must not end the session
            stats.errors += 1
            self.log.failure("plugin {plugin}: {hook} failed", plugin=plugin,
                             hook=getattr(method, "__name__", "hook"))
            return default


def _answer(method: Callable[..., Any], *args: Any) -> Any:
    result = method(*args)
    if inspect.iscoroutine(result):
        return Deferred.fromCoroutine(result)
    return result


def plugin_metrics(runner: HookRunner, plugins: Any = ()) -> Any:
    """
    The Prometheus families of the plugins' calls, and the numbers plugins
    report themselves (an extension object's optional C{counters()}, a dict
    of name to number: C{gomail_plugin_value{plugin, name}}). Registered on
    gomail's registry by the composition root.
    """
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def describe(self) -> list:
            return []

        def collect(self) -> Any:
            calls = CounterMetricFamily("gomail_plugin_calls", "Calls into each plugin", labels=["plugin"])
            failures = CounterMetricFamily("gomail_plugin_failures",
                                           "Plugin calls that raised (error) or were cut off (timeout)",
                                           labels=["plugin", "kind"])
            seconds = CounterMetricFamily("gomail_plugin_seconds", "Time spent waiting for each plugin",
                                          labels=["plugin"])
            for name, stats in sorted(runner.stats.items()):
                calls.add_metric([name], stats.calls)
                failures.add_metric([name, "error"], stats.errors)
                failures.add_metric([name, "timeout"], stats.timeouts)
                seconds.add_metric([name], stats.seconds)
            yield from (calls, failures, seconds)
            values = GaugeMetricFamily("gomail_plugin_value", "Numbers a plugin reports (its counters())",
                                       labels=["plugin", "name"])
            for plugin in plugins:
                counters = getattr(plugin.extension, "counters", None)
                if callable(counters):
                    for name, value in sorted(counters().items()):
                        values.add_metric([plugin.name, str(name)], value)
            yield values

    return Collector()
