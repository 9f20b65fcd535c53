# -*- test-case-name: tests.test_cli -*-
"""
The C{gomail} operator command, one module per command group:

- L{gomail.cli.main}: the entry point (C{gomail}, C{python -m gomail.cli}) and C{check-config};
- L{gomail.cli.queue}: C{gomail queue} (L{gomail.cli.queueview} reads the spool,
  L{gomail.cli.queuefiles} changes it when no server runs);
- L{gomail.cli.user}, L{gomail.cli.blacklist}, L{gomail.cli.alias}: the user database;
- L{gomail.cli.common}: the options and configuration lookup they share.
"""

from gomail.cli.main import main

__all__ = ["main"]
