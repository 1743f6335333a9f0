"""Exit statuses and the one way a command reports an error: ``PROG: error: MESSAGE`` on stderr."""

from __future__ import annotations

import errno
import os
import sys

EXIT_OK = 0
EXIT_ERROR = 1  # the work failed (a run, a pair, a model that does not load)
EXIT_USAGE = 2  # refused before any work: bad options, config or paths (argparse's status too)
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


def fail(message: str, code: int = EXIT_ERROR, prog: str | None = "metaloss") -> int:
    """Print ``PROG: error: MESSAGE`` (``error: MESSAGE`` for ``prog=None``) on stderr and return
    ``code``; under a distributed launch the line names the rank that failed."""
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    prefix = f"{prog}: error: " if prog else "error: "
    print(f"{prefix}{f'[rank {rank}] ' if rank else ''}{message}", file=sys.stderr)
    return code


def os_error_line(err: OSError) -> str:
    """A failed read or write in one line, naming the file where the error does; a full disk says so."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        return f"the disk is full: cannot write {err.filename or 'a file'} ({reason})"
    return f"{err.filename}: {reason}" if err.filename else reason
