# -*- test-case-name: tests.test_mtasts -*-
"""
MTA-STS (RFC 8461): a domain's published promise that its MX hosts take
mail over verified TLS.

For a recipient domain gomail asks for the TXT record C{_mta-sts.<domain>}
(C{v=STSv1; id=...}); when there is one whose id it has no valid policy for,
it fetches C{https://mta-sts.<domain>/.well-known/mta-sts.txt} (treq, a
certificate checked against the system's CAs, no redirects, at most 64 KiB,
bounded in time), and keeps the policy for its C{max_age} (at most a year).
A policy in C{enforce} mode makes direct delivery use only the MX hosts the
policy names, over TLS whose certificate verifies (L{DirectAgent} asks
L{STSPolicy.allows}); C{testing} only logs what would have been refused.
Failures to fetch fall back to a policy still valid in the cache, else to no
policy (RFC 8461 5.1), and are logged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Longest a policy is kept (RFC 8461 3.2: max_age at most 31557600).
MAX_AGE = 31557600
#: Largest policy file read.
MAX_POLICY_BYTES = 64 * 1024
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


@dataclass(frozen=True)
class STSPolicy:
    """A parsed policy: its mode, the MX patterns it allows, how long it holds."""

    mode: str  # enforce, testing or none
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    def allows(self, host: str) -> bool:
        """Whether MX C{host} matches one of the patterns (C{*.example.net}: exactly one more label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                suffix = pattern[1:]
                if host.endswith(suffix) and "." not in host[:-len(suffix)] and host[:-len(suffix)]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_policy(text: str) -> STSPolicy:
    """
    The policy in C{text} (RFC 8461 3.2).

    @raise ValueError: not a valid STSv1 policy.
    """
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a key: value line: {line[:60]!r}")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise ValueError("version must be STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise ValueError(f"mode must be enforce, testing or none, got {mode!r}")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise ValueError("max_age must be a whole number") from None
    if not 0 <= max_age:
        raise ValueError("max_age must not be negative")
    mx = tuple(value.lower().rstrip(".") for value in fields.get("mx", []))
    if mode != "none" and not mx:
        raise ValueError("an enforce or testing policy must name mx hosts")
    return STSPolicy(mode, mx, min(max_age, MAX_AGE))


def txt_id(records: list[str]) -> str | None:
    """The id of the one C{v=STSv1} record among C{records}, or None (none, or several: RFC 8461 3.1)."""
    found = [r for r in records if r.replace(" ", "").startswith("v=STSv1;") or r.strip() == "v=STSv1"]
    if len(found) != 1:
        return None
    tags = {k.strip(): v.strip() for k, _, v in (part.partition("=") for part in found[0].split(";")) if k.strip()}
    policy_id = tags.get("id", "")
    return policy_id if _ID.match(policy_id) else None


class MTASTS:
    """
    Looks up and caches domains' MTA-STS policies (see the module docstring).

    @param resolver: a C{twisted.names} resolver (for the TXT records).
    @param fetch: C{fetch(url)}: a Deferred firing with the policy file's
        bytes, failing on any HTTP or TLS problem (L{https_fetcher} in the server).
    """

    log = Logger()

    def __init__(self, resolver: Any, fetch: Callable[[str], Deferred], clock: IReactorTime,
                 timeout: float = 10.0) -> None:
        self.resolver, self.fetch, self.clock, self.timeout = resolver, fetch, clock, timeout
        self._cache: dict[str, tuple[STSPolicy, float]] = {}

    def _cached(self, domain: str) -> STSPolicy | None:
        found = self._cache.get(domain)
        if found is None or found[1] <= self.clock.seconds():
            return None
        return found[0]

    async def policy(self, domain: str) -> STSPolicy | None:
        """The domain's policy in force, or None when it has none (or none could be had)."""
        domain = domain.lower().rstrip(".")
        cached = self._cached(domain)
        try:
            answers, _, _ = await self.resolver.lookupText(f"_mta-sts.{domain}", timeout=(max(1, round(self.timeout)),))
            records = [b"".join(r.payload.data).decode("ascii", "replace") for r in answers
                       if getattr(r.payload, "data", None) is not None]
        except Exception:  # noqa: BLE001 -- no record, or DNS trouble: the cache decides
            return cached
        policy_id = txt_id(records)
        if policy_id is None:
            return cached
        if cached is not None and cached.id == policy_id:
            return cached
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        try:
            fetching = self.fetch(url)
            fetching.addTimeout(self.timeout, self.clock)
            body = await fetching
            if len(body) > MAX_POLICY_BYTES:
                raise ValueError(f"larger than {MAX_POLICY_BYTES} bytes")
            fresh = parse_policy(body.decode("utf-8"))
        except Exception as e:  # noqa: BLE001 -- any fetch or parse failure: logged, the cache decides
            self.log.warn("MTA-STS policy of {domain} not fetched from {url}: {error}", domain=domain, url=url,
                          error=f"{type(e).__name__}: {e}")
            return cached
        fresh = STSPolicy(fresh.mode, fresh.mx, fresh.max_age, policy_id)
        self._cache[domain] = (fresh, self.clock.seconds() + fresh.max_age)
        self.log.info("MTA-STS policy of {domain}: {mode}, mx {mx}, for {max_age} s", domain=domain,
                      mode=fresh.mode, mx=", ".join(fresh.mx), max_age=fresh.max_age)
        return fresh


def https_fetcher(agent: Any = None) -> Callable[[str], Deferred]:
    """C{fetch(url)} with treq: GET, no redirects, 200 and C{text/plain} only, at most L{MAX_POLICY_BYTES}."""
    import treq

    client = treq if agent is None else treq.client.HTTPClient(agent)

    async def get(url: str) -> bytes:
        response = await client.get(url, allow_redirects=False, unbuffered=True)
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip().lower()
        if kind != b"text/plain":
            raise ValueError(f"content type {kind.decode('ascii', 'replace')!r}, not text/plain")
        chunks: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_POLICY_BYTES:
                raise ValueError(f"larger than {MAX_POLICY_BYTES} bytes")
            chunks.append(data)

        await treq.collect(response, collect)
        return b"".join(chunks)

    return lambda url: Deferred.fromCoroutine(get(url))
