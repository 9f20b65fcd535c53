# -*- test-case-name: tests.test_service -*-
"""
``twistd gomail``: command-line options and the service maker.

The only module that imports the global reactor.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

from twisted.python import usage

from gomail.configload import ConfigError, load_config
from gomail.configschema import Config, endpoints


class Options(usage.Options):
    """Options for C{twistd gomail}; they only parse and check, nothing is built here."""

    synopsis = "[--config FILE] [--smtp ENDPOINT ...] [--smtps ENDPOINT ...]"
    longdesc = ("Run the gomail mail server. Without --config only the built-in defaults and "
                "environment variables apply. Endpoints are Twisted endpoint strings, "
                "e.g. tcp:2525:interface=127.0.0.1.")
    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "Configuration file: TOML, or the Go relay's config.json (name ends in .json)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["smtp"] = []
        self["smtps"] = []

    def opt_smtp(self, description: str) -> None:
        """SMTP listener endpoint (repeatable; replaces smtpHost/smtpPort and smtp.listen)."""
        self["smtp"].append(description)

    def opt_smtps(self, description: str) -> None:
        """Implicit-TLS SMTP listener endpoint, port 465 style (repeatable; replaces smtp.implicitTlsListen)."""
        self["smtps"].append(description)

    def postOptions(self) -> None:
        for option in ("smtp", "smtps"):
            problem = endpoints(tuple(self[option]))
            if problem:
                raise usage.UsageError(f"--{option}: {problem}")
        if self["config"] and not os.path.exists(self["config"]):
            raise usage.UsageError(f"--config: no such file: {self['config']}")


def configure(options: Options) -> Config:
    """Load the configuration and apply the command line's listener overrides."""
    config = load_config(options["config"])
    smtp = config.smtp
    if options["smtp"]:
        smtp = dataclasses.replace(smtp, listen=tuple(options["smtp"]))
    if options["smtps"]:
        smtp = dataclasses.replace(smtp, implicitTlsListen=tuple(options["smtps"]))
    return dataclasses.replace(config, smtp=smtp)


def makeService(options: Options) -> Any:
    """Build the gomail service for twistd; a bad configuration exits with one line."""
    from twisted.internet import reactor

    from gomail.extension.loader import PluginError
    from gomail.logtext import twistd_log_file
    from gomail.root import build_service
    from gomail.tls import TLSConfigError

    def fatal(failure: Any) -> None:
        # twistd has no exit status of its own for a failed start: leave with 1 once stopped.
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    try:
        config = configure(options)
        twistd_options = getattr(options, "parent", None)  # twistd's own options, when run by twistd
        text_log_file = None
        if twistd_options is not None and config.logging.format == "text":
            text_log_file = twistd_log_file(twistd_options)
        return build_service(config, reactor, on_fatal=fatal, text_log_file=text_log_file,
                             reload_config=lambda: configure(options))
    except (ConfigError, TLSConfigError) as e:
        raise SystemExit(f"gomail: configuration error: {e}") from None
    except PluginError as e:
        raise SystemExit(f"gomail: plugin error: {e}") from None
