# -*- test-case-name: tests.test_cli_user -*-
"""
C{gomail user unlock NAME [--ip IP]}: lift a user's lockout and slowdown
(L{gomail.auth.lockout}) in the configured shared state store.

Locks live where the server keeps its state: in Redis when C{[redis]} is
configured, which this command reaches directly (blocking, outside any
reactor), else in the running server's own memory, which no other process can
reach: the command says so and fails rather than pretend.
"""

from __future__ import annotations

from typing import TextIO

from gomail.auth.lockout import LOCK_IP, state_key, unlock_keys
from gomail.auth.names import canonical_username
from gomail.configload import Config
from gomail.netaddr import ip_text
from gomail.state.interface import StateStoreError


class UnlockError(Exception):
    """The marks could not be removed; the text says why and what to do."""


def unlock(config: Config, name: str, ip: str | None, out: TextIO) -> int:
    """
    Remove the lock and failure marks of user C{name} (on client C{ip} only,
    when given) from the configured Redis; print what was done. @return: 0.

    @raise ValueError: C{name} is no user name, C{ip} no IP address.
    @raise UnlockError: no Redis is configured, or it cannot be used.
    """
    name = canonical_username(name)
    address = None
    if ip is not None:
        address = ip_text(ip.strip())
        if address is None:
            raise ValueError(f"{ip!r} is not an IP address")
    if not config.redis.enabled:
        raise UnlockError(
            "no [redis] is configured: the server keeps its locks in its own memory, which this command "
            f"cannot reach. They end by themselves after auth.lockTTL ({config.auth.lockTTL} s) or when "
            "the server restarts; configure [redis] to manage them from here")
    from gomail.state.syncredis import SyncRedis

    try:
        with SyncRedis.from_settings(config.redis) as redis:
            keys, patterns = unlock_keys(name, address)
            for pattern in patterns:
                keys.extend(redis.keys_matching(pattern))
            removed = redis.delete(keys)
            ip_lock = -2 if address is None else redis.ttl(state_key(LOCK_IP, address))
    except (StateStoreError, ValueError) as e:
        raise UnlockError(f"cannot use Redis: {e}") from None
    where = "" if address is None else f" on {address}"
    if removed:
        print(f"unlocked {name}{where}: removed {removed} lock and failure mark{'s' * (removed != 1)}",
              file=out)
    else:
        print(f"{name} was not locked or slowed down{where}", file=out)
    if ip_lock >= 0:
        # Not lifted here: that lock guards every user against this address.
        print(f"note: the client IP {address} itself is locked for every user "
              f"({ip_lock} s left, auth.maxFailAttemptsPerIP); it ends by itself", file=out)
    return 0


__all__ = ["UnlockError", "unlock"]
