"""gunicornc's commands under GilArbiter: thread workers told apart and never sent a real
signal, and each worker process of threads shown with its threads."""

from __future__ import annotations

import signal
import time
from typing import Any

from gunicorn.ctl.handlers import CommandHandlers

from gunicorn_gilworker.mode import gil_enabled


def event_loops(workers: Any) -> int:
    """Event loops serving: one per worker, N per worker process of N threads."""
    return sum(getattr(worker, "loops", 1) for worker in workers)


class ControlHandlers(CommandHandlers):
    arbiter: Any  # GilArbiter

    def show_workers(self) -> dict:
        shown = super().show_workers()
        now = time.monotonic()
        for entry in shown["workers"]:
            pid = entry["pid"]
            entry["mode"] = "thread" if pid in self.arbiter.threads else "process"
            table = getattr(self.arbiter.WORKERS.get(pid), "table", None)
            if table is not None:  # a worker process of threads
                entry.update(table.describe(now))
        return shown

    def show_stats(self) -> dict:
        stats = super().show_stats()
        arbiter = self.arbiter
        decision = arbiter.decision
        tables = [w.table.read() for w in arbiter.WORKERS.values() if hasattr(w, "table")]
        watch = arbiter.gil_watch
        if tables:  # the worker processes run the app: their GIL is the one that matters
            gil_on = any(gil for _, _, gil in tables)
        else:
            gil_on = watch.enabled if watch else gil_enabled()
        stats.update(
            gil_mode=decision.mode if decision else None,
            topology=decision.topology if decision else None,
            threads_per_process=decision.threads if decision else None,
            event_loops=event_loops(arbiter.WORKERS.values()),
            gil_enabled=gil_on,
            gil_cause=watch.cause if watch else None,
            worker_crashes=arbiter._stats["worker_crashes"],
            threads_abandoned=arbiter._stats["threads_abandoned"],
            thread_crashes=sum(crashes for _, crashes, _ in tables),
        )
        return stats

    def worker_kill(self, pid: int) -> dict:
        pid = int(pid)
        if pid not in self.arbiter.threads:
            return super().worker_kill(pid)
        self.arbiter.kill_worker(pid, signal.SIGTERM)  # thread-safe
        return {"success": True, "killed": pid}
