"""What a process's worker threads share is made once per process, however they start."""

from __future__ import annotations

import os
import select
import signal
import threading
from unittest import mock

import pytest

from gunicorn_gilworker.accepting import fd_budget
from gunicorn_gilworker.client_noise import client_noise

SHARED = {"fd_budget": lambda: fd_budget(), "client_noise": lambda: client_noise(mock.Mock())}


@pytest.mark.parametrize("get", SHARED.values(), ids=SHARED.keys())
def test_worker_threads_starting_together_share_one(get):
    # As a worker process's loop threads start (issue 15: each made its own FdBudget, so
    # neither counted the other's connections and the process ran out of descriptors).
    for _ in range(20):  # bounded: the race is a window of microseconds
        _holder(get)._value = None  # forget this process's object
        got: list[object] = []
        barrier = threading.Barrier(8)

        def start(barrier: threading.Barrier, got: list[object]) -> None:
            barrier.wait()
            got.append(get())

        threads = [threading.Thread(target=start, args=(barrier, got)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(got) == 8
        assert len({id(o) for o in got}) == 1


@pytest.mark.parametrize("get", SHARED.values(), ids=SHARED.keys())
def test_a_forked_child_makes_its_own(get):
    parent = get()
    read, write = os.pipe()
    with _holder(get)._lock:  # as if another thread of the parent were making it at the fork
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.write(write, b"own" if get() is not parent else b"parent's")
            finally:
                os._exit(0)
    os.close(write)
    try:
        ready, _, _ = select.select([read], [], [], 10)
        answer = os.read(read, 16) if ready else b"nothing: the child waits on the parent's lock"
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert answer == b"own"


def _holder(get):
    import gunicorn_gilworker.accepting as accepting
    import gunicorn_gilworker.client_noise as noise

    return accepting._BUDGET if get is SHARED["fd_budget"] else noise._NOISE
