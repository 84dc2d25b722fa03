"""uvicorn's log ("uvicorn.error") in gunicorn's error log, as a person reads it.

Every uvicorn server logs its life in seven lines ("Started server process [pid]", "Waiting for
application startup.", "Application startup complete.", and four at shutdown), naming the
process: with workers as threads, `-w 4` printed each four times with the same pid. Those go to
debug level; each worker logs one line with its own id when it serves (`worker.py`), and
gunicorn's "Worker exiting" line when it ends. uvicorn's per-client warnings are counted
(`client_noise.py`). uvicorn's access log stays off: gilworker writes gunicorn's.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn_gilworker.client_noise import ClientNoise, UvicornClientNoise

UVICORN_LOG = "uvicorn.error"
LIFECYCLE = frozenset(
    {
        "Started server process [%d]",
        "Waiting for application startup.",
        "Application startup complete.",
        "Shutting down",
        "Waiting for application shutdown.",
        "Application shutdown complete.",
        "Finished server process [%d]",
    }
)


# uvicorn's `limit_max_requests` line: in a worker thread only the thread is replaced
MAX_REQUESTS = "Maximum request limit of %d exceeded. Terminating process."
WORKER_THREAD = "gilworker-"  # the name of a worker thread: gilworker-<worker id>


class QuietLifecycle(logging.Filter):
    """uvicorn's per-server lifecycle lines, at debug level; its max-requests line in the words
    of what is replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        thread = record.threadName or ""
        if record.msg == MAX_REQUESTS and thread.startswith(WORKER_THREAD):
            worker = thread[len(WORKER_THREAD) :]
            record.msg = "Maximum request limit of %d exceeded: worker thread %s is replaced."
            record.args = (*record.args, worker)  # type: ignore[misc]
            return True
        if record.msg not in LIFECYCLE or record.levelno != logging.INFO:
            return True
        # not isEnabledFor(): on 3.13 it answers False while a record is being handled
        if logging.getLogger(record.name).getEffectiveLevel() > logging.DEBUG:
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def route_uvicorn_log(log: Any) -> None:
    """uvicorn's messages to gunicorn's error log, at its level, lifecycle lines at debug."""
    logger = logging.getLogger(UVICORN_LOG)
    logger.handlers = log.error_log.handlers
    logger.setLevel(log.error_log.level)
    logger.propagate = False
    if not any(isinstance(f, QuietLifecycle) for f in logger.filters):
        logger.addFilter(QuietLifecycle())


def count_uvicorn_client_noise(noise: ClientNoise) -> None:
    """uvicorn's per-client warnings, counted by this process's ClientNoise (one filter)."""
    logger = logging.getLogger(UVICORN_LOG)
    for old in [f for f in logger.filters if isinstance(f, UvicornClientNoise)]:
        logger.removeFilter(old)
    logger.addFilter(UvicornClientNoise(noise))
