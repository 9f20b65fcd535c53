# -*- test-case-name: tests.test_config,tests.test_pop3,tests.test_imap -*-
"""
The mail access sections of L{gomail.configschema.Config}: C{pop3} and
C{imap}, served by built-in plugins over the local Maildirs
(L{gomail.mailaccess}).

Each section's C{enabled} switches its plugin: the loader
(L{gomail.configload}) enables the plugin as if C{[plugins.<name>]} were
in the file, unless the section says C{enabled = false} (or a
C{[plugins.<name>]} table does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gomail.configchecks import between, endpoints, networks, setting

#: (plugin name, config section) of each built-in mail access plugin.
MAIL_ACCESS_PLUGINS = (("pop3", "pop3"), ("imap", "imap"))


@dataclass(frozen=True)
class POP3Settings:
    """
    POP3 (RFC 1939, 2449, 2595) over the local Maildirs (section ``pop3``),
    served by the built-in plugin ``pop3``: on by default, on loopback only.
    """

    enabled: bool = setting(True)
    listen: tuple[str, ...] = setting(("tcp:1110:interface=127.0.0.1",), check=endpoints)
    # 995-style listeners: TLS from the first byte, with smtp.tlsCertificate.
    implicitTlsListen: tuple[str, ...] = setting((), check=endpoints)
    # USER/PASS and AUTH without TLS from loopback clients (smtp.allowPlaintextAuthLoopback's twin).
    allowPlaintextLoopback: bool = setting(False)
    # nginx mail proxies (CIDR): they may log in without TLS, and with auth_http's login tickets
    # (gomail.auth.tickets). Empty: none; nginx on the same host needs "127.0.0.1/32".
    trustedProxies: tuple[str, ...] = setting((), check=networks)
    # RFC 1939 3: an autologout timer, if any, "MUST be of at least 10 minutes' duration".
    idleTimeout: int = setting(600, check=between(600, 86400))
    maxConnections: int = setting(1000, check=between(1))
    maxConnectionsPerIP: int = setting(20, check=between(1))
    # -ERR answers one session may collect before it is closed.
    maxErrors: int = setting(20, check=between(1))


@dataclass(frozen=True)
class IMAPSettings:
    """
    IMAP4rev1 (RFC 3501, 2177, 2595) over the local Maildirs (section
    ``imap``), served by the built-in plugin ``imap``: on by default, on
    loopback only. Keys as ``[pop3]``'s, plus literals, IDLE and quota.
    """

    enabled: bool = setting(True)
    listen: tuple[str, ...] = setting(("tcp:1143:interface=127.0.0.1",), check=endpoints)
    # 993-style listeners: TLS from the first byte, with smtp.tlsCertificate.
    implicitTlsListen: tuple[str, ...] = setting((), check=endpoints)
    # LOGIN and AUTHENTICATE without TLS from loopback clients.
    allowPlaintextLoopback: bool = setting(False)
    # nginx mail proxies (CIDR), as [pop3]'s.
    trustedProxies: tuple[str, ...] = setting((), check=networks)
    # RFC 3501 5.4: an autologout timer "MUST be of at least 30 minutes' duration".
    idleTimeout: int = setting(1800, check=between(1800, 86400))
    maxConnections: int = setting(1000, check=between(1))
    maxConnectionsPerIP: int = setting(20, check=between(1))
    # The largest message APPEND takes (its literal); larger: NO [TOOBIG] before it is sent.
    maxLiteralSize: int = setting(26214400, check=between(1024))
    # Octets of mail per user over all folders (0: no limit); APPEND and COPY beyond: NO [OVERQUOTA].
    quotaMB: int = setting(0, check=between(0))
    # Seconds between looks at the selected folder while a client is in IDLE: a fallback for
    # mail other programs write (this process's deliveries, APPENDs, COPYs and EXPUNGEs wake
    # IDLE at once, gomail.mailaccess.notify).
    idlePollInterval: int = setting(30, check=between(1, 3600))


def with_mail_access_plugins(enabled: tuple[tuple[str, Any], ...], config: Any) -> tuple[tuple[str, Any], ...]:
    """
    The enabled plugin tables (L{gomail.configschema.PluginSettings.enabled})
    with each built-in mail access plugin added (an empty table, at the end)
    while its section is enabled, and turned off (C{enabled = false}) while
    it is not.
    """
    tables = list(enabled)
    present = {name for name, _ in tables}
    for name, section in MAIL_ACCESS_PLUGINS:
        on = getattr(config, section).enabled
        if name not in present:
            if on:
                tables.append((name, {}))
        elif not on:
            tables = [(n, {**t, "enabled": False} if n == name else t) for n, t in tables]
    return tuple(tables)


__all__ = ["MAIL_ACCESS_PLUGINS", "IMAPSettings", "POP3Settings", "with_mail_access_plugins"]
