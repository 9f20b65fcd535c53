# -*- test-case-name: tests.test_control -*-
"""
The control channel: how the C{gomail} command asks a running server to
change its queue.

A running server holds its spool: its delivery queue keeps an index of the
queued messages in memory and is the only writer of ``queue/``. A second
writer (the C{gomail queue} command rewriting an envelope while the server
delivered and removed the same message) left a C{.json} without its C{.eml}.
So every changing C{gomail queue} command goes through the server: it
connects to C{<spool>/control.sock} (a Unix socket, mode 0600, served by
L{gomail.control.server.ControlService}), sends one AMP command
(L{gomail.control.commands}) and the server applies it in its own
L{DeliveryQueue<gomail.delivery.queue.DeliveryQueue>} and
L{FailedStore<gomail.delivery.failed.FailedStore>}. Only when nothing
answers there, and the command gets the spool's writer lock
(L{gomail.control.lock}), does it change the files itself.
"""

from __future__ import annotations

import os
from typing import Self

#: The control socket's name in the spool directory.
SOCKET_NAME = "control.sock"
#: The longest path a Unix socket address holds (108 bytes with its NUL on Linux).
_MAX_ADDRESS = 107


class SocketPath:
    """
    The control socket of a spool, as a path to bind or connect to.

    A Unix socket address is at most 107 bytes; a spool deeper than that is
    reached through a descriptor of its directory (C{/proc/self/fd/N/control.sock},
    Linux), held until L{close}.

    @ivar real: the socket's path, for messages.
    @ivar address: what to bind or connect to.
    """

    def __init__(self, directory: str) -> None:
        self.real = os.path.join(os.path.abspath(directory), SOCKET_NAME)
        self._fd: int | None = None
        self.address = self.real
        if len(os.fsencode(self.real)) > _MAX_ADDRESS:
            self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.address = f"/proc/self/fd/{self._fd}/{SOCKET_NAME}"

    def close(self) -> None:
        """Let go of the directory's descriptor (if one was needed)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["SOCKET_NAME", "SocketPath"]
