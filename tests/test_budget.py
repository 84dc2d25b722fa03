"""The crash-loop budget's arithmetic, on an injected clock."""

from __future__ import annotations

from gunicorn_gilworker.budget import CrashBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_within_budget_respawns_at_once():
    budget = CrashBudget(max_restarts=3, window=60, clock=Clock())
    assert [budget.crashed(0, uptime=1) for _ in range(3)] == [None, None, None]
    assert budget.wait(0) == 0


def test_past_budget_backs_off_doubling_up_to_30s():
    clock = Clock()
    budget = CrashBudget(max_restarts=2, window=60, clock=clock)
    budget.crashed(0, 1)
    budget.crashed(0, 1)
    delays = []
    for _ in range(12):
        delays.append(budget.crashed(0, uptime=0.5))
        clock.now += 0.01
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == 30.0 and max(delays) == 30.0
    assert 29 < budget.wait(0) <= 30.0
    assert budget.wait(1) == 0  # other slots are not held back


def test_old_crashes_leave_the_window():
    clock = Clock()
    budget = CrashBudget(max_restarts=1, window=10, clock=clock)
    assert budget.crashed(0, 1) is None
    clock.now += 11
    assert budget.crashed(0, 1) is None  # the first crash is out of the window


def test_a_worker_that_stayed_up_for_the_window_clears_its_slot():
    clock = Clock()
    budget = CrashBudget(max_restarts=1, window=10, clock=clock)
    budget.crashed(0, 1)
    assert budget.crashed(0, 1) == 0.1
    assert budget.crashed(0, 1) == 0.2
    clock.now += 1
    assert budget.crashed(0, uptime=10) is None  # it had run for the whole window
    assert budget.crashed(0, 1) == 0.1  # and the backoff starts over
