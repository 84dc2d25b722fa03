"""The master's side of worker processes of threads: P forked processes, N loops each."""

from __future__ import annotations

from gunicorn_gilworker.accepting import raise_fd_limit
from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.topologies.processes import ForkedProcesses
from gunicorn_gilworker.topologies.processes_of_threads.process import ProcessOfThreads


class ProcessesOfThreads(ForkedProcesses):
    name = "processes_of_threads"
    thread_mode = True

    def enter(self, decision: Decision) -> None:
        super().enter(decision)
        arbiter = self.arbiter
        # gunicorn forks `arbiter.worker_class`; setup() sets it back on every reload, and the
        # topology chosen after that reload enters again.
        arbiter.worker_class = ProcessOfThreads
        raise_fd_limit(arbiter.log, "each worker process's threads")  # inherited by them
        arbiter.reloader.start()

    def event_loops_wanted(self) -> int:
        return self.decision.workers * self.decision.threads

    def processes(self) -> list[ProcessOfThreads]:
        """Its worker processes in WORKERS now."""
        workers = self.arbiter.WORKERS
        return [workers[pid] for pid in list(self.pids) if pid in workers]

    def event_loops(self) -> int:
        return sum(process.loops for process in self.processes())

    def describe(self, wid: int) -> dict[str, object]:
        worker = self.arbiter.WORKERS.get(wid)
        shown: dict[str, object] = {"mode": "process"}
        if worker is not None:
            shown.update(worker.table.describe())
        return shown

    def stats(self) -> dict[str, object]:
        tables = [process.table.read() for process in self.processes()]
        stats = super().stats()
        if tables:  # the worker processes run the app: their GIL is the one that matters
            stats["gil_enabled"] = any(gil for _, _, gil in tables)
        stats["thread_crashes"] = sum(crashes for _, crashes, _ in tables)
        return stats
