"""Every worker an event-loop thread of the master (`--threads 1` where threads apply)."""

from __future__ import annotations

from gunicorn import util
from gunicorn.errors import HaltServer

from gunicorn_gilworker.accepting import raise_fd_limit
from gunicorn_gilworker.strategies.base import Strategy


class ThreadsInMaster(Strategy):
    def enter(self) -> None:
        """What gunicorn does once per worker process, done once for the shared process."""
        arbiter, cfg = self.arbiter, self.arbiter.cfg
        try:  # gunicorn drops privileges in each child; here every worker shares the master's
            util.set_owner_process(cfg.uid, cfg.gid, initgroups=cfg.initgroups)
        except OSError as exc:
            raise HaltServer(f"thread mode cannot switch to user/group: {exc}", 1) from exc
        raise_fd_limit(arbiter.log, "the worker threads")
        arbiter.start_gil_watch()
        arbiter.start_code_reloader()

    def spawn_workers(self) -> None:
        arbiter = self.arbiter
        for _ in range(arbiter.num_workers - len(arbiter.WORKERS)):  # no fork: no stagger
            arbiter.spawn_worker()

    def spawn_worker(self) -> int | None:
        arbiter = self.arbiter
        arbiter.worker_age += 1
        worker = arbiter.worker_class(
            arbiter.worker_age,
            arbiter.pid,
            arbiter.LISTENERS,
            arbiter.app,
            arbiter.timeout / 2.0,
            arbiter.cfg,
            arbiter.log,
        )
        arbiter.cfg.pre_fork(arbiter, worker)
        handle = arbiter.threads.start(worker, hook_server=arbiter)
        if handle is None:
            return None
        arbiter.WORKERS[handle.id] = worker
        arbiter._stats["workers_spawned"] += 1  # gunicorn's counter, shown by gunicornc
        return handle.id
