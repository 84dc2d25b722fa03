"""What every topology does for GilArbiter, from entering it to reaping its last worker."""

from __future__ import annotations

import os
from typing import Any

from gunicorn_gilworker.app_per_loop import start_up_line
from gunicorn_gilworker.http2 import served_protocols
from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.stack import start_up_lines
from gunicorn_gilworker.upstream import gil_enabled


class Topology:
    """One topology's whole life under GilArbiter.

    GilArbiter keeps one instance per topology it has run since it started: after a HUP that
    chose another topology, the old workers still drain, and the topology that started them
    still signals and reaps them. `decision` is the latest configuration's."""

    name = ""
    thread_mode = False  # its workers' requests are served by event-loop threads

    def __init__(self, arbiter: Any, decision: Decision) -> None:
        self.arbiter = arbiter
        self.decision = decision
        self.warned: set[str] = set()  # a HUP to the same configuration warns of nothing new

    # -- entering ---------------------------------------------------------------------------

    def enter(self, decision: Decision) -> None:
        """What the master does once per configuration, before its first worker starts."""
        self.decision = decision
        log = self.arbiter.log
        served = served_protocols(self.arbiter.cfg)
        (log.warning if decision.forced else log.info)("%s; serving %s", decision.message, served)
        for level, line in start_up_lines(
            self.arbiter.cfg,
            self.event_loops_wanted(),
            len(os.sched_getaffinity(0)),
            self.thread_mode,
        ):
            if level == "warning":
                if line in self.warned:
                    continue
                self.warned.add(line)
            getattr(log, level)(line)
        if self.thread_mode:
            app = self.arbiter.app.wsgi()  # imported by the master for its threads to share
            scope_line = start_up_line(self.arbiter.cfg.gil_app, app)
            if scope_line:
                log.info(scope_line)

    def event_loops_wanted(self) -> int:
        return self.decision.workers

    # -- spawning ---------------------------------------------------------------------------

    def spawn_workers(self) -> None:
        """Start workers until there are `num_workers` (gunicorn's `spawn_workers` seam)."""
        raise NotImplementedError

    def spawn_worker(self) -> int | None:
        """Start one worker and return its id (gunicorn's `spawn_worker` seam); None if it
        could not start now (the master's next loop turn tries again)."""
        raise NotImplementedError

    # -- signalling and reaping -------------------------------------------------------------

    def owns(self, wid: int) -> bool:
        """Whether `wid` is a worker this topology started and has not reaped."""
        raise NotImplementedError

    def kill(self, wid: int, sig: int) -> None:
        """gunicorn's `kill_worker` for one of this topology's workers."""
        raise NotImplementedError

    def reap(self) -> None:
        """After gunicorn's own reap of child processes, and on every master loop turn:
        whatever else ended."""

    # -- what it reports --------------------------------------------------------------------

    def event_loops(self) -> int:
        """Event loops its workers serve with now."""
        return sum(1 for wid in self.arbiter.WORKERS if self.owns(wid))

    def describe(self, wid: int) -> dict[str, object]:
        """What `gunicornc show workers` adds to gunicorn's entry for `wid`."""
        return {"mode": "process"}

    def stats(self) -> dict[str, object]:
        """What `gunicornc show stats` adds for this topology (the current one's)."""
        decision = self.decision
        return {
            "gil_mode": decision.mode,
            "topology": decision.topology,
            "threads_per_process": decision.threads,
            "gil_enabled": gil_enabled(),
            "gil_cause": None,
            "thread_crashes": 0,
        }
