# -*- test-case-name: tests.test_control_client -*-
"""
The C{gomail} command's side of the control channel: a small blocking AMP
client (the command runs no reactor). Every socket operation has a timeout.

The boxes are built and read with the commands' own AMP argument types
(L{amp.Command.makeArguments}, L{amp.Command.parseResponse}); only the
framing (a 16-bit length before each key and value, an empty key after the
last) is written here.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any, Self

from twisted.protocols import amp

from gomail.control import SocketPath

#: Seconds a command waits for the server to connect and to answer, by default.
DEFAULT_TIMEOUT = 60.0
_LENGTH = struct.Struct("!H")


class ControlError(Exception):
    """The control channel could not be used; the text says why, in one line."""


class ServerRefused(ControlError):
    """The server answered with an error (an unknown id, a bad request): nothing was changed."""


class ControlClient:
    """One connection to a running server's control socket."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self._buffer = b""
        self._tag = 0

    @classmethod
    def connect(cls, directory: str, timeout: float = DEFAULT_TIMEOUT) -> ControlClient | None:
        """
        Connect to the control socket of the spool in C{directory}; None when
        no server answers there (no socket, or a socket nothing listens on).

        @raise ControlError: when a server may be there but cannot be reached
            (permission denied, no answer within C{timeout}).
        """
        with SocketPath(directory) as path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(path.address)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                return None
            except TimeoutError:
                sock.close()
                raise ControlError(f"the server did not accept a connection on {path.real} "
                                   f"within {timeout:g} s") from None
            except OSError as e:
                sock.close()
                if e.errno in (errno.EACCES, errno.EPERM):
                    raise ControlError(f"cannot connect to {path.real}: permission denied "
                                       f"(run this as the user the server runs as)") from None
                raise ControlError(f"cannot connect to {path.real}: {e.strerror or e}") from None
            return cls(sock, path.real)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        """
        Send one command and wait for its answer (at most the connection's
        timeout for each read and write).

        @raise ServerRefused: when the server answers with one of the command's errors.
        @raise ControlError: for no answer in time, a closed connection or an unexpected error.
        """
        self._tag += 1
        tag = str(self._tag).encode("ascii")
        box = command.makeArguments(arguments, None)
        box[amp.COMMAND] = command.commandName
        box[amp.ASK] = tag
        try:
            self.sock.sendall(box.serialize())
            answer = self._read_box()
        except TimeoutError:
            raise ControlError(f"the server did not answer on {self.path} in time") from None
        except OSError as e:
            raise ControlError(f"the connection to {self.path} failed: {e.strerror or e}") from None
        if answer.get(amp.ANSWER) == tag:
            return command.parseResponse(answer, None)
        if answer.get(amp.ERROR) == tag:
            description = answer.get(amp.ERROR_DESCRIPTION, b"").decode("utf-8", "replace")
            if answer.get(amp.ERROR_CODE) in command.reverseErrors:  # type: ignore[attr-defined]
                raise ServerRefused(description)
            raise ControlError(f"the server could not do it ({description}): see its log")
        raise ControlError(f"unexpected answer on {self.path}")

    def _read_box(self) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        while True:
            key = self._read_string()
            if not key:
                return box
            box[key] = self._read_string()

    def _read_string(self) -> bytes:
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        return self._read(length)

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            data = self.sock.recv(65536)
            if not data:
                raise ControlError(f"the server closed the connection on {self.path} before it answered")
            self._buffer += data
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data


__all__ = ["DEFAULT_TIMEOUT", "ControlClient", "ControlError", "ServerRefused"]
