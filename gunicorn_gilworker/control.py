"""gunicornc's commands under GilArbiter: each worker described by the topology that runs it
(thread workers told apart and never sent a real signal, each worker process of threads shown
with its threads), and gilworker's counters in `show stats`."""

from __future__ import annotations

import signal
from typing import Any

from gunicorn.ctl.handlers import CommandHandlers

from gunicorn_gilworker.upstream import arbiter_stats


class ControlHandlers(CommandHandlers):
    arbiter: Any  # GilArbiter

    def show_workers(self) -> dict:
        shown = super().show_workers()
        for entry in shown["workers"]:
            owner = self.arbiter.owner(entry["pid"])
            entry.update(owner.describe(entry["pid"]) if owner else {"mode": "process"})
        return shown

    def show_stats(self) -> dict:
        stats = super().show_stats()
        arbiter = self.arbiter
        counters = arbiter_stats(arbiter)
        current = arbiter.current
        stats.update(current.stats() if current else {})
        stats.update(
            event_loops=arbiter.event_loops(),
            worker_crashes=counters["worker_crashes"],
            threads_abandoned=counters["threads_abandoned"],
        )
        return stats

    def worker_kill(self, pid: int) -> dict:
        pid = int(pid)
        owner = self.arbiter.owner(pid)
        if owner is None or not owner.thread_mode or owner.name != "threads":
            return super().worker_kill(pid)  # a process: gunicorn's os.kill
        self.arbiter.kill_worker(pid, signal.SIGTERM)  # thread-safe
        return {"success": True, "killed": pid}
