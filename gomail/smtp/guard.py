# -*- test-case-name: tests.test_smtp_abuse -*-
"""
The abuse rules for SMTP commands, as Postfix applies them by default; pure functions.

- Non-SMTP commands (Postfix's C{smtpd_forbidden_commands}): HTTP and proxy
  verbs, and header lines such as C{Host:}, mean the client speaks another
  protocol (or is a browser tricked into posting to us): disconnect at once.
- Junk commands (C{smtpd_junk_command_limit}): NOOP, RSET, VRFY, HELP, ETRN
  and EXPN move no mail; a session may send a bounded number of them between
  two accepted messages.
- Pipelining (RFC 2920 3.1, Postfix's C{smtpd_forbid_unauth_pipelining}):
  without the PIPELINING extension (before EHLO, or after HELO) a client waits
  for each reply; with it, a group of commands still ends at one of the
  commands below, and the client waits for its reply. Input already behind
  such a command is a client that does not listen (a spammer's script, or a
  smuggling attempt): 554 5.5.0 and close, unless the client is trusted or
  authenticated.
"""

from __future__ import annotations

import re

#: Control characters other than TAB: never valid in a command line.
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

#: Verbs of other protocols: a client that sends one is disconnected.
NON_SMTP = frozenset({b"CONNECT", b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS",
                      b"PATCH", b"TRACE"})
_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")

#: Commands that move no mail, counted against C{smtp.junkCommandLimit}.
JUNK = frozenset({b"NOOP", b"RSET", b"VRFY", b"HELP", b"ETRN", b"EXPN"})

#: Commands after which a client must wait for the reply (RFC 2920 3.1,
#: RFC 3207 4.2, RFC 4954 4, and XCLIENT, which starts a new session).
ENDS_GROUP = frozenset({b"EHLO", b"HELO", b"DATA", b"VRFY", b"EXPN", b"TURN", b"ETRN", b"NOOP",
                        b"HELP", b"STARTTLS", b"AUTH", b"XCLIENT", b"QUIT"})


def is_non_smtp(line: bytes) -> bool:
    """Whether a command line belongs to another protocol (HTTP, a proxy, a header)."""
    verb = line.split(b" ", 1)[0]
    return verb.upper() in NON_SMTP or bool(_HEADER_LINE.match(line))


def breaks_sync(verb: bytes, pipelining_offered: bool) -> bool:
    """
    Whether more input behind C{verb} breaks the command synchronisation.

    @param verb: the upper-cased verb of the command just read.
    @param pipelining_offered: whether this session's EHLO offered PIPELINING.
    """
    return not pipelining_offered or verb in ENDS_GROUP


def printable(data: bytes) -> str:
    """Client bytes made safe for one log line."""
    return data.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")
