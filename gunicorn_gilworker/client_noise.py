"""What a client can make a worker log, as often as it likes, summarised.

A connection closed by `--header-timeout` and a malformed request (uvicorn's "Invalid HTTP
request received.") are the client's doing, and a client can make thousands a second: a line
each would bury the log. So each is logged at debug level and counted in statsd
(`gilworker.client.<kind>`); at the default level
the first of a kind is logged with a word that more are counted, and the counts come as one line
per kind and interval (60 s), from every worker of the process together.

Counting never logs: uvicorn's warnings are counted from inside a logging filter, and Python's
logging drops a call made while the same thread is handling another record (3.13). The lines
and statsd counts go out from each worker's tick (every 0.1 s), `flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gunicorn_gilworker.operations.measures import process_measures
from gunicorn_gilworker.per_process import PerProcess

INTERVAL = 60.0

KINDS = {
    "slow_head": "connections closed because their request head took over --header-timeout",
    "malformed": "malformed requests answered 400",
}
_UVICORN_MESSAGES = {  # uvicorn's warnings, per client
    "Invalid HTTP request received.": "malformed",
}


class ClientNoise:
    """One per process: counts per kind, logged as they start, summarised once per interval."""

    def __init__(self, log: Any, interval: float = INTERVAL) -> None:
        self.log = log
        self.interval = interval
        self.counts = dict.fromkeys(KINDS, 0)  # this interval's
        self.unsent = dict.fromkeys(KINDS, 0)  # not yet counted in statsd
        self.since = time.monotonic()
        self.lock = threading.Lock()

    def count(self, kind: str) -> None:
        process_measures().count("gilworker_client_noise", kind=kind)
        with self.lock:
            self.counts[kind] += 1
            self.unsent[kind] += 1

    def flush(self, now: float) -> None:
        """Called on every worker tick: the first of a kind, statsd, and the interval's counts."""
        with self.lock:
            unsent, self.unsent = self.unsent, dict.fromkeys(KINDS, 0)
            summary = None
            if now - self.since >= self.interval:
                summary, seconds = self.counts, now - self.since
                self.counts, self.since = dict.fromkeys(KINDS, 0), now
            firsts = [k for k, n in unsent.items() if n and self.counts[k] == n]
        for kind, count in unsent.items():
            if count:
                metric = {"metric": f"gilworker.client.{kind}", "value": count, "mtype": "counter"}
                self.log.debug("%d %s", count, KINDS[kind], extra=metric)
        for kind in firsts:
            self.log.warning(
                "gilworker: %s (each is logged at debug level; a count follows every %.0f s)",
                KINDS[kind],
                self.interval,
            )
        for kind, count in (summary or {}).items():
            if count:
                self.log.warning("gilworker: %d %s in the last %.0f s", count, KINDS[kind], seconds)


class UvicornClientNoise(logging.Filter):
    """Counts uvicorn's per-client warnings, which go on at debug level only."""

    def __init__(self, noise: ClientNoise) -> None:
        super().__init__()
        self.noise = noise

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _UVICORN_MESSAGES.get(record.msg) if isinstance(record.msg, str) else None
        if kind is None:
            return True
        self.noise.count(kind)
        # not isEnabledFor(): on 3.13 it answers False while a record is being handled
        if logging.getLogger(record.name).getEffectiveLevel() > logging.DEBUG:
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_NOISE: PerProcess[ClientNoise] = PerProcess()


def client_noise(log: Any) -> ClientNoise:
    """This process's ClientNoise (a forked child makes its own)."""
    return _NOISE.get(lambda: ClientNoise(log))
