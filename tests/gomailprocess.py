"""
The one way process tests run gomail: C{twistd -n gomail --config FILE} in a
work directory of the test's own, as an operator runs it, and the test
smarthost (L{tests.smarthost}) beside it.

    node = GomailNode(self, CONFIG, port=free_port())   # writes <workdir>/gomail.toml
    await node.start()                                   # spawns twistd, waits for "gomail ready"
    ...
    await node.stop_cleanly()                            # SIGTERM; asserts a clean shutdown

A started process is stopped (SIGTERM, SIGKILL after 30 s) when the test ends,
whatever happened; tests wait on lines of output and process exits, never on
time.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.processes import TWISTD, ServerProcess, spawn

#: The repository root: where C{python -m tests.smarthost} is run from.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GomailNode:
    """
    One gomail server of a test: its work directory, configuration file and,
    once started, its process.

    @ivar fields: the values C{config} is formatted with: the keyword arguments
        given, plus C{data} (<workdir>/data) and C{workdir}.
    """

    def __init__(self, test: TestCase, config: str = "", name: str = "gomail", workdir: str | None = None,
                 config_file: str | None = None, data: str | None = None, **fields: Any) -> None:
        self.test = test
        self.workdir = workdir or os.path.abspath(test.mktemp())
        os.makedirs(self.workdir, exist_ok=True)
        self.name = name
        self.data = data or os.path.join(self.workdir, "data")
        # config_file: a name relative to the work directory, given to twistd as it is
        self.config_argument = config_file or os.path.join(self.workdir, f"{name}.toml")
        self.config = os.path.join(self.workdir, self.config_argument)
        self.fields = {"data": self.data, "workdir": self.workdir, **fields}
        self.process: ServerProcess | None = None
        if config:
            self.write_config(config)

    def write_config(self, template: str) -> None:
        """
        Write the configuration: C{template} formatted with L{fields}. Unless
        it has an C{[admin]} (C{[pop3]}, C{[imap]}) section, the admin (POP3,
        IMAP) listener takes a free port (its default 8089 (1110, 1143) would be shared
        by every test's server).
        """
        text = template.format(**self.fields)
        if "[admin]" not in text:
            text += '\n[admin]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        if "[pop3]" not in text:
            text += '\n[pop3]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        if "[imap]" not in text:
            text += '\n[imap]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
        with open(self.config, "w") as f:
            f.write(text)

    def spawn(self, env: dict[str, str] | None = None) -> ServerProcess:
        """Start twistd (stopped when the test ends) without waiting for it to be ready."""
        self.process = spawn(reactor, [*TWISTD, "-n", "--pidfile=", "gomail", "--config", self.config_argument],
                             cwd=self.workdir, env=env)
        self.test.addCleanup(self.process.stop, reactor)
        return self.process

    async def start(self, env: dict[str, str] | None = None) -> ServerProcess:
        """Start twistd and wait until it logs C{gomail ready}."""
        process = self.spawn(env)
        await process.wait_for(b"gomail ready", reactor)
        return process

    async def wait_for(self, text: bytes, timeout: float = 30) -> None:
        """Wait until the running server has logged C{text}."""
        assert self.process is not None, "the server was not started"
        await self.process.wait_for(text, reactor, timeout)

    @property
    def output(self) -> bytes:
        return self.process.output if self.process is not None else b""

    async def stop_cleanly(self) -> None:
        """
        SIGTERM, and check the shutdown was clean: twistd re-raises SIGTERM
        after a clean shutdown (the exit init systems expect), so the exit is 0
        or "killed by TERM", never a crash or a SIGKILL; no traceback logged.
        """
        assert self.process is not None, "the server was not started"
        code = await self.process.stop(reactor)
        output = self.output.decode(errors="replace")
        self.test.assertIn(code, (0, -15), output)
        self.test.assertIn("Server Shut Down", output)
        self.test.assertNotIn("Traceback", output)


class Smarthost:
    """
    The test smarthost (L{tests.smarthost}) on C{port}, keeping what it
    receives under C{spool}; C{options} are its command-line flags
    (C{--dot-delay}, C{--stall}, C{--offer-auth}...).
    """

    def __init__(self, test: TestCase, port: int, spool: str) -> None:
        self.test = test
        self.port = port
        self.spool = spool
        self.process: ServerProcess | None = None

    async def start(self, *options: str) -> ServerProcess:
        """Start it (stopped when the test ends) and wait until it listens."""
        self.process = spawn(reactor, [sys.executable, "-m", "tests.smarthost", "--port", str(self.port),
                                       "--spool", self.spool, *options], cwd=ROOT)
        self.test.addCleanup(self.process.stop, reactor)
        await self.process.wait_for(b"smarthost ready", reactor)
        return self.process

    async def stop_cleanly(self) -> None:
        """SIGTERM; it must exit cleanly, without a traceback."""
        assert self.process is not None, "the smarthost was not started"
        self.test.assertIn(await self.process.stop(reactor), (0, -15), self.process.output)
        self.test.assertNotIn(b"Traceback", self.process.output)


__all__ = ["ROOT", "GomailNode", "Smarthost"]
