# -*- test-case-name: tests.test_smtp_recipients -*-
"""
The RCPT decision for local domains: which addresses exist there, and what
the envelope holds for them.

An address of a local domain (L{gomail.smtp.policy.local_domains}) is, in
this order:

1. an alias: replaced by its targets, each resolved the same way (targets
   in other domains are kept as they are: forwarding);
2. a user (the user store's record of that name, cached: no bcrypt): the
   envelope holds the user's canonical name, which names its Maildir;
3. C{postmaster@} or C{abuse@} (RFC 5321 4.5.1, RFC 2142), which every local
   domain has: resolved as the configured C{smtp.postmaster} address
   (default C{postmaster@<hostname>}), which is always a mailbox of its own
   when it is neither a user nor an alias;
4. caught by its domain's catch-all (C{@example.com}): its targets;
5. anything else is unknown: C{550 5.1.1 User unknown}, unless
   C{smtp.verifyRecipients} is off (or there is no user store), when the
   address is accepted as its own mailbox as before.

C{<postmaster>} without a domain is C{postmaster@<hostname>}, and the
server's own domain is always local, so it never reaches the relay.

Aliases are expanded here, at RCPT time, as Postfix's cleanup expands
virtual aliases before queueing: the envelope holds the final recipients,
each delivered and retried on its own, and the refusal of an unknown target
reaches the client instead of becoming a bounce. The expansion is bounded:
a loop ends where an address comes back (a user there is kept, so
C{bob -> bob, carol} keeps a copy for bob), at most L{MAX_DEPTH} aliases
deep and L{MAX_STEPS} lookups, and its result counts against
C{smtp.maxRecipients}. A store that cannot answer gives C{451 4.3.0},
never a 250 or a 550.

With a quota (C{imap.quotaMB}, L{gomail.mailaccess.quota.MailboxQuota}),
an address whose every mailbox is a local Maildir already full gets
C{452 4.2.2 Mailbox full} (temporary, RFC 3463 X.2.2): the sender's server
keeps the message and tries later, instead of gomail queueing a message it
could only defer. The count is the cached one (counted in the I/O pool);
an alias with room in any of its targets is accepted, and its full targets
are deferred at delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gomail.auth.aliases import mailbox_key
from gomail.mailaccess.quota import MailboxQuota
from gomail.smtp.address import POSTMASTER, Path, canonical_address
from gomail.smtp.policy import RelayPolicy

#: Aliases one expansion may pass through, one inside the other.
MAX_DEPTH = 8
#: Addresses one expansion may look at in all.
MAX_STEPS = 1000
#: The local parts every local domain has (RFC 5321 4.5.1, RFC 2142).
ROLE_ACCOUNTS = frozenset({"postmaster", "abuse"})


@dataclass(frozen=True)
class Accepted:
    """The recipient exists: C{addresses} go into the envelope (in order)."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Refused:
    """The recipient is refused with this reply; C{reason} labels the metric."""

    code: int
    status: str
    text: str
    reason: str

    @property
    def reply(self) -> tuple[int, str, str]:
        """The reply as C{GomailESMTP.reply} takes it."""
        return self.code, self.status, self.text


class _TooLarge(Exception):
    """The expansion went past a bound: C{deep} (depth or steps) or not (fan-out)."""

    def __init__(self, deep: bool) -> None:
        super().__init__()
        self.deep = deep


@dataclass
class _Expansion:
    """The state of one RCPT's expansion."""

    limit: int
    found: dict[str, None] = field(default_factory=dict)  # the result, ordered, no duplicates
    done: set[str] = field(default_factory=set)  # keys expanded already
    unknown: list[str] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)
    steps: int = 0


class LocalRecipients:
    """
    Resolves RCPT addresses of local domains (see the module docstring).

    @param policy: whose C{is_local_domain} says what is local (the server's
        own C{domain} is local besides).
    @param domain: the server's own mail domain (L{gomail.smtp.policy.own_domain}).
    @param postmaster: where postmaster@ and abuse@ go (C{smtp.postmaster});
        "" for C{postmaster@<domain>}.
    @param users: an L{gomail.auth.users.IUserStore} (its cached C{get_user});
        None: no user store, every address is accepted.
    @param aliases: an L{gomail.auth.aliases.AliasStore}, or None (no aliases).
    @param verify: refuse unknown addresses (C{smtp.verifyRecipients}).
    @param quota: the users' quota (L{gomail.mailaccess.quota.MailboxQuota}); None: none.
    """

    log = Logger()

    def __init__(self, policy: RelayPolicy, domain: str, postmaster: str = "", users: Any = None,
                 aliases: Any = None, verify: bool = True, quota: MailboxQuota | None = None) -> None:
        self.policy = policy
        self.domain = domain
        self.postmaster = canonical_address(postmaster or f"postmaster@{domain}")
        self._postmaster_key = mailbox_key(self.postmaster)
        self.users = users
        self.aliases = aliases
        self.verify = verify and users is not None
        self.quota = quota

    def is_local(self, domain: str) -> bool:
        """Whether addresses of the canonical C{domain} are ours (and so resolved here)."""
        return domain == self.domain or self.policy.is_local_domain(domain)

    def check(self, path: Path, current: Sequence[str], limit: int, client: str = "") -> Deferred:
        """
        Decide on one RCPT. C{current} are the transaction's recipients so
        far, C{limit} how many it may have (C{smtp.maxRecipients}).

        @return: Deferred firing with L{Accepted} or L{Refused}; fires at once
            for other domains, and for local ones when the lookups are cached.
        """
        address = f"{POSTMASTER}@{self.domain}" if path.address == POSTMASTER else path.address
        if not self.is_local(path.domain) and path.address != POSTMASTER:
            return succeed(Accepted((address,)))
        return Deferred.fromCoroutine(self._check(path.address, address, current, limit, client))

    async def _check(self, given: str, address: str, current: Sequence[str], limit: int,
                     client: str) -> Accepted | Refused:
        expansion = _Expansion(limit)
        try:
            await self._resolve(address, (), expansion)
        except _TooLarge as e:
            if e.deep:
                self.log.warn("alias expansion of <{recipient}> too deep: check its aliases",
                              recipient=address)
                return Refused(550, "5.4.6", f"<{given}>: Recipient address rejected: alias expansion "
                                             f"too deep", "alias_loop")
            return Refused(550, "5.5.3", f"<{given}>: Recipient address rejected: expands to more than "
                                         f"{limit} recipients", "too_many_recipients")
        except Exception as e:  # noqa: BLE001 (whatever the store raises, the answer is 451)
            self.log.warn("recipient <{recipient}> not checked, the user database cannot answer: "
                          "{error}", recipient=address, error=str(e) or type(e).__name__)
            return Refused(451, "4.3.0", f"<{given}>: Temporary lookup failure, try again later",
                           "recipient_lookup_failed")
        found = tuple(expansion.found)
        skipped = [f"<{t}> (unknown)" for t in expansion.unknown if t != address]
        skipped += [f"<{t}> (loop)" for t in expansion.loops]
        if skipped:
            self.log.warn("alias targets of <{recipient}> skipped: {targets}",
                          recipient=address, targets=", ".join(skipped))
        if not found and expansion.loops:
            return Refused(550, "5.4.6", f"<{given}>: Recipient address rejected: alias loop", "alias_loop")
        if not found:
            self.log.info("refused recipient <{recipient}> from {client}: user unknown",
                          recipient=given, client=client)
            return Refused(550, "5.1.1", f"<{given}>: Recipient address rejected: User unknown",
                           "unknown_recipient")
        new = [a for a in found if a not in current]
        if len(current) + len(new) > limit:
            return Refused(452, "4.5.3", "Error: too many recipients", "too_many_recipients")
        if await self._all_full(found):
            self.log.info("refused recipient <{recipient}> from {client}: mailbox full",
                          recipient=given, client=client)
            return Refused(452, "4.2.2", f"<{given}>: Mailbox full, try again later", "mailbox_full")
        return Accepted(found)

    async def _all_full(self, found: tuple[str, ...]) -> bool:
        """Whether every address of C{found} is a local Maildir at or over its quota."""
        if self.quota is None or not self.quota.limit:
            return False
        for address in found:
            if not self.is_local(address.rpartition("@")[2]) or not await self.quota.exceeded(address):
                return False
        return True

    async def _resolve(self, address: str, path: tuple[str, ...], expansion: _Expansion) -> None:
        """Add what C{address} delivers to to C{expansion.found}; C{path}: the aliases that led here."""
        expansion.steps += 1
        if expansion.steps > MAX_STEPS or len(path) > MAX_DEPTH:
            raise _TooLarge(deep=True)
        local, _, domain = address.rpartition("@")
        if not self.is_local(domain):
            return self._found(address, expansion)  # forwarded elsewhere
        key = mailbox_key(address)
        looped = key in path
        if key in expansion.done and not looped:
            return  # expanded already: its result is in
        expansion.done.add(key)
        table = await self.aliases.table() if self.aliases is not None else {}
        if not looped and key in table:
            for target in table[key]:
                await self._resolve(target, (*path, key), expansion)
            return
        user = await self._user(key)
        if user is not None:
            return self._found(user, expansion)
        if key == self._postmaster_key:
            return self._found(key, expansion)  # the postmaster's own mailbox
        if looped:
            expansion.loops.append(address)
            return
        if local.lower() in ROLE_ACCOUNTS:
            return await self._resolve(self.postmaster, (*path, key), expansion)
        catch_all = table.get("@" + domain)
        if catch_all is not None:
            for target in catch_all:
                await self._resolve(target, (*path, key), expansion)
            return
        if not self.verify:
            return self._found(address, expansion)
        expansion.unknown.append(address)

    def _found(self, address: str, expansion: _Expansion) -> None:
        expansion.found[address] = None
        if len(expansion.found) > expansion.limit:
            raise _TooLarge(deep=False)

    async def _user(self, key: str) -> str | None:
        """The canonical name of the user C{key}, or None."""
        if self.users is None:
            return None
        try:
            user = await self.users.get_user(key)
        except ValueError:  # no user name can be that (a quoted local part with a space...)
            return None
        return None if user is None else str(user.name)


__all__ = ["MAX_DEPTH", "MAX_STEPS", "ROLE_ACCOUNTS", "Accepted", "LocalRecipients", "Refused"]
