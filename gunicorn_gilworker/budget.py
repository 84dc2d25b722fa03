"""Crash-loop protection for worker slots (pure: the clock is injected).

gunicorn respawns a crashed worker at once, for ever: a worker that crashes on start spins the
CPU. Each worker holds a slot; when one slot has crashed more than `max_restarts` times within
`window` seconds, its next starts are delayed: 0.1 s, doubling each further crash, capped at 30 s.
A worker that has stayed up for the whole window clears its slot's record.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

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


class Slots:
    """Worker slots 0, 1, 2, ...: each live worker holds one, and a crash is charged to its slot,
    so a replacement that keeps crashing backs off. The master keeps one for its workers (forked
    processes or threads); a worker process of threads keeps one for its threads.

    `wake_in(seconds)` is called when a slot must wait: the owner's loop should try again then.
    """

    def __init__(
        self,
        budget: CrashBudget,
        log: Any,
        wake_in: Callable[[float], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.log = log
        self.wake_in = wake_in
        self.clock = clock
        self.held: dict[int, tuple[int, float]] = {}  # worker id -> (slot, start time)
        self.backoffs = 0  # times a slot had to wait before its next start

    def claim(self, live: Iterable[int]) -> int | None:
        """The lowest slot that no live worker holds; None while it is backing off."""
        used = {self.held[wid][0] for wid in live if wid in self.held}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        wait = self.budget.wait(slot)
        if wait > 0:
            self.wake_in(wait)
            return None
        return slot

    def hold(self, wid: int, slot: int) -> None:
        self.held[wid] = (slot, self.clock())

    def release(self, wid: int, crashed: bool) -> bool:
        """`wid` ended. A crash is charged to its slot (logged when the slot must back off);
        True if a crash was charged."""
        slot, started = self.held.pop(wid, (-1, 0.0))
        if not crashed or slot < 0:
            return False
        delay = self.budget.crashed(slot, self.clock() - started)
        if delay is not None:
            self.backoffs += 1
            self.log.warning(
                "Worker slot %d crashed more than %d times within %ss: next start in %.1fs",
                slot,
                self.budget.max_restarts,
                self.budget.window,
                delay,
            )
        return True
