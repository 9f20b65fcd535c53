# -*- test-case-name: tests.test_auth_checker -*-
"""
What a login carries into C{twisted.cred} and what it gets back.

L{ILoginAttempt} is the credentials every protocol hands the portal: the
user name and password as the client gave them, with where they came from
(the client IP) and how (the protocol). The checkers fire with the avatar id,
the user's canonical name; the realm hands out the L{IAccount} avatar, an
L{Account}. The attempt doubles as the login's I{mind}: the checker records
on it how it was verified (L{LoginAttempt.account}), which the realm reads.

Bad credentials of every kind fail with L{AuthFailure} (an
C{UnauthorizedLogin}); a store that cannot answer with L{TemporaryAuthError}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.cred.credentials import ICredentials
from twisted.cred.error import UnauthorizedLogin
from zope.interface import Attribute, Interface, implementer

from gomail.auth.records import UserRecord


class ILoginAttempt(ICredentials):
    """A user name and password, with the client IP and the protocol they came over."""

    username = Attribute("The user name as the client gave it (str).")
    password = Attribute("The password as the client gave it, TOTP code included (str).")
    client_ip = Attribute("The client's IP address as text, or None when unknown.")
    protocol = Attribute('The protocol: "smtp", "imap", "pop3" (or "unknown").')


class IUserSecret(ICredentials):
    """A known user's secret to check: what the password checkers take (see L{gomail.auth.passwordcheckers})."""

    user = Attribute("The L{UserRecord} the secret is checked for.")
    secret = Attribute("The password without any TOTP code (str).")
    code = Attribute("The TOTP code split off the password, or None.")


class IAccount(Interface):
    """The avatar of an authenticated session: an L{Account}."""


class AuthFailure(UnauthorizedLogin):
    """
    Bad credentials. C{reason} is for logs and metrics, never for the client.

    @ivar delay: seconds the protocol should wait before answering (the
        user's slowdown, see L{gomail.auth.lockout}); 0 for none. SMTP waits
        them itself; auth_http tells nginx (C{Auth-Wait}).
    """

    def __init__(self, reason: str, delay: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class TemporaryAuthError(Exception):
    """The check could not be made (user database or state store unavailable)."""


@dataclass(frozen=True)
class Account:
    """
    An authenticated user, as the protocols see it.

    @ivar via: C{"password"}, C{"cache"} (password found in the auth cache),
        C{"app-password"}, C{"xclient"} (named by a trusted proxy), or
        C{"plugin:<name>"} (vouched for by that plugin's credential source,
        see L{gomail.auth.sources}).
    @ivar password: the password without any TOTP code, for a backend that
        should see a stable password (nginx auth_http's C{Auth-Pass}).
    """

    user: UserRecord
    via: str
    password: str

    @property
    def name(self) -> str:
        return self.user.name


@implementer(ILoginAttempt)
class LoginAttempt:
    """
    Credentials with where they came from: the client IP and the protocol.

    @ivar account: set by the checker once the login succeeded (how, for
        whom); the realm hands it out.
    """

    def __init__(self, username: str, password: str, client_ip: str | None, protocol: str) -> None:
        self.username = username
        self.password = password
        self.client_ip = client_ip
        self.protocol = protocol
        self.account: Account | None = None

    def __repr__(self) -> str:  # never show the password, not even in a traceback
        return f"<LoginAttempt {self.protocol} from {self.client_ip}>"


@implementer(IUserSecret)
@dataclass
class UserSecret:
    """
    A known user's secret (L{IUserSecret}).

    @ivar bcrypt_ran: set by the bcrypt checker once it has run a verification
        (every refusal costs exactly one; see L{gomail.auth.checker}).
    """

    user: UserRecord
    secret: str
    code: str | None = None
    bcrypt_ran: bool = False

    def __repr__(self) -> str:
        return f"<UserSecret for {self.user.name}>"


__all__ = ["Account", "AuthFailure", "IAccount", "ILoginAttempt", "IUserSecret", "LoginAttempt",
           "TemporaryAuthError", "UserSecret"]
