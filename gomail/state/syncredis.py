# -*- test-case-name: tests.test_cli_user -*-
"""
A small blocking Redis client for the operator commands (C{gomail user
unlock}), which run outside any reactor: one socket, RESP2, the few commands
they need. The server uses L{gomail.state.redis.RedisStateStore} instead.

It writes the same keys as the server's store: C{prefix} + key.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any, Self

from gomail.configschema import RedisSettings
from gomail.state.interface import StateStoreError

#: Keys asked for per SCAN call.
SCAN_COUNT = 500
_GLOB_SPECIAL = "*?[]\\"


def escape_glob(text: str) -> str:
    """C{text} matched literally by a Redis glob pattern (a key prefix may hold C{*} or C{[})."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in text)


class SyncRedis:
    """
    One blocking connection to the Redis of C{settings}; every failure
    (refused, timed out, an error reply) raises L{StateStoreError}.
    """

    def __init__(self, host: str, port: int, password: str | None, db: int, prefix: str,
                 timeout: float) -> None:
        self.prefix = prefix
        try:
            self._socket = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise StateStoreError(f"cannot connect to Redis at {host}:{port}: {e.strerror or e}") from None
        self._reader = self._socket.makefile("rb")
        if password:
            self.call("AUTH", password)
        if db:
            self.call("SELECT", str(db))

    @classmethod
    def from_settings(cls, settings: RedisSettings) -> SyncRedis:
        """A connection to the configured Redis (C{settings.enabled} must be true)."""
        if settings.url:
            from gomail.state.redis import parse_url

            host, port, password, db = parse_url(settings.url)
        else:
            host, port, password, db = settings.host, settings.port, settings.password or None, settings.db
        return cls(host, port, password, db, settings.keyPrefix, settings.timeout)

    def close(self) -> None:
        self._reader.close()
        self._socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, *args: str | bytes) -> Any:
        """Send one command, return its reply (bytes, int, list, None)."""
        parts = [arg.encode() if isinstance(arg, str) else arg for arg in args]
        request = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        try:
            self._socket.sendall(request)
            return self._reply()
        except OSError as e:
            raise StateStoreError(f"Redis {parts[0].decode('ascii', 'replace')}: {e.strerror or e}") from None

    def _reply(self) -> Any:
        line = self._reader.readline()
        if not line.endswith(b"\r\n"):
            raise StateStoreError("Redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body
        if kind == b"-":
            # The error text names the problem (NOAUTH, WRONGPASS...), never an argument.
            raise StateStoreError("Redis: " + body.decode("utf-8", "replace")[:120])
        if kind == b":":
            return int(body)
        if kind == b"$":
            size = int(body)
            if size < 0:
                return None
            data = self._reader.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(body)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise StateStoreError(f"unexpected Redis reply {line[:20]!r}")

    def keys_matching(self, pattern: str) -> Iterator[str]:
        """The keys (without the prefix) matching C{pattern} (a glob on the unprefixed key), via SCAN."""
        cursor = b"0"
        match = escape_glob(self.prefix) + pattern
        while True:
            cursor, keys = self.call("SCAN", cursor, "MATCH", match, "COUNT", str(SCAN_COUNT))
            for key in keys:
                yield key.decode("utf-8", "surrogateescape")[len(self.prefix):]
            if cursor == b"0":
                return

    def delete(self, keys: list[str]) -> int:
        """Remove C{keys} (unprefixed); how many existed."""
        if not keys:
            return 0
        return int(self.call("DEL", *[self.prefix + key for key in keys]))

    def ttl(self, key: str) -> int:
        """Seconds C{key} (unprefixed) lives on; -2 when absent, -1 without expiry."""
        return int(self.call("TTL", self.prefix + key))


__all__ = ["SCAN_COUNT", "SyncRedis", "escape_glob"]
