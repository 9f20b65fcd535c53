"""Shared state (counters, TTL keys, set-if-absent marks, sliding-window logs) in memory or Redis."""

from gomail.state.interface import IStateStore, StateStoreError

__all__ = ["IStateStore", "StateStoreError"]
