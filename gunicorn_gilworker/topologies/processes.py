"""Forked worker processes, one event loop each: gunicorn's own fork path, as it is."""

from __future__ import annotations

from gunicorn.arbiter import Arbiter

from gunicorn_gilworker.strategies.base import Strategy


class ForkedProcesses(Strategy):
    def spawn_workers(self) -> None:
        Arbiter.spawn_workers(self.arbiter)  # staggered forks, each through arbiter.spawn_worker

    def spawn_worker(self) -> int | None:
        return Arbiter.spawn_worker(self.arbiter)  # in the child it never returns
