# -*- test-case-name: tests.test_smtp_xclient -*-
"""
Postfix's XCLIENT command (XCLIENT_README): a trusted proxy, nginx's mail
module with C{xclient on}, names the client it serves and the user it logged in.

nginx checks the password through auth_http, opens its own session to us with
C{EHLO}, then sends C{XCLIENT ADDR=<client ip> LOGIN=<user> NAME=<rdns or
[UNAVAILABLE]>}, waits for C{220} and sends the client's C{EHLO}. From then on
the session is the client's: its address for the blacklist, the relay rules,
the logs and the Received: header; its LOGIN as the authenticated user, so
C{security.requireAuth}, sender ownership and the per-user rate limits apply.

Who may send it: a session whose connection peer I{and} current client are in
C{smtp.xclientHosts}. Postfix decides on the current client too, and that
matters here: nginx relays whatever its client sends once it is logged in, so a
client that sent its own C{XCLIENT LOGIN=someone-else} would otherwise be
taken for the proxy (its connection comes from nginx's address).

Per-IP connection counts: a proxy's own sessions are not counted; each counts
against the client its XCLIENT names (L{gomail.smtp.server.SMTPServer.count_client}),
so C{smtp.maxConnectionsPerIP} limits nginx's clients, not nginx.

L{parse} reads the command and is pure (fuzzed in the tests); L{command} runs it
in a session: L{gomail.smtp.protocol.GomailESMTP.ext_XCLIENT} delegates here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gomail.auth.credentials import Account
from gomail.auth.names import canonical_username
from gomail.netaddr import IPAddress, parse_ip

if TYPE_CHECKING:
    from gomail.smtp.session import SessionAPI

#: The attributes we accept, as Postfix names them; the EHLO keyword lists them.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "LOGIN", "DESTADDR", "DESTPORT")
EHLO_KEYWORD = "XCLIENT " + " ".join(ATTRIBUTES)
#: Values that mean "not known" (any case, XCLIENT_README note 2).
UNKNOWN = frozenset({"[UNAVAILABLE]", "[TEMPUNAVAIL]"})
#: The longest attribute value, encoded (Postfix's limit).
MAX_VALUE = 255

_XTEXT = re.compile(rb"\+([0-9A-Fa-f]{2})")
_PRINTABLE = re.compile(r"^[\x21-\x7e]{1,255}$")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,255}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")

log = Logger(namespace="gomail.smtp.xclient")


class XClientError(ValueError):
    """A malformed XCLIENT command; the text is the 501 reply's."""


@dataclass(frozen=True)
class XClient:
    """
    What one XCLIENT command says. C{given} names the attributes it carried;
    a given attribute whose value is None was C{[UNAVAILABLE]}/C{[TEMPUNAVAIL]}.
    """

    given: frozenset[str] = frozenset()
    addr: str | None = None
    port: int | None = None
    name: str | None = None
    helo: str | None = None
    proto: str | None = None
    login: str | None = None
    destaddr: str | None = None
    destport: int | None = None


def xtext_decode(value: bytes) -> bytes:
    """Decode RFC 3461 xtext (C{+XX} hex escapes); a C{+} not starting one is an error."""
    if b"+" in _XTEXT.sub(b"", value):
        raise ValueError("bad xtext")
    return _XTEXT.sub(lambda m: bytes([int(m.group(1), 16)]), value)


def parse(arguments: bytes) -> XClient:
    """
    Parse the arguments of an XCLIENT command (Postfix's grammar and 501 texts).

    @raise XClientError: no attribute, an unknown one, or a bad value.
    """
    values: dict[str, Any] = {}
    items = arguments.split()
    if not items:
        raise XClientError("Syntax: XCLIENT attribute=value...")
    for item in items:
        raw_name, sep, raw = item.partition(b"=")
        if not sep or not raw:
            raise XClientError("Error: attribute=value expected")
        if len(raw) > MAX_VALUE:
            raise XClientError("Error: attribute value too long")
        name = raw_name.decode("ascii", "replace").upper()
        if name not in ATTRIBUTES:
            raise XClientError(f"Bad XCLIENT attribute name: {_shown(name)}")
        values[name.lower()] = _value(name, raw)  # a repeated attribute: the last one counts
    return XClient(given=frozenset(n.upper() for n in values), **values)


def _value(name: str, raw: bytes) -> Any:
    """One attribute's value, decoded and checked; None for an unknown one."""
    try:
        text = xtext_decode(raw).decode("utf-8")
    except ValueError:  # a bad escape, or bytes that are not UTF-8
        raise XClientError(f"Bad {name} syntax: {_shown(raw.decode('ascii', 'replace'))}") from None
    if text.upper() in UNKNOWN and name != "PROTO":
        if name == "ADDR":
            # None is a UNIX socket peer to the relay rules, which trust it:
            # a proxied client must have an address.
            raise XClientError("Bad ADDR syntax: the client address is required")
        return None
    if name in ("ADDR", "DESTADDR"):
        return _address(name, text)
    if name in ("PORT", "DESTPORT"):
        if not (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) <= 65535):
            raise XClientError(f"Bad {name} syntax: {_shown(text)}")
        return int(text)
    if name == "PROTO":
        if text.upper() not in ("SMTP", "ESMTP"):
            raise XClientError(f"Bad PROTO syntax: {_shown(text)}")
        return text.upper()
    # NAME and HELO reach log lines and the Received: header, LOGIN the logs:
    # no spaces, line breaks or other control characters in any of them.
    if name == "NAME":
        valid = _HOSTNAME.match(text) is not None
    elif name == "HELO":
        valid = _PRINTABLE.match(text) is not None
    else:  # LOGIN: any name the user store may know (it canonicalises it)
        valid = _CONTROL.search(text) is None
    if not valid:
        raise XClientError(f"Bad {name} syntax: {_shown(text)}")
    return text


def _address(name: str, text: str) -> str:
    if text[:5].upper() == "IPV6:":
        text = text[5:]
    ip = parse_ip(text) if "%" not in text else None
    if ip is None:
        raise XClientError(f"Bad {name} syntax: {_shown(text)}")
    return str(ip)


def _shown(text: str) -> str:
    """A client's value, safe to echo in a reply: printable ASCII, bounded."""
    return "".join(c if "!" <= c <= "~" else "?" for c in text[:64])


class XClientAccess:
    """
    Who may send XCLIENT (C{smtp.xclientHosts}) and the accounts its LOGIN names.

    @param users: the L{gomail.auth.users.IUserStore} LOGIN names are looked up
        in; None: every LOGIN is refused.
    """

    def __init__(self, networks: Iterable[str], users: Any = None) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.users = users
        #: The plugins' credential sources (L{gomail.auth.sources.AuthSources}), or None: a LOGIN the
        #: database does not hold may name a user a source logged in lately (through auth_http).
        self.sources: Any = None

    def allows(self, ip: IPAddress | None) -> bool:
        """Whether C{ip} is in C{smtp.xclientHosts} (a UNIX socket peer is not)."""
        return ip is not None and any(ip in network for network in self.networks)

    async def account(self, login: str) -> Account | None:
        """
        The session account for a LOGIN the proxy checked the password of: an
        L{Account} as SMTP AUTH makes, for a user that exists and is
        enabled; None otherwise. A store that cannot answer raises.
        """
        if self.users is None:
            return None
        try:
            user = await self.users.get_user(login)
        except ValueError:  # no canonical form: no such user
            return None
        if user is None and self.sources is not None:
            vouched = self.sources.vouched(canonical_username(login))
            if vouched is not None:
                return Account(vouched.user, "xclient", "")
        if user is None or not user.enabled:
            return None
        return Account(user, "xclient", "")


def offered(session: SessionAPI) -> bool:
    """Whether C{session} may send XCLIENT: its connection's peer and its current client are allowed."""
    access = session.server.xclient
    return access.allows(session.peer_ip) and access.allows(session.client_ip)


def command(session: SessionAPI, rest: bytes) -> Deferred | None:
    """Run C{XCLIENT rest} in C{session}: the refusals, or the new session's 220 (Deferred)."""
    if not offered(session):
        session.server.rejections["xclient_denied"] += 1
        log.info("XCLIENT refused from {client} (connection from {peer}): not in smtp.xclientHosts",
                 client=session.client_host, peer=session.peer_host)
        session.reply(550, "5.7.0", "Error: insufficient authorization")
        return None
    if session.sender is not None:
        session.reply(503, "5.5.1", "Error: MAIL transaction in progress")
        return None
    try:
        request = parse(rest)
    except XClientError as e:
        session.reply(501, "5.5.4", str(e))
        return None
    return Deferred.fromCoroutine(_apply(session, request))


async def _apply(session: SessionAPI, request: XClient) -> None:
    account = None
    if request.login is not None:
        try:
            account = await session.server.xclient.account(request.login)
        except Exception as e:  # noqa: BLE001 -- any store failure (IUserStore): no login, no crash
            log.error("XCLIENT LOGIN {user} from {peer}: user database unavailable: {error}",
                      user=request.login, peer=session.peer_host, error=str(e) or type(e).__name__)
            return session.hang_up(421, "4.3.0", f"{session.settings.hostname} Error: user lookup failed, "
                                   "try again later")
        if account is None:
            session.server.rejections["xclient_unknown_login"] += 1
            log.warn("XCLIENT LOGIN {user} from {peer} refused: no such enabled user",
                     user=request.login, peer=session.peer_host)
            return session.reply(550, "5.7.0", "Error: XCLIENT LOGIN names no enabled user")
    _reset(session, request, account)
    refusal = session.server.count_client(session)
    if refusal is not None:
        return session.hang_up(*refusal)
    log.info("XCLIENT from {peer}: client {client} port {port} name {name} helo {helo} user {user}",
             peer=session.peer_host, client=session.client_host, port=request.port or "-",
             name=request.name or "-", helo=request.helo or "-", user=account.name if account else "-")
    refusal = await session.server.client_refusal(session)  # the new client: the blacklist
    hooks = session.server.hooks
    if refusal is None and hooks.active:
        # The plugins judge the named client as they judge a direct one: at connect, and its HELO.
        refusal = await hooks.refusal("connect", session)
        if refusal is None and session.helo_name is not None:
            refusal = await hooks.refusal("helo", session, session.helo_name)
    if session.transport is None or session.transport.disconnecting or session.lost:
        return None
    if refusal is not None:
        return session.hang_up(*refusal)
    session.banner()
    return None


def _reset(session: SessionAPI, request: XClient, account: Account | None) -> None:
    """
    Back to the greeting stage, as the named client (XCLIENT_README, "XCLIENT
    Server response"): HELO and PROTO are what the command said (else none,
    and SMTP); an earlier AUTH or LOGIN is gone unless LOGIN names a user
    again; TLS stays, it cannot be undone.
    """
    if "ADDR" in request.given:
        session.client_host, session.client_ip = request.addr or "", parse_ip(request.addr)
    session.helo_name = request.helo
    session.extended = request.proto == "ESMTP"
    session.reset_transaction()
    session.account = account
    session.authenticated = account is not None
