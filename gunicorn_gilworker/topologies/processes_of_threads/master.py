"""Worker processes of event-loop threads (`-w P --threads N`), the master's side.

The master forks P worker processes through gunicorn's own fork path, each a `ThreadsProcess`
(`host.py`) running N event-loop threads. It forks them after importing the app itself, so the
processes share its pages; its HUP and --reload import the app anew before forking successors.
"""

from __future__ import annotations

from gunicorn_gilworker.accepting import raise_fd_limit
from gunicorn_gilworker.host import ThreadsProcess
from gunicorn_gilworker.strategies.processes import ForkedProcesses


class ProcessesOfThreads(ForkedProcesses):
    def enter(self) -> None:
        # gunicorn forks `arbiter.worker_class`; setup() sets it back on every reload, and the
        # strategy chosen after that reload enters again.
        self.arbiter.worker_class = ThreadsProcess
        raise_fd_limit(self.arbiter.log, "each worker process's threads")  # inherited by them
        self.arbiter.start_code_reloader()
