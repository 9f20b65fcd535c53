# -*- test-case-name: tests.test_inbound_checks -*-
"""
The built-in C{inbound-checks} plugin: SPF, DKIM and DMARC of mail received
for the local domains from untrusted clients, recorded in an
C{Authentication-Results:} header field (RFC 8601) put on top of the message
before it is stored; with C{policy = "reject"}, a DMARC failure of a domain
publishing C{p=reject} is refused with C{550 5.7.1}.

    [plugins.inbound-checks]
    checks = ["spf", "dkim", "dmarc"]
    policy = "record"            # or "reject"
    dnsServers = []              # address or address:port; empty: /etc/resolv.conf
    dnsTimeout = 3               # seconds per DNS query
    maxBytes = 10485760          # larger messages: SPF only (DKIM and DMARC need the whole message)

The checks (C{authheaders}, C{dkimpy}, C{pyspf}, all over C{dnspython}) run
in the reactor's thread pool, never on the reactor; every DNS query is
bounded, and a DNS failure is recorded as C{temperror}, never a refusal.
Keep C{dnsTimeout} times a few queries under C{plugins.timeout}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.threads import deferToThreadPool
from zope.interface import implementer

from gomail.interfaces import IHeaderFilter
from gomail.plugin import (
    MessageView,
    PluginConfigError,
    PluginContext,
    SessionView,
    Settings,
    SMTPHook,
    accept,
    plugin,
    reject,
)

CHECKS = ("spf", "dkim", "dmarc")


def _servers(settings: Settings) -> list[tuple[str, int]]:
    from gomail.configdelivery import dns_server

    parsed = []
    for index, server in enumerate(settings.texts("dnsServers")):
        try:
            parsed.append(dns_server(server))
        except ValueError as e:
            raise PluginConfigError(f"dnsServers[{index}]", str(e)) from None
    return parsed


def configure_dns(servers: list[tuple[str, int]], timeout: float) -> None:
    """dnspython's default resolver (what pyspf, dkimpy and authheaders ask): these servers, this timeout."""
    import dns.resolver

    if servers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host for host, _ in servers]
        resolver.nameserver_ports = {host: port for host, port in servers}
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = resolver.lifetime = timeout
    dns.resolver.default_resolver = resolver


def authentication_results(opener: Any, authserv_id: str, checks: frozenset[str], ip: str, sender: str,
                           helo: str, timeout: float = 3.0) -> tuple[str, str | None]:
    """
    (thread) The C{Authentication-Results} value, and the DMARC policy of a
    failed DMARC check (or None). C{opener}: the message's C{open}, or None
    when it is too large to check more than SPF.
    """
    import authheaders
    from authres import (
        AuthenticationResultsHeader,
        DKIMAuthenticationResult,
        SPFAuthenticationResult,
    )
    from authres.dmarc import DMARCAuthenticationResult

    message = b""
    if opener is not None:
        with opener() as f:
            message = f.read()
    results: list[Any] = []
    spf_result = dkim_result = None
    # Each check on its own: a DNS failure (a timeout, SERVFAIL) is its temperror, never a refusal.
    if "spf" in checks:
        spf_result = _checked(lambda: _spf(ip, sender, helo, timeout),
                              lambda why: SPFAuthenticationResult(result="temperror", smtp_mailfrom=sender,
                                                                  result_comment=why))
        results.append(spf_result)
    if "dkim" in checks and message:
        dkim_result = _checked(lambda: authheaders.check_dkim(message, dnsfunc=_txt),
                               lambda why: DKIMAuthenticationResult(result="temperror", result_comment=why))
        results.append(dkim_result)
    failed_policy = None
    if "dmarc" in checks and message:
        dmarc_result = _checked(lambda: authheaders.check_dmarc(message, spf_result, dkim_result),
                                lambda why: DMARCAuthenticationResult(result="temperror", result_comment=why))
        results.append(dmarc_result)
        uncertain = any(str(getattr(r, "result", "")) == "temperror" for r in results)
        if str(dmarc_result.result) == "fail" and not uncertain:
            # A DNS failure on the way (a key not fetched) is no proof of forgery: never a refusal.
            failed_policy = str(getattr(dmarc_result, "policy", "") or "")
    header = str(AuthenticationResultsHeader(authserv_id=authserv_id, results=results))
    value = header.split(":", 1)[1].strip() if header.lower().startswith("authentication-results:") else header
    return " ".join(value.split()), failed_policy


def _spf(ip: str, sender: str, helo: str, timeout: float) -> Any:
    """pyspf's verdict as an RFC 8601 result (pyspf's own bound on the whole check: C{timeout})."""
    import spf
    from authres import SPFAuthenticationResult

    # timeout per lookup, and the whole check within a few of them (RFC 7208 4.6.4 allows 20 s).
    result, reason = spf.check2(i=ip, s=sender or f"postmaster@{helo}", h=helo, timeout=timeout,
                                querytime=min(20.0, timeout * 4))
    return SPFAuthenticationResult(result=result, reason=reason, smtp_mailfrom=sender, smtp_helo=helo)


def _txt(name: bytes, timeout: float = 5) -> bytes | None:
    """
    dkimpy's DNS lookup, except that a failure other than "no such record"
    raises (dkimpy's own turns every failure into "no key": dkim=fail, where
    authheaders records the raised DNSException as dkim=temperror).
    """
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name.decode("ascii"), "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    return b"".join(b"".join(record.strings) for record in answer)


def _checked(check: Any, temperror: Any) -> Any:
    """C{check()}, or C{temperror(why)} when it raised (DNS trouble, mostly)."""
    try:
        return check()
    except Exception as e:  # noqa: BLE001 -- dnspython, pyspf and authheaders raise their own kinds
        return temperror(type(e).__name__)


@implementer(IHeaderFilter)
class InboundChecks(SMTPHook):
    """
    Checks and records SPF, DKIM and DMARC of incoming mail (see the module
    docstring). Authentication-Results fields a message arrives with are
    removed as it streams in (RFC 8601 5: one claiming to be this server's
    could be forged; only the field added here speaks for it).
    """

    def __init__(self, settings: Settings, context: PluginContext) -> None:
        self.checks = frozenset(settings.texts("checks", CHECKS))
        for index, name in enumerate(settings.texts("checks", CHECKS)):
            if name not in CHECKS:
                raise PluginConfigError(f"checks[{index}]", f"{name!r} is not one of {', '.join(CHECKS)}")
        self.policy = settings.text("policy", "record")
        if self.policy not in ("record", "reject"):
            raise PluginConfigError("policy", f"must be record or reject, got {self.policy!r}")
        self.max_bytes = settings.integer("maxBytes", 10 * 1024 * 1024, low=0)
        timeout = settings.number("dnsTimeout", 3.0, low=0.1, high=60)
        configure_dns(_servers(settings), timeout)
        self.timeout = timeout
        self.reactor, self.hostname = context.reactor, re.sub(r"[^A-Za-z0-9.-]", "", context.hostname)

    def drops(self, name: str) -> bool:
        """Authentication-Results fields that came with the message."""
        return name == "authentication-results"

    def _applies(self, session: SessionView, message: MessageView) -> bool:
        return not session.trusted and any(session.is_local(r) for r in message.recipients)

    async def end_of_data(self, session: SessionView, message: MessageView) -> Any:
        """Check, then record (or refuse a DMARC p=reject failure)."""
        if not self._applies(session, message):
            return None
        opener = message.open if message.size <= self.max_bytes else None  # read in the thread
        value, failed_policy = await deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), authentication_results, opener, self.hostname,
            self.checks, session.client_address, message.sender, session.helo or "", self.timeout)
        if self.policy == "reject" and failed_policy == "reject":
            return reject("Message refused: DMARC policy of its From: domain says reject")
        return accept({"Authentication-Results": value[:900]})


inbound_checks = plugin("inbound-checks", InboundChecks, "SPF, DKIM and DMARC of incoming mail, recorded (or refused)")
