# -*- test-case-name: tests.test_smtp_protocol -*-
"""
The shape of an SMTP session, as its parts see it.

L{gomail.smtp.protocol.GomailESMTP} is composed of mixins (L{SMTPFraming},
L{MailTransactionMixin}, L{SASLMixin}), each using what the others and the
protocol provide. This class declares that shared state and those methods in
one place, for readers and type checkers: it holds no values and, at run time,
no methods (the stubs exist only for type checkers; the real ones are defined
further down the MRO, so nothing here could shadow them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.logger import Logger

    from gomail.configschema import SMTPSettings
    from gomail.netaddr import IPAddress
    from gomail.smtp.address import Path
    from gomail.smtp.headeredit import HeaderStripper
    from gomail.smtp.reader import DataReader
    from gomail.smtp.server import SMTPServer


class SessionAPI:
    """What every part of an SMTP session may use (declared here, provided by the parts)."""

    # Twisted's transport (TCP or TLS): typed loosely, as each transport has its own extras.
    transport: Any
    log: Logger
    server: SMTPServer
    settings: SMTPSettings
    client_host: str
    client_ip: IPAddress | None
    peer_host: str
    peer_ip: IPAddress | None
    secure: bool
    helo_name: str | None
    extended: bool
    sender: Path | None
    recipients: list[str]
    body_type: str | None
    account: Any  # the Account of a successful AUTH or XCLIENT LOGIN
    authenticated: bool
    transactions: int
    mode: str  # twisted.mail's: COMMAND, DATA or AUTH
    admitted: bool
    spoke: bool
    counted_as: str | None
    close_when_idle: bool
    hang_up_when_answered: bool
    closing_reply: tuple[int, str, str]
    closed: bool
    lost: bool
    junk_commands: int
    _input: bytes
    _message: Any  # the spool's incoming message while DATA is open
    _reader: DataReader | None
    _headers: HeaderStripper | None  # removes header fields for IHeaderFilter plugins, while DATA is open
    _first_chunk: bool
    _data_started: float
    _auth_failures: int
    _auth_step: Any

    if TYPE_CHECKING:
        @property
        def in_transaction(self) -> bool: ...
        @property
        def pipelining_offered(self) -> bool: ...
        def reply(self, code: int, status: str, text: str) -> None: ...
        def banner(self) -> None: ...
        def sendCode(self, code: int, message: bytes = b"") -> None: ...
        def hang_up(self, code: int, status: str, text: str) -> None: ...
        def close_connection(self) -> None: ...
        def close_gracefully(self) -> None: ...
        def count_junk(self) -> bool: ...
        def exempt_from_sync(self) -> bool: ...
        def reset_transaction(self) -> None: ...
        def resetTimeout(self) -> None: ...
        def end_auth_exchange(self) -> None: ...
        def _data_received(self) -> None: ...
        def _deadline(self, name: str, seconds: float, expired: Any) -> None: ...
        def _pause(self, reason: str) -> None: ...
        def _resume(self, reason: str) -> None: ...
        def _wait_for(self, result: Any) -> None: ...
        def _plaintext_auth_allowed(self) -> bool: ...
