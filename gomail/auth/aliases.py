# -*- test-case-name: tests.test_smtp_recipients,tests.test_cli_alias -*-
"""
Aliases and per-domain catch-alls, kept in the user database (table
C{aliases}, created by the schema migrations of L{gomail.auth.userdb}).

An alias is an address of a local domain (C{info@example.com}) that delivers
to one or more other addresses; a catch-all (C{@example.com}) takes every
address of its domain that is neither a user nor an alias. Alias names are
stored canonical: the domain as L{gomail.smtp.address} writes it, the local
part lower-cased (local parts of our own domains are case-insensitive, as
user names are). Targets are canonical addresses, local or not.

As in L{gomail.auth.userdb}, the functions take a DB-API cursor first and
run synchronously: the C{gomail alias} command runs them on its own
connection, the server through L{AliasStore} in the user database's thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed

from gomail.auth.userdb import UserDBError, data_version
from gomail.smtp.address import canonical_address, canonical_domain

#: Most targets one alias may have (the fan-out of one RCPT is bounded by smtp.maxRecipients too).
MAX_TARGETS = 1000

#: An alias table: canonical alias name -> its targets.
Table = Mapping[str, tuple[str, ...]]


class NoSuchAlias(UserDBError):
    """No alias of that (canonical) name, or it has no such target."""


@dataclass(frozen=True)
class Alias:
    """One alias (C{info@example.com}) or catch-all (C{@example.com}) and where it delivers."""

    address: str
    targets: tuple[str, ...]
    created: float = 0.0
    updated: float = 0.0

    @property
    def catch_all(self) -> bool:
        """Whether this is a domain's catch-all."""
        return self.address.startswith("@")


# -- canonical names ---------------------------------------------------------------


def mailbox_key(address: str) -> str:
    """
    The key a canonical address is looked up by among aliases (and users):
    the local part lower-cased, the domain as it is.
    """
    local, _, domain = address.rpartition("@")
    return f"{local.lower()}@{domain}"


def alias_name(text: str) -> str:
    """
    The canonical name of an alias (C{Info@Example.COM} -> C{info@example.com})
    or catch-all (C{@Example.COM.} -> C{@example.com}).

    @raise ValueError: neither an address nor C{@domain}.
    """
    text = text.strip()
    if text.startswith("@"):
        return "@" + canonical_domain(text[1:])
    try:
        return mailbox_key(canonical_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is neither an address (info@example.com) nor a domain's "
                         f"catch-all (@example.com)") from None


def alias_targets(texts: Iterable[str]) -> tuple[str, ...]:
    """
    Canonical targets, in order and without duplicates (addresses differing
    only in the case of the local part are one); each text may hold several,
    separated by commas.

    @raise ValueError: a target that is no address, none at all, or too many.
    """
    targets: dict[str, str] = {}  # by mailbox_key
    for text in texts:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                target = canonical_address(part)
            except ValueError:
                raise ValueError(f"the target {part!r} is not an address such as bob@example.com") from None
            targets.setdefault(mailbox_key(target), target)
    if not targets:
        raise ValueError("an alias needs at least one target address")
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"an alias may have at most {MAX_TARGETS} targets")
    return tuple(targets.values())


# -- the table -----------------------------------------------------------------------


def _alias(row: tuple) -> Alias:
    address, targets, created, updated = row
    return Alias(address, tuple(json.loads(targets)), created, updated)


def get_alias(cursor: Any, name: str) -> Alias | None:
    """The alias or catch-all C{name}, or None."""
    cursor.execute("SELECT address, targets, created, updated FROM aliases WHERE address = ?",
                   (alias_name(name),))
    row = cursor.fetchone()
    return None if row is None else _alias(row)


def list_aliases(cursor: Any) -> list[Alias]:
    """Every alias and catch-all, by name."""
    cursor.execute("SELECT address, targets, created, updated FROM aliases ORDER BY address")
    return [_alias(row) for row in cursor.fetchall()]


def add_alias(cursor: Any, name: str, targets: Iterable[str], now: float) -> Alias:
    """
    Create the alias C{name} with C{targets}, or add them to its targets;
    returns the alias as it now is.

    @raise ValueError: a bad name or target, or too many targets.
    """
    name, new = alias_name(name), alias_targets(targets)
    old = get_alias(cursor, name)
    merged = alias_targets([*(old.targets if old else ()), *new])
    if old is None:
        cursor.execute("INSERT INTO aliases (address, targets, created, updated) VALUES (?, ?, ?, ?)",
                       (name, json.dumps(list(merged)), now, now))
        return Alias(name, merged, now, now)
    cursor.execute("UPDATE aliases SET targets = ?, updated = ? WHERE address = ?",
                   (json.dumps(list(merged)), now, name))
    return Alias(name, merged, old.created, now)


def remove_alias(cursor: Any, name: str, targets: Iterable[str] = (), now: float | None = None) -> Alias | None:
    """
    Remove the alias C{name}, or only some of its C{targets} (the alias goes
    when none is left); returns what is left of it, or None.

    @raise NoSuchAlias: no such alias, or it has no such target.
    """
    name = alias_name(name)
    old = get_alias(cursor, name)
    if old is None:
        raise NoSuchAlias(f"no alias {name}")
    drop = {mailbox_key(t) for t in (alias_targets(targets) if targets else old.targets)}
    missing = drop - {mailbox_key(t) for t in old.targets}
    if missing:
        raise NoSuchAlias(f"alias {name} has no target {min(missing)}")
    left = tuple(t for t in old.targets if mailbox_key(t) not in drop)
    if not left:
        cursor.execute("DELETE FROM aliases WHERE address = ?", (name,))
        return None
    updated = old.updated if now is None else now
    cursor.execute("UPDATE aliases SET targets = ?, updated = ? WHERE address = ?",
                   (json.dumps(list(left)), updated, name))
    return Alias(name, left, old.created, updated)


def snapshot(cursor: Any, known_version: int | None) -> tuple[int, dict[str, tuple[str, ...]] | None]:
    """
    SQLite's C{data_version} of this connection, and the whole alias table
    unless that version is C{known_version} (nothing changed since).
    """
    version = data_version(cursor)
    if version == known_version:
        return version, None
    cursor.execute("SELECT address, targets FROM aliases")
    return version, {address: tuple(json.loads(targets)) for address, targets in cursor.fetchall()}


# -- the server's view -----------------------------------------------------------------


class AliasStore:
    """
    The alias table as the server reads it: in memory, looked up without a
    query. Once the copy is C{refresh} seconds old (C{auth.userRefresh}), the
    next lookup first asks SQLite whether another connection (the
    C{gomail alias} command) committed since (C{PRAGMA data_version}, one
    cheap query) and reloads the table if so; with C{refresh} 0 it asks at
    every lookup. A lookup never answers from a copy older than C{refresh}:
    when the database cannot be asked, it fails (the RCPT gets 451 4.3.0).

    @param pool: the user database's C{adbapi.ConnectionPool} (one connection;
        L{gomail.auth.users.SQLiteUserStore.pool}), started and migrated
        before the first lookup.
    """

    def __init__(self, pool: Any, clock: Any, refresh: float) -> None:
        self.pool = pool
        self.clock = clock
        self.refresh = refresh
        self._table: dict[str, tuple[str, ...]] | None = None
        self._version: int | None = None
        self._checked = 0.0
        self._waiting: list[Deferred] = []

    def table(self) -> Deferred:
        """@return: Deferred firing with the current L{Table}; fails when the database cannot answer."""
        if (self._table is not None and self.refresh > 0
                and self.clock.seconds() - self._checked < self.refresh):
            return succeed(self._table)
        d: Deferred = Deferred()
        self._waiting.append(d)
        if len(self._waiting) == 1:  # one look for every lookup that waits meanwhile
            started = self.clock.seconds()
            self.pool.runInteraction(snapshot, self._version if self._table is not None else None) \
                .addCallbacks(self._loaded, self._failed, callbackArgs=(started,))
        return d

    def _loaded(self, result: tuple[int, dict[str, tuple[str, ...]] | None], started: float) -> None:
        version, table = result
        self._version, self._checked = version, started
        if table is not None:
            self._table = table
        self._fire(lambda d: d.callback(self._table))

    def _failed(self, failure: Any) -> None:
        self._table = None  # never answer from a copy that could not be confirmed
        self._fire(lambda d: d.errback(failure))

    def _fire(self, how: Any) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            how(d)


__all__ = ["MAX_TARGETS", "Alias", "AliasStore", "NoSuchAlias", "Table", "add_alias", "alias_name",
           "alias_targets", "get_alias", "list_aliases", "mailbox_key", "remove_alias", "snapshot"]
