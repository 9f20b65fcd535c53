# -*- test-case-name: tests.test_config_direct -*-
"""
The Go relay's internet-delivery keys (L{gomail.configschema.Config}):
C{directDelivery} (deliver to each domain's MX) and C{dkim} (sign outgoing
mail), with the Go relay's names and defaults, plus gomail's own keys for
what they lack.
"""

from __future__ import annotations

from dataclasses import dataclass

from gomail.configchecks import PORT, between, setting


def dns_server(value: str) -> tuple[str, int]:
    """
    (address, port) of a DNS server entry: C{address} or C{address:port},
    IPv6 bare or in brackets (C{[2001:db8::53]:5353}); the port defaults to 53.

    @raise ValueError: not an IP address, or no valid port.
    """
    import ipaddress

    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (optionally with :port)") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has no valid port")
    return host, int(port)


def dns_servers(values: tuple[str, ...]) -> str | None:
    """Accept entries L{dns_server} reads."""
    for value in values:
        try:
            dns_server(value)
        except ValueError as e:
            return str(e)
    return None


@dataclass(frozen=True)
class DirectDeliverySettings:
    """Delivery to each recipient domain's MX (section ``directDelivery``, the Go relay's)."""

    enabled: bool = setting(False)
    # EHLO name towards the MX hosts (default: smtp.hostname).
    ehloDomain: str = setting("")
    # Opportunistic TLS only: do not verify the MX host's certificate.
    insecureSkipVerify: bool = setting(False)
    # MX hosts tried in one delivery attempt.
    retryCount: int = setting(3, check=between(1, 50))
    # gomail's: resolvers to ask (address or address:port); empty: /etc/resolv.conf.
    dnsServers: tuple[str, ...] = setting((), check=dns_servers)
    dnsTimeout: int = setting(10, check=between(1, 120))
    # gomail's: the port MX hosts listen on (25; another value only for tests).
    port: int = setting(25, check=PORT)
    # gomail's: delivery attempts to one domain at a time (workerCount bounds them all).
    maxPerDomain: int = setting(5, check=between(1, 1000))
    # gomail's: per-domain TLS levels (the rest: may, or MTA-STS's).
    tlsPolicies: tuple[TLSPolicy, ...] = setting(())
    # gomail's: honour MTA-STS policies (RFC 8461) of domains without a tlsPolicies entry.
    mtaSts: bool = setting(True)


@dataclass(frozen=True)
class Route:
    """
    Mail for one domain through its own smarthost (gomail's ``[[routes]]``),
    whatever forwardSMTP and directDelivery say for the rest.
    """

    domain: str = setting("")
    host: str = setting("")
    port: int = setting(25, check=between(1, 65535))
    username: str = setting("")
    password: str = setting("", secret=True)
    # Implicit TLS (port 465 style); otherwise STARTTLS when offered (required with credentials).
    ssl: bool = setting(False)


TLS_LEVELS = ("none", "may", "encrypt", "verify")


@dataclass(frozen=True)
class TLSPolicy:
    """
    How to reach one domain's MX (gomail's ``[[directDelivery.tlsPolicies]]``,
    as Postfix's ``smtp_tls_policy_maps``): C{none} never STARTTLS; C{may}
    (the default) TLS when offered, plaintext when it fails; C{encrypt} TLS
    required, certificate not checked; C{verify} TLS required and the
    certificate checked against the MX name.
    """

    domain: str = setting("")
    level: str = setting("may", check=lambda v: None if v in TLS_LEVELS else
                         f"must be one of {', '.join(TLS_LEVELS)}, got {v!r}")


@dataclass(frozen=True)
class DKIMKey:
    """One more signing domain (gomail's ``[[dkim.keys]]``): the From: domain picks its key."""

    domain: str = setting("")
    selector: str = setting("mail")
    # Default: keys/<domain>/<selector>.private.
    privateKeyPath: str = setting("")


@dataclass(frozen=True)
class DKIMSettings:
    """DKIM signing of outgoing mail (section ``dkim``, the Go relay's)."""

    enabled: bool = setting(False)
    # Signing domain (d=); default: the domain of defaultUsername.
    domain: str = setting("")
    selector: str = setting("mail")
    # Default: keys/<domain>/<selector>.private.
    privateKeyPath: str = setting("")
    # Default: RFC 6376's recommended set, From oversigned.
    headersToSign: tuple[str, ...] = setting(())
    # Seconds a signature is valid (x= tag); 0: no expiry.
    signatureExpiry: int = setting(0, check=between(0))
    # gomail's: more domains, each with its own key and selector.
    keys: tuple[DKIMKey, ...] = setting(())


def dkim_keys(settings: DKIMSettings, default_username: str) -> list[tuple[str, str, str, str]]:
    """
    (setting, domain, selector, key path) of every signing key (C{setting}
    names where its path is configured): C{dkim.domain} (default
    the domain of C{defaultUsername}) and each of C{dkim.keys}; paths default
    to the Go relay's C{keys/<domain>/<selector>.private}.

    @raise ValueError: (key, problem) for a key without a domain.
    """
    found = []
    domain = settings.domain or default_username.rpartition("@")[2]
    if domain:
        found.append(("dkim.privateKeyPath", domain.lower(), settings.selector,
                      settings.privateKeyPath or f"keys/{domain.lower()}/{settings.selector}.private"))
    elif not settings.keys:
        raise ValueError("dkim.domain", "must be set (or defaultUsername be an address, or dkim.keys given)")
    for index, key in enumerate(settings.keys):
        if not key.domain:
            raise ValueError(f"dkim.keys[{index}].domain", "must be set")
        found.append((f"dkim.keys[{index}].privateKeyPath", key.domain.lower(), key.selector,
                      key.privateKeyPath or f"keys/{key.domain.lower()}/{key.selector}.private"))
    return found
