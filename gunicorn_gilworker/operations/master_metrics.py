"""What only the master knows: its workers, how they ended, back-offs, the GIL, the build, and
each worker process's CPU and memory, read from /proc at scrape time.

Labels stay bounded as workers recycle: exits by cause and signal, worker processes by their
slot (0, 1, ...: the place a replacement takes), never by pid.
"""

from __future__ import annotations

import os
import platform
import signal
import threading
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gunicorn_gilworker.mode import free_threaded_build
from gunicorn_gilworker.upstream import arbiter_stats, gil_enabled

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Why the master sees a worker end; "crash" also has the signal that ended it
CAUSES = ("crash", "max_requests", "timeout", "hup", "ttou", "stop")
_STOPPING_SIGNALS = frozenset({"SIGTERM", "SIGINT", "SIGQUIT", "SIGKILL"})


class WorkerExits:
    """Counts of ended workers by (cause, signal); why the master signalled each worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self.signalled: dict[int, str] = {}  # worker id -> the cause the master stopped it for

    def signalling(self, wid: int, sig: int, reloading: bool, stopping: bool) -> None:
        """The master sends `sig` to worker `wid`: remember why. Only signals that end a worker
        count (USR1 reopens logs), and a timeout's abort outranks an earlier reason."""
        if sig in (signal.SIGABRT, signal.SIGKILL) and not stopping:
            self.signalled[wid] = "timeout"
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            cause = "stop" if stopping else "hup" if reloading else "ttou"
            self.signalled.setdefault(wid, cause)

    def ended(self, wid: int, how: str | None) -> None:
        """`how`: None for a clean exit, else the signal's name or "exit N"."""
        cause = self.signalled.pop(wid, None)
        # ended by the signal the master sent it (a worker still booting has no handler yet):
        # the master's reason, not a crash
        sent = cause is not None and how in _STOPPING_SIGNALS
        if how is not None and cause not in ("timeout", "stop") and not sent:
            cause = "crash"
        key = (cause or "max_requests", how if how and how.startswith("SIG") else "")
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


class MasterCollector:
    """A prometheus_client collector of the master's own facts."""

    def __init__(self, arbiter: Any, exits: WorkerExits) -> None:
        self.arbiter = arbiter
        self.exits = exits
        self.build = {
            "gilworker": package_version("gunicorn-gilworker"),
            "gunicorn": package_version("gunicorn"),
            "uvicorn": package_version("uvicorn"),
            "python": platform.python_version(),
            "free_threaded": str(free_threaded_build()).lower(),
        }

    def describe(self) -> list[Any]:
        return []  # collected only when scraped (nothing to check at registration)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        arbiter = self.arbiter
        yield InfoMetricFamily("gilworker_build", "gilworker and what it runs on", self.build)
        yield GaugeMetricFamily(
            "gilworker_gil_enabled", "1 while the GIL is on", value=int(gil_enabled())
        )
        workers = GaugeMetricFamily(
            "gilworker_workers", "Workers by kind (process or thread)", labels=["kind"]
        )
        kinds = {"process": 0, "thread": 0}
        processes = []
        for wid in list(arbiter.WORKERS):
            owner = arbiter.owner(wid)
            thread = owner is not None and owner.name == "threads"  # threads of the master
            kinds["thread" if thread else "process"] += 1
            if not thread:
                processes.append(wid)
        for kind, count in kinds.items():
            workers.add_metric([kind], count)
        yield workers
        yield GaugeMetricFamily(
            "gilworker_event_loops", "Event loops serving or starting", value=arbiter.event_loops()
        )
        exits = CounterMetricFamily(
            "gilworker_worker_exits",
            "Workers ended, by cause (crash, max_requests, timeout, hup, ttou, stop)",
            labels=["cause", "signal"],
        )
        with self.exits.lock:
            counts = dict(self.exits.counts)
        for (cause, sig), count in sorted(counts.items()):
            exits.add_metric([cause, sig], count)
        yield exits
        yield CounterMetricFamily(
            "gilworker_crash_backoffs",
            "Times a worker slot that kept crashing waited before its next start",
            value=arbiter.slots.backoffs,
        )
        yield CounterMetricFamily(
            "gilworker_threads_abandoned",
            "Worker threads that did not stop after an abort, left running",
            value=arbiter_stats(arbiter)["threads_abandoned"],
        )
        cpu = CounterMetricFamily(
            "gilworker_worker_cpu_seconds",
            "CPU time of each worker process, by slot",
            labels=["slot"],
        )
        memory = GaugeMetricFamily(
            "gilworker_worker_resident_memory_bytes",
            "Resident memory of each worker process, by slot",
            labels=["slot"],
        )
        for pid in processes:
            usage = proc_usage(pid)
            slot = arbiter.slots.held.get(pid)
            if usage is None or slot is None:
                continue
            cpu.add_metric([str(slot[0])], usage[0])
            memory.add_metric([str(slot[0])], usage[1])
        yield cpu
        yield memory


def proc_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of process `pid`, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, resident * PAGE_SIZE
