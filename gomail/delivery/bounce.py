# -*- test-case-name: tests.test_delivery_dsn -*-
"""
Delivery status notifications (RFC 3464) to a message's sender: which are
due, and their content.

- A "failed" DSN for the recipients that failed permanently, sent after the
  attempt that found out (one DSN per attempt that has some), not when the
  message's last recipient settles: each recipient is reported once, and the
  envelope records who was (C{extra["dsn_failed"]}).
- One "delayed" DSN (a warning: the message is still being retried) once the
  message has waited C{delivery.delayWarning} seconds with recipients still
  pending, as Postfix's C{delay_warning_time}; the envelope records when it
  went out (C{extra["dsn_delayed"]}), so it is sent once even across restarts.
- None ever for a message from the null sender (a DSN itself): no loops.
"""

from __future__ import annotations

import datetime
import email.utils
import secrets
from typing import Any

from gomail.spool.envelope import FAILED, Envelope, Recipient

_MAX_HEADER_BYTES = 64 * 1024
#: Envelope extra keys: the addresses already reported failed; when the delay warning went out.
REPORTED_FAILED = "dsn_failed"
DELAY_WARNED = "dsn_delayed"
#: Set on messages bounced whole by earlier versions (at most one bounce then): nothing more is reported.
LEGACY_BOUNCED = "bounced"


def original_headers(message_path: str) -> bytes:
    """The header section of a queued message (at most 64 KiB), CRLF endings."""
    with open(message_path, "rb") as f:
        return header_section(f.read(_MAX_HEADER_BYTES))


def header_section(content: bytes) -> bytes:
    """The header section at the start of C{content} (at most 64 KiB of it)."""
    head = content[:_MAX_HEADER_BYTES]
    end = head.find(b"\r\n\r\n")
    return head[: end + 2] if end >= 0 else head


def unreported_failures(envelope: Envelope) -> list[Recipient]:
    """The failed recipients whose sender has not been told yet (none for the null sender)."""
    if not envelope.sender or envelope.extra.get(LEGACY_BOUNCED):
        return []
    reported = set(envelope.extra.get(REPORTED_FAILED, ()))
    return [r for r in envelope.recipients if r.status == FAILED and r.address not in reported]


def mark_reported(envelope: Envelope, recipients: list[Recipient]) -> None:
    """Record in the envelope that C{recipients}' failures were reported."""
    reported = list(envelope.extra.get(REPORTED_FAILED, ()))
    reported += [r.address for r in recipients if r.address not in reported]
    envelope.extra = {**envelope.extra, REPORTED_FAILED: reported}  # replaced, never changed in place


def delay_warning_time(envelope: Envelope, delay_warning: float) -> float | None:
    """When C{envelope}'s delay warning is due, or None when it never will be (off, sent, null sender)."""
    if delay_warning <= 0 or not envelope.sender or DELAY_WARNED in envelope.extra:
        return None
    return envelope.received + delay_warning


def _status_of(reply: str | None, action: str = "failed") -> str:
    first = "5" if action == "failed" else "4"
    words = (reply or "").split()
    if len(words) > 1 and words[1].count(".") == 2 and words[1][0] in "45":
        return first + words[1][1:]  # a permanent report even of an expired 4.x.y
    return first + ".0.0"


def _date(moment: float) -> str:
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(moment, datetime.UTC))


def build_bounce(envelope: Envelope, headers: bytes, hostname: str, now: float) -> bytes:
    """The bounce for all of C{envelope}'s failed recipients (see L{build_dsn})."""
    return build_dsn(envelope, [r for r in envelope.recipients if r.status == FAILED], headers, hostname, now)


def build_dsn(envelope: Envelope, recipients: list[Recipient], headers: bytes, hostname: str, now: float,
              action: str = "failed", retry_until: float | None = None) -> bytes:
    """
    A DSN to C{envelope}'s sender about C{recipients}: C{action} "failed" (a
    bounce) or "delayed" (a warning; C{retry_until} says until when it is
    retried). A multipart/report with a human explanation, a
    message/delivery-status part per RFC 3464, and the original message's
    headers. CRLF line endings throughout.
    """
    boundary = f"gomail-{secrets.token_hex(8)}"
    if action == "failed":
        subject = "Undelivered Mail Returned to Sender"
        explanation = ["Your message could not be delivered to one or more recipients."]
    else:
        subject = "Delayed Mail (still being retried)"
        hours = (now - envelope.received) / 3600
        explanation = ["THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.", "",
                       f"Your message could not be delivered for {hours:.1f} hours."]
        if retry_until is not None:
            explanation.append(f"It will be retried until it is {(retry_until - envelope.received) / 86400:.1f} "
                               "days old.")
    explanation = [f"This is the mail system at host {hostname}.", "", *explanation, ""] + [
        f"<{r.address}>: {r.reply or 'delivery failed'}" for r in recipients]
    per_recipient = []
    for r in recipients:
        per_recipient += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            f"Action: {action}",
            f"Status: {_status_of(r.reply, action)}",
            f"Diagnostic-Code: smtp; {r.reply or 'delivery failed'}",
        ]
        if action == "delayed" and retry_until is not None:
            per_recipient.append(f"Will-Retry-Until: {_date(retry_until)}")
    date, arrival = _date(now), _date(envelope.received)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{envelope.sender}>",
        f"Subject: {subject}",
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


async def queue_dsn(spool: Any, envelope: Envelope, recipients: list[Recipient], action: str, hostname: str,
                    now: float, retry_until: float | None = None) -> Envelope:
    """
    Commit a DSN (L{build_dsn}) to C{envelope}'s sender into C{spool}, from
    the null sender (so it is never answered itself); returns its envelope.
    The original's headers come from memory when the spool holds its content.
    """
    content = spool.recent.get(envelope.id)
    if content is not None:
        headers = header_section(content)
    else:
        headers = await spool.run(original_headers, spool.message_path(envelope.id))
    report = build_dsn(envelope, recipients, headers, hostname, now, action, retry_until=retry_until)
    message = spool.new_message()
    message.write(report)
    dsn = Envelope(id=message.id, sender="", recipients=[Recipient(envelope.sender)], received=now,
                   next_attempt=now, client_address="", client_helo=hostname,
                   extra={"bounce_for": envelope.id, "dsn": action})
    await message.commit(dsn)
    return dsn
