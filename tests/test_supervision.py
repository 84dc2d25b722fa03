"""Supervision: crashes, crash-loop budget, stuck workers, recycling, reloads, graceful stops."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time

import pytest
from server import (
    HOOKS,
    Load,
    background_request,
    refusal,
    request,
    serves,
    stats,
    wait_for,
    worker_ids,
    workers,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def crash_one_worker(gunicorn) -> None:
    """/crash ends the serving worker's event loop right after its answer."""
    assert request(gunicorn.port, "/crash").status == 200


def crashes(gunicorn, topology) -> int:
    """Crashes counted by the master (workers) or by the worker processes (their threads)."""
    return stats(gunicorn)["thread_crashes" if topology.threads > 1 else "worker_crashes"]


def loop_threads(gunicorn) -> list[list[int]]:
    """The ids of each worker process's loop threads, as gunicornc shows them."""
    return [[t["id"] for t in w.get("threads", [])] for w in workers(gunicorn)]


def test_a_crashed_worker_is_reaped_and_replaced_others_undisturbed(gunicorn, topology):
    gunicorn.start(*HOOKS, topology=topology, workers=2)
    before = worker_ids(gunicorn)
    threads_before = loop_threads(gunicorn)
    crash_one_worker(gunicorn)
    if topology.threads > 1:  # a loop thread, replaced inside its process: no worker is lost
        wait_for(lambda: crashes(gunicorn, topology) == 1, 10, "the crash counted")
        wait_for(lambda: all(len(t) == 2 for t in loop_threads(gunicorn)), 10, "a new thread")
        after = loop_threads(gunicorn)
        changed = [set(a) ^ set(b) for a, b in zip(threads_before, after, strict=True)]
        assert sorted(len(c) for c in changed) == [0, 2]  # one thread of one process replaced
        assert worker_ids(gunicorn) == before
        assert "child_exit" not in gunicorn.hook_counts()
    else:
        wait_for(lambda: gunicorn.hook_counts().get("child_exit") == 1, 10, "the crashed one")
        wait_for(lambda: len(set(worker_ids(gunicorn)) - set(before)) == 1, 10, "a replacement")
        after = worker_ids(gunicorn)
        assert len(after) == 2 and len(set(after) & set(before)) == 1  # the other one serves
        assert stats(gunicorn)["worker_crashes"] == 1
    assert all(request(gunicorn.port).status == 200 for _ in range(10))


def test_a_crash_loop_backs_off_instead_of_spinning(gunicorn, topology):
    master = gunicorn.start(
        "--max-restarts", "2", "--restart-window", "60", topology=topology, workers=1
    )
    # Each slot's crashes past the budget of 2 wait 0.1 s, then doubling, each logged. With
    # loop threads in a worker process the crashes spread over its thread slots: crash on
    # until one slot has reached 0.4 s (one slot: 5 crashes; two: at most 9).
    for count in range(1, 13):
        wait_for(lambda: serves(gunicorn.port), 20, "a worker to serve")
        crash_one_worker(gunicorn)
        wait_for(lambda c=count: crashes(gunicorn, topology) == c, 10, f"crash {count}")
        if master.log_count(r"next start in 0\.4s"):
            break
    backoffs: dict[str, list[str]] = {}
    for slot, delay in re.findall(
        r"Worker slot (\d+) crashed .* next start in ([\d.]+)s", master.log
    ):
        backoffs.setdefault(slot, []).append(delay)
    assert ["0.1", "0.2", "0.4"] in backoffs.values()
    assert all(d == ["0.1", "0.2", "0.4"][: len(d)] for d in backoffs.values()), backoffs
    if topology.threads == 1:
        assert count == 5
    wait_for(lambda: serves(gunicorn.port), 20, "the slot to serve again")
    assert master.proc.poll() is None  # runtime crashes never stop the master


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        ("--max-restarts", "-1", "max_restarts must be a number >= 0; got '-1'"),
        ("--max-restarts", "many", "max_restarts must be a number >= 0; got 'many'"),
        ("--restart-window", "-5", "restart_window must be a number >= 0; got '-5'"),
        ("--restart-window", "soon", "restart_window must be a number >= 0; got 'soon'"),
    ],
)
def test_bad_budget_values_are_refused_in_one_line(gunicorn, flag, value, error):
    assert refusal(gunicorn, flag, value) == [f"Error: {error}"]


def test_a_stuck_worker_is_replaced_at_once(gunicorn, topology):
    """A handler that blocks its event loop past --timeout: worker_abort, and -w 1 serves
    again right after the timeout (the stuck thread is replaced, not waited for)."""
    master = gunicorn.start("--timeout", "3", topology=topology, workers=1)
    background_request(gunicorn.port, "/block?s=30", timeout=40)
    master.wait_log(r"WORKER TIMEOUT", timeout=20)
    wait_for(lambda: serves(gunicorn.port), 5, "a replacement to serve")


def test_a_thread_stuck_in_c_is_abandoned_after_graceful_timeout(gunicorn):
    master = gunicorn.start("--timeout", "3", "--graceful-timeout", "2", mode="thread", workers=1)
    stuck = worker_ids(gunicorn)[0]
    background_request(gunicorn.port, "/csleep?s=60", timeout=70)
    master.wait_log(r"WORKER TIMEOUT", timeout=20)
    wait_for(lambda: serves(gunicorn.port), 5, "a replacement to serve")
    master.wait_log(rf"Worker thread {stuck} did not stop within 2s of its abort: abandoned")
    assert stats(gunicorn)["threads_abandoned"] == 1
    assert stuck not in worker_ids(gunicorn) and len(worker_ids(gunicorn)) == 1
    assert all(request(gunicorn.port).status == 200 for _ in range(5))


def test_max_requests_recycles_workers_without_failing_a_request(gunicorn, topology):
    master = gunicorn.start(
        "--max-requests", "10", "--max-requests-jitter", "5", topology=topology, workers=1
    )
    served_by, failures = set(), 0
    recycled = r"Maximum request limit|Autorestarting worker"
    deadline = time.monotonic() + 60
    # Requests until three workers have served and two have been recycled (uvicorn checks its
    # request count every 0.1 s, so a worker may serve a few more than its limit).
    for count in range(1, 2001):
        try:
            body = request(gunicorn.port, timeout=10).json()
            served_by.add((body["pid"], body["thread"]))
        except (OSError, http.client.HTTPException):
            failures += 1
        if len(served_by) >= 3 and master.log_count(recycled) >= 2:
            break
        assert time.monotonic() < deadline, (count, served_by)
    print(f"max_requests ({topology}): {count} requests, {len(served_by)} workers served")
    assert failures == 0
    assert len(served_by) >= 3 and master.log_count(recycled) >= 2, (count, served_by)
    if topology.in_master:  # only the thread is replaced, and the line says so
        assert re.search(r"limit of \d+ exceeded: worker thread \d+ is replaced", master.log)
        assert "Terminating process" not in master.log


APP_V1 = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"version": VERSION}'})
"""


def write_app(path, version: int) -> None:
    path.write_text(APP_V1.replace("VERSION", str(version)))
    later = time.time() + version  # a newer mtime than any earlier write, for the reloader
    os.utime(path, (later, later))


def start_versioned(gunicorn, topology, tmp_path, *args: str, workers: int):
    """A master serving app_dir/versioned.py (version 1), a file the test rewrites."""
    code = tmp_path / "app_dir"
    code.mkdir()
    write_app(code / "versioned.py", 1)
    master = gunicorn.start(
        "--chdir",
        str(code),
        "--asgi-lifespan",
        "off",
        *args,
        topology=topology,
        workers=workers,
        app="versioned:app",
        ready=r"Booting worker",
    )
    wait_for(lambda: serves(gunicorn.port), 20, "serving")
    return master, code / "versioned.py"


def test_hup_under_load_serves_new_code_and_fails_no_request(gunicorn, topology, tmp_path):
    master, source = start_versioned(gunicorn, topology, tmp_path, workers=2)
    load = Load(gunicorn.port, "/version", clients=4, keep_alive=False, limit=20000)
    try:
        wait_for(lambda: load.sent > 50, 20, "load running")
        old = set(worker_ids(gunicorn))
        write_app(source, 2)
        master.signal(signal.SIGHUP)
        wait_for(lambda: not old & set(worker_ids(gunicorn)), 30, "the old workers gone")
        after = len(load.bodies)  # answered once no old worker is left
        wait_for(lambda: len(load.bodies) >= after + 20, 20, "20 answers after them")
    finally:
        load.stop()
    print(f"HUP under load ({topology}): {load.report()}")
    assert load.errors == [] and load.non_2xx == 0, load.report()
    assert {json.loads(b)["version"] for b in load.bodies[after:]} == {2}
    if topology.loop_threads:  # the master imports the app for its threads: once more now
        assert "gilworker: the app's module will be imported anew" in master.log


def test_reload_on_file_change_serves_new_code(gunicorn, topology, tmp_path):
    _, source = start_versioned(gunicorn, topology, tmp_path, "--reload", workers=1)
    assert request(gunicorn.port).json() == {"version": 1}
    write_app(source, 2)
    touches = iter(range(3, 1000))

    def new_code() -> bool:
        try:
            if request(gunicorn.port, timeout=2).json() == {"version": 2}:
                return True
        except (OSError, ValueError, http.client.HTTPException):
            return False
        # The reloader takes its first look at the files while the worker starts: a change made
        # before that look is its baseline, not a change. Change the file again, as an editor would.
        later = time.time() + next(touches)
        os.utime(source, (later, later))
        return False

    wait_for(new_code, 30, "the changed file served")


def test_sigterm_lets_streams_finish_and_closes_websockets(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        ws.send("before")
        assert ws.recv(timeout=10).startswith("echo:before")
        stream = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=20)
        try:
            stream.request("GET", "/stream?n=30&delay=0.05")  # 1.5 s of chunks
            streaming = stream.getresponse()  # its head has come: the stream is under way
            master.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=15)
            assert closed.value.rcvd is not None  # a close frame, not a dropped connection
            assert closed.value.rcvd.code == 1012  # "service restart"
            body = streaming.read()
        finally:
            stream.close()
    assert body == b"".join(b"chunk%d\n" % i for i in range(30))
    assert master.wait() == 0


def test_sigterm_closes_keep_alive_after_the_current_response(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=1)
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
    try:
        assert request(conn=conn).status == 200
        conn.request("GET", "/sleep?s=1")
        master.wait_log(r"sleep request started")  # in flight (it takes 1 s)
        master.signal(signal.SIGTERM)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
        assert resp.getheader("connection") == "close"
    finally:
        conn.close()
    assert master.wait() == 0
