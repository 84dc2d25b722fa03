"""Every worker an event-loop thread of the master (`--threads 1` where threads apply).

The master does once, for the shared process, what gunicorn does in each forked child (drop
privileges), starts each worker as a thread under its ThreadSupervisor (`supervision.py`), turns
gunicorn's signals to a worker into actions on the worker's loop, reaps a finished thread as
gunicorn reaps a process, and abandons a thread that outlives its abort (a thread cannot be
killed). It watches for the GIL coming back at run time.
"""

from __future__ import annotations

import signal
from typing import Any

from gunicorn import util
from gunicorn.errors import HaltServer

from gunicorn_gilworker.accepting import raise_fd_limit
from gunicorn_gilworker.gil_watch import GilWatch
from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.supervision import HALT_REASONS, Ended, ThreadSupervisor
from gunicorn_gilworker.topologies.base import Topology
from gunicorn_gilworker.upstream import arbiter_stats, make_worker, worker_reaped


class ThreadsInMaster(Topology):
    name = "threads"
    thread_mode = True

    def __init__(self, arbiter: Any, decision: Decision) -> None:
        super().__init__(arbiter, decision)
        self.supervisor = ThreadSupervisor(arbiter.log, arbiter.SIG_QUEUE)
        self.gil_watch = GilWatch(arbiter.log)

    def enter(self, decision: Decision) -> None:
        arbiter, cfg = self.arbiter, self.arbiter.cfg
        super().enter(decision)
        try:  # gunicorn drops privileges in each child; here every worker shares the master's
            util.set_owner_process(cfg.uid, cfg.gid, initgroups=cfg.initgroups)
        except OSError as exc:
            raise HaltServer(f"thread mode cannot switch to user/group: {exc}", 1) from exc
        raise_fd_limit(arbiter.log, "the worker threads")
        self.gil_watch.start()
        arbiter.reloader.start()

    def spawn_workers(self) -> None:
        arbiter = self.arbiter
        for _ in range(arbiter.num_workers - len(arbiter.WORKERS)):  # no fork: no stagger
            arbiter.spawn_worker()

    def spawn_worker(self) -> int | None:
        arbiter = self.arbiter
        worker = make_worker(arbiter, runs_as="thread")
        handle = self.supervisor.start(worker, hook_server=arbiter)
        if handle is None:
            return None
        arbiter.WORKERS[handle.id] = worker
        arbiter_stats(arbiter)["workers_spawned"] += 1  # as gunicorn counts a fork
        return handle.id

    def owns(self, wid: int) -> bool:
        return wid in self.supervisor

    def kill(self, wid: int, sig: int) -> None:
        arbiter = self.arbiter
        self.supervisor.deliver(wid, sig)  # thread-safe: gunicornc calls it from its own thread
        if sig in (signal.SIGTERM, signal.SIGKILL):
            arbiter_stats(arbiter)["workers_killed"] += 1
        if sig == signal.SIGABRT:  # stuck: replace it now; the supervisor keeps watching it
            arbiter.WORKERS.pop(wid, None)

    def reap(self) -> None:
        """On every loop turn too: an exit notice must never be the only way."""
        for ended in self.supervisor.reap(abandon_after=self.arbiter.cfg.graceful_timeout):
            self._ended(ended)
        self.gil_watch.check()

    def _ended(self, ended: Ended) -> None:
        arbiter = self.arbiter
        wid, worker = ended.handle.id, ended.handle.worker
        if ended.abandoned:
            stats = arbiter_stats(arbiter)
            stats["threads_abandoned"] += 1
            arbiter.log.error(
                "Worker thread %s did not stop within %ss of its abort: abandoned (%d so far)",
                wid,
                arbiter.cfg.graceful_timeout,
                stats["threads_abandoned"],
                extra={"metric": "gilworker.threads_abandoned", "value": 1, "mtype": "counter"},
            )
        else:
            arbiter.WORKERS.pop(wid, None)
            if ended.status in HALT_REASONS and not arbiter.halting:  # one halt, however many
                raise HaltServer(HALT_REASONS[ended.status], ended.status)
        worker_reaped(arbiter, worker)
        arbiter.worker_ended(wid, ended.crashed)

    def describe(self, wid: int) -> dict[str, object]:
        return {"mode": "thread"}

    def stats(self) -> dict[str, object]:
        return {
            **super().stats(),
            "gil_enabled": self.gil_watch.enabled,
            "gil_cause": self.gil_watch.cause,
        }
