# -*- test-case-name: tests.test_smtp_protocol -*-
"""Our Received: trace header (RFC 5321 4.4, protocol names from RFC 3848)."""

from __future__ import annotations

import datetime
import email.utils
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gomail.smtp.session import SessionAPI


def protocol_name(esmtp: bool, tls: bool, authenticated: bool) -> str:
    """SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA."""
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(session: SessionAPI, queue_id: str, now: float) -> bytes:
    """
    The Received: header for a message arriving in C{session}.

    Every client-supplied part (HELO name, recipient) has been checked by the
    protocol to be printable ASCII without spaces or line breaks.
    """
    ip = session.client_ip
    if ip is None:
        source = "(local)"
    elif ip.version == 6:
        source = f"([IPv6:{ip}])"
    else:
        source = f"([{ip}])"
    proto = protocol_name(session.extended, session.secure, session.authenticated)
    date = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
    lines = [
        f"Received: from {session.helo_name or 'unknown'} {source}",
        f"\tby {session.settings.hostname} (gomail) with {proto} id {queue_id}",
    ]
    if len(session.recipients) == 1:
        lines.append(f"\tfor <{session.recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")
