"""
What the IMAP and POP3 mixins call on their session, declared once for the
type checker: the methods come from the session classes
(L{gomail.mailaccess.imap.GomailIMAP4} with twisted's C{IMAP4Server},
L{gomail.mailaccess.pop3.GomailPOP3} with twisted's C{POP3}). At run time
these bases are empty, so they hide nothing those classes define.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


class IMAPSessionAPI:
    """The IMAP session's replies, as its mixins use them."""

    if TYPE_CHECKING:
        def sendPositiveResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendNegativeResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendBadResponse(self, tag: Any = None, message: bytes = b"") -> None: ...

        def sendUntaggedResponse(self, message: bytes, isAsync: Any = None) -> None: ...

        def sendLine(self, line: bytes) -> None: ...

        def _answer_failure(self, tag: Any, failure: Any = None) -> None: ...


class POP3SessionAPI:
    """The POP3 session's replies, as its mixins use them."""

    if TYPE_CHECKING:
        def ok(self, text: str = "") -> None: ...

        def err(self, text: str) -> None: ...

        def multi(self, first: str, lines: list[bytes]) -> None: ...

        def sendLine(self, line: bytes) -> None: ...

        def close_connection(self) -> None: ...


__all__ = ["IMAPSessionAPI", "POP3SessionAPI"]
