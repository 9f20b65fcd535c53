# -*- test-case-name: tests.test_spool_jobs -*-
"""
The spool's durable jobs: plain blocking functions over paths and bytes.

Every change that must survive a crash is one of these functions, run by a
spool writer (L{gomail.interfaces.ISpoolWriter}): in a thread of this
process (L{gomail.spool.writer.BatchWriter}) or in the writer's child process
(L{gomail.spool.process}, one AMP command per job). A job takes the writer's
L{SpoolFiles} first and its arguments by keyword, and is either

  - a function returning C{(result, directories)}: its result and the
    directories whose entries it changed, or
  - a generator that writes its files, yields the list of their
    descriptors, and, once the writer has fsynced them, renames them into
    place and returns C{(result, directories)}.

The writer runs all jobs waiting at a time as one batch and fsyncs each
touched directory once (L{gomail.spool.writer.run_batch}); a job's result is
reported once its batch is durable. No job keeps state of its own, knows a
clock or the reactor, or calls back into a reactor-side object: the
crash-injection tests (tests/test_spool_jobs.py and tests/test_spool.py) run
them directly with a L{FileSystem} that fails at a chosen step.

The jobs, by module:
  - L{queuejobs}: commit a message, rewrite an envelope, remove a message,
    move one to C{corrupt/}, publish spare files;
  - L{maildirjobs}: link (or copy) a message into its recipients' Maildirs;
  - L{failedjobs}: write a failed record, requeue one, forget one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gomail.spool.fs import FileSystem
from gomail.spool.spares import SpareFiles


@dataclass
class SpoolFiles:
    """
    What jobs share in the process that runs them: the spool directory, the
    file operations (tests swap in failing ones), the spare files kept for
    reuse by commits (L{gomail.spool.spares}), and the Maildirs known to
    exist. Built once by whoever owns the writer (the composition root, or
    the writer's child process from its command line).
    """

    directory: str
    fs: FileSystem = field(default_factory=FileSystem)
    spare_files: int = 0
    spares: SpareFiles = field(init=False)
    #: Maildir directories known to have tmp/, new/ and cur/ (only writer threads touch it).
    mailboxes: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.spares = SpareFiles(os.path.join(self.directory, "tmp"), self.spare_files)

    def path(self, *parts: str) -> str:
        """A path inside the spool directory."""
        return os.path.join(self.directory, *parts)
