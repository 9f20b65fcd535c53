# -*- test-case-name: tests.test_userdb -*-
"""Plain records the user store hands out."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AppPassword:
    """A revocable password for one client, accepted without TOTP."""

    id: int
    label: str
    digest: str  # hex SHA-256 of the generated (high-entropy) password
    created: float
    last_used: float | None = None


@dataclass(frozen=True)
class UserRecord:
    """
    One user as stored.

    C{credential_version} grows whenever the password, the TOTP settings or the
    enabled flag change; cached successful checks remember it, so any such change
    invalidates them (also when another process, such as the C{gomail user}
    command, made the change).
    """

    name: str  # canonical form, see gomail.auth.names.canonical_username
    password_hash: bytes  # bcrypt
    enabled: bool = True
    totp_secret: str | None = None
    totp_enabled: bool = False
    allowed_senders: tuple[str, ...] = ()  # "alice@example.com" or "@example.com"
    backend: str | None = None  # "host:port" for the nginx auth issue
    credential_version: int = 1
    created: float = 0.0
    updated: float = 0.0
    app_passwords: tuple[AppPassword, ...] = field(default=())


@dataclass(frozen=True)
class BlacklistEntry:
    """A client network refused before any credential is looked at."""

    network: str  # CIDR, normalised by ipaddress.ip_network(strict=False)
    expires: float | None  # epoch seconds, None: never
    reason: str = ""
    created: float = 0.0
