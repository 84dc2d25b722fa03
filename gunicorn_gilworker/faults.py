"""Crashes Python cannot catch leave every thread's Python traceback in the error log.

A segfault in a C extension (more likely on a free-threaded build, with extensions never tested
without a GIL), a bus error, a floating-point trap, an illegal instruction or `abort()` in C end
the process before any Python handler runs. The stdlib's `faulthandler` writes the Python
traceback of every thread to a file descriptor from its C signal handler, then lets the signal
do what it would have done. gilworker points it at gunicorn's error log in every process it
owns: the master (where thread mode's workers run), and each worker process once gunicorn has
set its signal handlers. Installed after them, faulthandler passes a signal on to the handler it
replaced: a SIGABRT that the master sends a timed-out worker still reaches gunicorn's
`worker_abort` path, after the traceback shows where each thread was stuck.

The descriptor is taken anew whenever gunicorn (re)opens its log files (start, HUP, USR1): a
closed one could be reused by a connection by the time a crash writes to it.
"""

from __future__ import annotations

import faulthandler
import sys
from typing import IO, Any


def error_stream(log: Any) -> IO[str]:
    """The stream behind gunicorn's error log (`--error-logfile`), else stderr (syslog has no
    descriptor to write to from a signal handler; a `--logger-class` may have no error_log)."""
    error_log = getattr(log, "error_log", None)
    for handler in getattr(error_log, "handlers", ()):
        stream = getattr(handler, "stream", None)
        try:
            stream.fileno()  # type: ignore[union-attr]
        except (OSError, ValueError, AttributeError):  # closed, or not a file
            continue
        return stream  # type: ignore[return-value]
    return sys.stderr


def write_tracebacks_on_crash(log: Any) -> None:
    """(Re)enable faulthandler for every thread, writing to the error log."""
    faulthandler.enable(file=error_stream(log), all_threads=True)
