# -*- test-case-name: tests.test_mailaccess_proxies -*-
"""
IMAP and POP3 behind nginx's mail proxy: which peers are nginx
(C{[imap]}/C{[pop3]} C{trustedProxies}), and what a login from one hands
the portal.

nginx logs in to its backend without STARTTLS/STLS and without telling the
client's address, after auth_http (L{gomail.web.authhttp}) has checked the
client's credentials against that address. For gomail's own listeners
auth_http answers nginx a login ticket (L{gomail.auth.tickets}) as the
password. So, from a trusted proxy only:

- a login needs no TLS (nginx does not start it towards backends);
- a password that looks like a ticket is checked as a ticket
  (L{TicketLogin}); anything else goes through the password chain as from
  any client.

From every other peer a ticket-looking password is just a password (a wrong
one): direct logins are exactly as strict as without this module.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from gomail.auth.credentials import LoginAttempt
from gomail.auth.tickets import TicketLogin, looks_like_ticket


class TrustedProxies:
    """The networks of a section's C{trustedProxies} (CIDR; empty: no peer is trusted)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)

    def trusts(self, ip: Any) -> bool:
        """Whether C{ip} (a parsed address, or None for a non-IP peer) is a trusted proxy."""
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)


def login_credentials(username: str, password: str, client_host: str, protocol: str,
                      from_proxy: bool) -> LoginAttempt | TicketLogin:
    """
    What a login hands the portal: a ticket login for a ticket-looking
    password from a trusted proxy (C{from_proxy}), else the password attempt.
    """
    if from_proxy and looks_like_ticket(password):
        return TicketLogin(username, password, client_host or None, protocol)
    return LoginAttempt(username, password, client_host or None, protocol)


class LoginRules:
    """
    When a POP3 or IMAP session may log in, for the login mixins: after TLS;
    from a trusted proxy (nginx, which starts no TLS towards its backends),
    with a ticket only; from loopback when the section's
    C{allowPlaintextLoopback} says so. Uses the session's C{server},
    C{settings}, C{secure} and C{client_ip}.
    """

    server: Any
    settings: Any
    secure: bool
    client_ip: Any

    def from_proxy(self) -> bool:
        """Whether the peer is one of the section's C{trustedProxies} (nginx)."""
        return bool(self.server.proxies.trusts(self.client_ip))

    def plaintext_loopback(self) -> bool:
        """Whether a loopback peer may log in without TLS (C{allowPlaintextLoopback})."""
        return bool(self.settings.allowPlaintextLoopback and self.client_ip is not None
                    and self.client_ip.is_loopback)

    def login_allowed(self) -> bool:
        """Whether the login commands may be used (and offered) now."""
        if self.server.portal is None:
            return False
        return self.secure or self.from_proxy() or self.plaintext_loopback()

    def clear_password_refused(self, password: str) -> bool:
        """
        Whether C{password} must be refused unread: without TLS a trusted
        proxy hands only auth_http's tickets, and a clear-text password from
        its network is a client that should have used TLS.
        """
        return (not self.secure and self.from_proxy() and not looks_like_ticket(password)
                and not self.plaintext_loopback())


__all__ = ["LoginRules", "TrustedProxies", "login_credentials"]
