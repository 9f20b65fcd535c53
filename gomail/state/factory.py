# -*- test-case-name: tests.test_state -*-
"""Chooses the state store from the configuration: in memory, or Redis when ``redis.url`` or ``redis.host`` is set."""

from __future__ import annotations

from typing import Any

from gomail.configschema import RedisSettings


def make_state_store(settings: RedisSettings, reactor: Any) -> Any:
    """An L{IStateStore}: shared through Redis when configured, else this process's memory."""
    if not settings.enabled:
        from gomail.state.memory import MemoryStateStore

        return MemoryStateStore(reactor)
    from gomail.state.redis import RedisStateStore

    if settings.url:
        return RedisStateStore.from_url(settings.url, clock=reactor, prefix=settings.keyPrefix,
                                        timeout=settings.timeout, reactor=reactor)
    return RedisStateStore(reactor, settings.host, settings.port, settings.password or None, settings.db,
                           prefix=settings.keyPrefix, timeout=settings.timeout, reactor=reactor)
