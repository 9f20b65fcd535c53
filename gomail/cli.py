"""The ``gomail`` operator command."""

from __future__ import annotations

import argparse
import sys

import gomail
from gomail.config import ConfigError, describe, load_config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the C{gomail} console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="gomail", description="gomail mail server operator tool")
    parser.add_argument("--version", action="version", version=f"gomail {gomail.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser("check-config", help="validate a configuration file (and the environment)")
    check.add_argument("file", help="TOML file, or the Go relay's config.json")
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    parser.print_help()
    return 2


def check_config(path: str) -> int:
    """Print the configuration error, or a summary of a valid configuration."""
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: configuration ok")
    print(describe(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
