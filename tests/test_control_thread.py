"""gunicornc is answered in a thread of the master while its main thread adds and removes
workers: a command must never fail because the map of workers changed under it (seen in CI:
"Command failed: dictionary changed size during iteration" around `worker kill`)."""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace

import pytest
from server import in_process_arbiter

from gunicorn_gilworker.control import ControlHandlers


def stand_in_worker(age: int) -> SimpleNamespace:
    tmp = SimpleNamespace(last_update=time.monotonic)
    return SimpleNamespace(age=age, booted=True, aborted=False, tmp=tmp, loops=1)


@pytest.fixture
def fast_switching():
    # On the GIL build the two threads must trade the GIL often for the window to open.
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("command", ["show_workers", "show_all", "show_stats"])
def test_commands_walk_one_moment_of_the_workers(tmp_path, fast_switching, command):
    arbiter = in_process_arbiter(tmp_path)
    handlers = ControlHandlers(arbiter)
    for age in range(1, 9):
        arbiter.WORKERS[age] = stand_in_worker(age)
    stop = threading.Event()
    changes = 0

    def churn() -> None:  # the main loop's spawn and reap, as fast as it can go
        nonlocal changes
        age = 9
        while not stop.is_set():
            arbiter.WORKERS[age] = stand_in_worker(age)
            arbiter.WORKERS.pop(age - 8, None)
            age += 1
            changes += 1

    errors: list[BaseException] = []
    churner = threading.Thread(target=churn)
    churner.start()
    try:
        for _ in range(20_000):  # bounded: with a plain dict this fails within a few hundred
            try:
                getattr(handlers, command)()
            except RuntimeError as error:
                errors.append(error)
                if len(errors) == 5:
                    break
    finally:
        stop.set()
        churner.join(10)
    assert changes > 0
    assert errors == []
