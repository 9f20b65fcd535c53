# -*- test-case-name: tests.test_tcp -*-
"""TCP socket options for our connections."""

from __future__ import annotations

from typing import Any


def no_delay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm on a TCP connection (under TLS too). SMTP writes
    a message and then its short end-of-data line; with Nagle on, that line
    waits for the peer's delayed ACK: measured here, 45 ms per relayed message
    instead of 1-2 ms.
    """
    while transport is not None:
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass
            return
        transport = getattr(transport, "transport", None)  # TLSMemoryBIOProtocol wraps the TCP one
