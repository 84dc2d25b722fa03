"""Forked worker processes, one event loop each: gunicorn's own fork, signal and reap."""

from __future__ import annotations

from typing import Any

from gunicorn.arbiter import Arbiter

from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.topologies.base import Topology


class ForkedProcesses(Topology):
    name = "processes"

    def __init__(self, arbiter: Any, decision: Decision) -> None:
        super().__init__(arbiter, decision)
        self.pids: set[int] = set()  # forked and not yet reaped

    def spawn_workers(self) -> None:
        Arbiter.spawn_workers(self.arbiter)  # staggered forks, each through arbiter.spawn_worker

    def spawn_worker(self) -> int | None:
        pid = Arbiter.spawn_worker(self.arbiter)  # in the child it never returns
        self.pids.add(pid)
        return pid

    def owns(self, wid: int) -> bool:
        return wid in self.pids

    def kill(self, wid: int, sig: int) -> None:
        Arbiter.kill_worker(self.arbiter, wid, sig)

    def reap(self) -> None:
        self.pids.intersection_update(self.arbiter.WORKERS)  # gunicorn reaped or dropped them
