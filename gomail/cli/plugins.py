# -*- test-case-name: tests.test_plugins -*-
"""C{gomail plugins list}: every plugin found, and which the configuration enables."""

from __future__ import annotations

import argparse
import sys

from gomail.cli.common import common_options, load
from gomail.configload import ConfigError
from gomail.configschema import Config
from gomail.extension.loader import PluginError, discover, load_plugins

COMMANDS = ("plugins",)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add C{plugins list}."""
    plugins = commands.add_parser("plugins", help="list the plugins found and enabled")
    actions = plugins.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[common_options("plugins.path and [plugins.<name>] tables")],
                       help="every plugin found: name, interfaces, enabled, source file")


def run(args: argparse.Namespace) -> int:
    """Print one line per plugin found; exit 1 with one line when a plugin cannot be loaded."""
    if getattr(args, "action", None) != "list":
        print("gomail: plugins: say `gomail plugins list`", file=sys.stderr)
        return 2
    try:
        config = load(args)
        found = discover(config.plugins.path)
        built = {plugin.name: plugin for plugin in load_plugins(config.plugins, None, config.smtp.hostname,
                                                                config.dataDir)}
    except ConfigError as e:
        print(f"gomail: configuration error: {e}", file=sys.stderr)
        return 1
    except PluginError as e:
        print(f"gomail: plugin error: {e}", file=sys.stderr)
        return 1
    print(f"{'NAME':<20} {'ENABLED':<8} {'INTERFACES':<40} SOURCE")
    for name in sorted(found):
        plugin = built.get(name)
        interfaces = ", ".join(i.__name__ for i in plugin.interfaces) if plugin else "-"
        print(f"{name:<20} {'yes' if plugin else 'no':<8} {interfaces:<40} {found[name].source}")
        if found[name].spec.description:
            print(f"{'':<20} {found[name].spec.description}")
    return 0


def check(config: Config) -> str | None:
    """The plugin problem of a configuration (for C{check-config}), or None."""
    try:
        load_plugins(config.plugins, None, config.smtp.hostname, config.dataDir)
    except PluginError as e:
        return str(e)
    return None
