"""Delivery status notifications (RFC 3464) for mail we give up on."""

from __future__ import annotations

import datetime
import email.utils
import secrets

from gomail.spool.envelope import FAILED, Envelope

_MAX_HEADER_BYTES = 64 * 1024


def original_headers(message_path: str) -> bytes:
    """The header section of a queued message (at most 64 KiB), CRLF endings."""
    with open(message_path, "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    end = head.find(b"\r\n\r\n")
    return head[: end + 2] if end >= 0 else head


def _status_of(reply: str | None) -> str:
    words = (reply or "").split()
    if len(words) > 1 and words[1].count(".") == 2 and words[1][0] in "45":
        return "5" + words[1][1:]  # a permanent report even of an expired 4.x.y
    return "5.0.0"


def build_bounce(envelope: Envelope, headers: bytes, hostname: str, now: float) -> bytes:
    """
    The bounce for C{envelope}'s failed recipients: a multipart/report with a
    human explanation, a message/delivery-status part per RFC 3464, and the
    original message's headers. CRLF line endings throughout.
    """
    failed = [r for r in envelope.recipients if r.status == FAILED]
    boundary = f"gomail-{secrets.token_hex(8)}"
    date = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    arrival = email.utils.format_datetime(datetime.datetime.fromtimestamp(envelope.received, datetime.timezone.utc))
    explanation = [
        f"This is the mail system at host {hostname}.",
        "",
        "Your message could not be delivered to one or more recipients.",
        "",
    ] + [f"<{r.address}>: {r.reply or 'delivery failed'}" for r in failed]
    per_recipient = []
    for r in failed:
        per_recipient += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            "Action: failed",
            f"Status: {_status_of(r.reply)}",
            f"Diagnostic-Code: smtp; {r.reply or 'delivery failed'}",
        ]
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{envelope.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{envelope.id}.{secrets.token_hex(4)}.bounce@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        *explanation,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Gomail-Queue-ID: {envelope.id}",
        f"Arrival-Date: {arrival}",
        *per_recipient,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n"
    body = "\r\n".join(lines).encode("ascii", "replace") + b"\r\n" + headers.rstrip(b"\r\n") + tail.encode()
    return body
