"""Every server hook gunicorn calls for a worker, called the same way in every topology.

With `-w P --threads N` the hooks are the process's, once per worker process, as gunicorn's
gthread worker runs them: its event-loop threads are not workers to the hooks (a thread that
dies is replaced inside the process without a hook)."""

from __future__ import annotations

import signal

import pytest
from server import HOOKS, THREAD_ID_BASE, background_request, request, wait_for


def test_full_lifecycle_calls_each_hook_once_per_worker(gunicorn, topology):
    master = gunicorn.start(*HOOKS, topology=topology, workers=2)
    assert request(gunicorn.port).status == 200
    master.signal(signal.SIGTERM)
    assert master.wait() == 0

    counts = gunicorn.hook_counts()
    assert counts == {
        "on_starting": 1,
        "nworkers_changed": 1,
        "when_ready": 1,
        "pre_fork": 2,
        "post_fork": 2,
        "post_worker_init": 2,
        "worker_exit": 2,
        "child_exit": 2,
        "on_exit": 1,
        "pre_request": 1,  # the one request
        "post_request": 1,
    }
    changed = gunicorn.hooks("nworkers_changed")[0]
    assert (changed["old"], changed["new"]) == (None, 2)
    for hook in ("post_fork", "post_worker_init", "worker_exit", "child_exit"):
        assert {e["mode"] for e in gunicorn.hooks(hook)} == {topology.worker_kind}, hook
    workers = {e["worker"] for e in gunicorn.hooks("post_worker_init")}
    assert len(workers) == 2
    for hook in ("worker_exit", "child_exit"):
        assert {e["worker"] for e in gunicorn.hooks(hook)} == workers
    if topology.in_master:
        assert all(w > THREAD_ID_BASE for w in workers)
        for e in gunicorn.hooks("post_fork") + gunicorn.hooks("worker_exit"):
            assert e["pid"] == master.pid and e["thread"].startswith("gilworker-")
    else:
        assert all(w < THREAD_ID_BASE for w in workers)
        for e in gunicorn.hooks("post_worker_init") + gunicorn.hooks("worker_exit"):
            assert e["pid"] == e["worker"] != master.pid
            assert e["thread"] == "MainThread"  # the process's, not one of its loop threads
    # the master-side hooks run in the master's main thread, in both modes
    for hook in ("on_starting", "when_ready", "pre_fork", "child_exit", "on_exit"):
        assert all(
            e["pid"] == master.pid and e["thread"] == "MainThread" for e in gunicorn.hooks(hook)
        ), hook


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_quick_stop_calls_worker_int_in_each_worker(gunicorn, topology, sig):
    master = gunicorn.start(*HOOKS, topology=topology, workers=2)
    master.signal(sig)
    assert master.wait() == 0
    counts = gunicorn.hook_counts()
    assert counts["worker_int"] == 2
    assert counts["worker_exit"] == 2
    assert counts["on_exit"] == 1
    entries = gunicorn.hooks("worker_int")
    assert {e["mode"] for e in entries} == {topology.worker_kind}
    if topology.in_master:  # on the worker's own thread, as a process runs it in itself
        assert all(e["thread"].startswith("gilworker-") for e in entries)


def test_ttin_and_ttou_change_the_worker_count(gunicorn, topology):
    master = gunicorn.start(*HOOKS, topology=topology, workers=2)
    master.signal(signal.SIGTTIN)
    wait_for(lambda: gunicorn.hook_counts().get("post_worker_init") == 3, 20, "a third worker")
    master.signal(signal.SIGTTOU)
    wait_for(lambda: gunicorn.hook_counts().get("child_exit") == 1, 20, "one worker reaped")
    changes = [(e["old"], e["new"]) for e in gunicorn.hooks("nworkers_changed")]
    assert changes == [(None, 2), (2, 3), (3, 2)]
    # the oldest worker was the one retired, as gunicorn does
    exited = gunicorn.hooks("worker_exit")
    assert [e["age"] for e in exited] == [1]
    assert request(gunicorn.port).status == 200


def test_timeout_aborts_a_stuck_worker_and_replaces_it(gunicorn, topology):
    master = gunicorn.start(*HOOKS, "--timeout", "3", topology=topology, workers=1)
    background_request(gunicorn.port, "/block?s=30", timeout=40)
    master.wait_log(r"WORKER TIMEOUT", timeout=20)
    wait_for(lambda: gunicorn.hook_counts().get("post_worker_init") == 2, 20, "a new worker")
    assert request(gunicorn.port, timeout=10).status == 200
    counts = gunicorn.hook_counts()
    assert counts["worker_abort"] == 1
    abort = gunicorn.hooks("worker_abort")[0]
    assert abort["mode"] == topology.worker_kind and abort["age"] == 1
    wait_for(lambda: gunicorn.hook_counts().get("child_exit") == 1, 10, "the stuck one reaped")


def test_requests_waiting_on_a_stuck_worker_are_served_by_its_replacement(gunicorn, topology):
    # Sent while the only worker is stuck, they wait in the listener's queue. The stuck worker
    # must not take them as it unwinds from its abort: it would close them unanswered (seen in
    # CI with threads in the master on uvloop, which polls its listeners once more before the
    # stop queued for its loop runs).
    master = gunicorn.start(*HOOKS, "--timeout", "3", topology=topology, workers=1)
    background_request(gunicorn.port, "/block?s=30", timeout=40)
    master.wait_log(r"block started", timeout=10)
    waiting = [background_request(gunicorn.port, "/", timeout=30) for _ in range(8)]
    master.wait_log(r"WORKER TIMEOUT", timeout=20)
    for thread, _ in waiting:
        thread.join(40)
    outcomes = [outcome[0] if outcome else None for _, outcome in waiting]
    assert [getattr(o, "status", o) for o in outcomes] == [200] * 8
