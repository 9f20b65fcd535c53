# -*- test-case-name: tests.test_state -*-
"""
The contract of a state store: the few atomic operations that lockout, TOTP
replay marks, the authentication cache and rate limits are built from.

Keys are text; the store adds its own prefix. Values are bytes. Every TTL is
in whole seconds and every operation returns a Deferred. A store that cannot
answer (Redis down, timeout) fails the Deferred with L{StateStoreError}; callers
turn that into a temporary error, never into a success.
"""

from __future__ import annotations

from zope.interface import Interface


class StateStoreError(Exception):
    """The store could not answer (unreachable, timed out, refused)."""


class IStateStore(Interface):
    """Counters, TTL keys, high-water marks and sliding-window logs shared by every protocol."""

    def incr(key, ttl):
        """
        Add one to the counter C{key} (created at 0) and return the new value.
        The TTL is set when the counter is created and not extended by later
        increments: the counter counts over a fixed window from its first hit.

        @return: Deferred[int]
        """

    def get(key):
        """@return: Deferred[bytes | None], the value, or None when absent or expired."""

    def set(key, value, ttl):
        """Store C{value} (bytes) under C{key} for C{ttl} seconds. @return: Deferred[None]"""

    def add(key, value, ttl):
        """
        Store C{value} under C{key} for C{ttl} seconds only if C{key} is absent.

        @return: Deferred[bool], True when this call stored it.
        """

    def advance(key, value, ttl):
        """
        Store the whole number C{value} under C{key} for C{ttl} seconds if the
        key is absent or holds a smaller number (a high-water mark, such as the
        last TOTP time step used); a refused call leaves the key and its TTL as
        they were. A key holding something that is not a number fails with
        L{StateStoreError}.

        @return: Deferred[bool], True when this call stored C{value}.
        """

    def delete(*keys):
        """Remove keys (absent ones are ignored). @return: Deferred[None]"""

    def window_count(key, window):
        """
        How many events the log C{key} holds from the last C{window} seconds
        (a sliding window: older events are dropped, nothing resets on the hour).

        @return: Deferred[int]
        """

    def window_add(key, window):
        """
        Record one event now in the log C{key}; the log expires C{window}
        seconds after its newest event.

        @return: Deferred[int], the count in the window including this event.
        """

    def ping():
        """@return: Deferred[None] that fails with StateStoreError when the store is unusable."""
