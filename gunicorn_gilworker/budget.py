"""Crash-loop protection for worker slots (pure: the clock is injected).

gunicorn respawns a crashed worker at once, for ever: a worker that crashes on start spins the
CPU. Each worker holds a slot; when one slot has crashed more than `max_restarts` times within
`window` seconds, its next starts are delayed: 0.1 s, doubling each further crash, capped at 30 s.
A worker that has stayed up for the whole window clears its slot's record.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

FIRST_DELAY = 0.1
MAX_DELAY = 30.0


class CrashBudget:
    def __init__(
        self, max_restarts: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.clock = clock
        self.crashes: dict[int, deque[float]] = {}
        self.over_budget: dict[int, int] = {}  # crashes in a row past the budget
        self.not_before: dict[int, float] = {}

    def crashed(self, slot: int, uptime: float) -> float | None:
        """Record a crash of the worker in `slot`; the delay before its next start, if any."""
        now = self.clock()
        if uptime >= self.window:
            self.reset(slot)
        history = self.crashes.setdefault(slot, deque())
        history.append(now)
        while history and history[0] <= now - self.window:
            history.popleft()
        if len(history) <= self.max_restarts:
            return None
        self.over_budget[slot] = self.over_budget.get(slot, 0) + 1
        delay = min(FIRST_DELAY * 2 ** (self.over_budget[slot] - 1), MAX_DELAY)
        self.not_before[slot] = now + delay
        return delay

    def reset(self, slot: int) -> None:
        self.crashes.pop(slot, None)
        self.over_budget.pop(slot, None)
        self.not_before.pop(slot, None)

    def wait(self, slot: int) -> float:
        """Seconds until `slot` may start a worker again (0: now)."""
        return max(0.0, self.not_before.get(slot, 0.0) - self.clock())
