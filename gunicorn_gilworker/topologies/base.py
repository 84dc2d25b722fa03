"""The interface every spawn strategy offers GilArbiter."""

from __future__ import annotations

from typing import Any

from gunicorn_gilworker.mode import Decision


class Strategy:
    def __init__(self, arbiter: Any, decision: Decision) -> None:
        self.arbiter = arbiter
        self.decision = decision

    def enter(self) -> None:
        """What the master does once for this topology, before its first worker starts."""

    def spawn_workers(self) -> None:
        """Start workers until there are `num_workers` (gunicorn's `spawn_workers` seam)."""
        raise NotImplementedError

    def spawn_worker(self) -> int | None:
        """Start one worker and return its id (gunicorn's `spawn_worker` seam); None if it
        could not start now (the master's next loop turn tries again)."""
        raise NotImplementedError
