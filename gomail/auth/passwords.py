# -*- test-case-name: tests.test_userdb -*-
"""
Password hashing and the random secrets handed to users.

User passwords are hashed with bcrypt; app passwords, being random tokens we
generate, with SHA-256 (see L{app_password_digest}). Everything here is
synchronous and CPU-bound: the server runs L{verify_password} in its CPU
thread pool, never in the reactor thread.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from typing import Any

import bcrypt
import pyotp

#: bcrypt's work factor when none is configured (2**12 rounds, roughly 0.2 s).
DEFAULT_ROUNDS = 12
#: bcrypt uses at most this many bytes of a password and ignores the rest.
MAX_PASSWORD_BYTES = 72

_APP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_APP_GROUPS, _APP_GROUP_LENGTH = 4, 4  # 16 characters of 36: 82.7 bits


def check_password(password: str) -> bytes:
    """
    The password as bcrypt will see it (UTF-8).

    @raise ValueError: it is empty, contains NUL, is not encodable text, or is
        longer than L{MAX_PASSWORD_BYTES} bytes; bcrypt would silently ignore
        everything after the 72nd byte (or a NUL), so such a password is refused
        rather than stored weaker than it looks.
    """
    if not password:
        raise ValueError("the password is empty")
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the password is not valid text (undecodable bytes)") from None
    if b"\0" in encoded:
        raise ValueError("the password contains a NUL character")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes (UTF-8), "
                         f"which bcrypt cannot use in full")
    return encoded


def hash_password(password: str, rounds: int = DEFAULT_ROUNDS) -> bytes:
    """A bcrypt hash of C{password}; raises ValueError as L{check_password} does."""
    return bcrypt.hashpw(check_password(password), bcrypt.gensalt(rounds))


def verify_password(password: str, hashed: bytes) -> bool:
    """
    Whether C{password} matches the bcrypt hash C{hashed}. Never raises for a
    bad password or a damaged hash: both are simply not a match.
    """
    try:
        return bcrypt.checkpw(check_password(password), hashed)
    except ValueError:
        return False


def bcrypt_cost(hashed: bytes) -> int | None:
    """The cost (log2 of the rounds) a bcrypt hash was made with, or None if it is not one."""
    parts = bytes(hashed).split(b"$")
    # b"$2b$12$<salt and digest>" splits into ["", "2b", "12", ...]
    if len(parts) == 4 and parts[0] == b"" and parts[2].isdigit():
        return int(parts[2])
    return None


@functools.cache
def dummy_hash(rounds: int = DEFAULT_ROUNDS) -> bytes:
    """
    A valid bcrypt hash (of a random password nobody knows) with C{rounds}, made
    once per process: checking a password for an unknown or disabled user
    against it costs what a real check costs, so timing does not tell them apart.
    """
    return hash_password(secrets.token_urlsafe(32), rounds)


def __getattr__(name: str) -> Any:
    # DUMMY_HASH is computed on first use, not at import (bcrypt takes a while).
    if name == "DUMMY_HASH":
        return dummy_hash(DEFAULT_ROUNDS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_app_password() -> str:
    """A new app password: four groups of four lowercase letters and digits (over 80 bits)."""
    groups = ("".join(secrets.choice(_APP_ALPHABET) for _ in range(_APP_GROUP_LENGTH))
              for _ in range(_APP_GROUPS))
    return "-".join(groups)


def app_password_digest(password: str) -> str:
    """
    The stored form of an app password: hex SHA-256.

    A fast hash is enough here, unlike for user passwords: app passwords are
    random tokens with over 80 bits of entropy that we generate ourselves, so
    there is no dictionary to try and brute force is out of reach however fast
    each guess is. It also keeps checking them cheap, because every login
    compares the attempt against all of a user's app passwords.
    """
    return hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()


def new_totp_secret() -> str:
    """A new random TOTP secret (base32, 160 bits)."""
    return pyotp.random_base32()


__all__ = [
    "DEFAULT_ROUNDS",
    "MAX_PASSWORD_BYTES",
    "app_password_digest",
    "check_password",
    "dummy_hash",
    "hash_password",
    "new_app_password",
    "new_totp_secret",
    "verify_password",
]
