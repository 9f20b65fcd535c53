# -*- test-case-name: tests.test_auth_checker -*-
"""
TOTP codes (RFC 6238: 6 digits, 30 s steps, one step of drift either way),
each accepted once and never after a later one.

RFC 6238 5.2: "the verifier MUST NOT accept the second attempt of the OTP
after the successful validation has been issued for the first OTP". The
state store keeps, per user, the last time step accepted (shared through
Redis by every node); a code whose step is at or before it is refused. So
after the code of step T, the code of T (again) and of T-1 are refused too.
"""

from __future__ import annotations

import hmac
from typing import Any

import pyotp

from gomail.auth.lockout import state_key

TOTP_DIGITS = 6
TOTP_STEP = 30
#: The last-step mark outlives the window in which any code up to it is valid
#: (a code of step S is accepted until the end of step S + 1).
TOTP_MARK_TTL = 4 * TOTP_STEP


def split_code(password: str) -> tuple[str, str] | None:
    """C{password} as (password, code) for a TOTP user, or None when it does not end in 6 digits."""
    secret, code = password[:-TOTP_DIGITS], password[-TOTP_DIGITS:]
    if not (code.isascii() and code.isdigit() and len(code) == TOTP_DIGITS):
        return None
    return secret, code


def matching_step(totp_secret: str, code: str, now: float) -> int | None:
    """
    The time step (of the current one and its neighbours) whose code is
    C{code}, or None. Every candidate is compared, in constant time.
    """
    if not (code.isascii() and code.isdigit()):
        return None  # compare_digest refuses non-ASCII text ("٠١٢٣٤٥" is digits to isdigit())
    totp = pyotp.TOTP(totp_secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = int(now // TOTP_STEP)
    step = None
    for offset in (-1, 0, 1):
        if hmac.compare_digest(totp.at(now + offset * TOTP_STEP), code):
            step = current + offset  # the latest match wins: a later step is never less strict
    return step


def accept_step(state: Any, name: str, step: int, kind: str = "totp:last") -> Any:
    """
    Record C{step} as user C{name}'s last accepted one in C{state} (an
    L{IStateStore}), unless a step as late
    or later already is. @return: Deferred[bool], True when the code may be
    accepted (fails with StateStoreError when the store cannot answer).
    """
    return state.advance(state_key(kind, name), step, TOTP_MARK_TTL)


__all__ = ["TOTP_DIGITS", "TOTP_MARK_TTL", "TOTP_STEP", "accept_step", "matching_step", "split_code"]
