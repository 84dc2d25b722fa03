"""Faults a worker cannot catch, in every topology: what survives, what is replaced, what the
log says. The README's table of faults each topology survives is this file's summary.

Crashes are real: a segfault through ctypes, os._exit from app code, SIGKILL as the kernel's OOM
killer sends it, a C call that never returns, memory that is never given back."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
from pathlib import Path

import pytest
from server import (
    PROCESSES_OF_THREADS,
    background_request,
    refusal,
    request,
    session_processes,
    wait_for,
    workers,
)

TRACEBACK = "Fatal Python error: Segmentation fault"


def crash(port: int, path: str) -> None:
    """A request whose worker dies while answering it: the client sees the connection drop."""
    with pytest.raises((OSError, http.client.HTTPException)):
        request(port, path, timeout=10)


def answered_by(port: int, count: int) -> set[int]:
    """The pids that answered `count` requests, each of which must succeed."""
    pids = set()
    for _ in range(count):
        response = request(port, timeout=10)
        assert response.status == 200
        pids.add(response.json()["pid"])
    return pids


@pytest.mark.parametrize(("fault", "path"), [("segfault", "/segfault"), ("os._exit(7)", "/exit")])
def test_a_crash_in_c_or_an_exit_ends_only_its_process(gunicorn, topology, fault, path):
    master = gunicorn.start(topology=topology, workers=2)
    before = set(master.children())
    crash(gunicorn.port, path)
    if topology.in_master:  # the workers are the master's threads: the server ends with them
        status = master.wait()
        assert status == (-signal.SIGSEGV if fault == "segfault" else 7)
    else:  # the master names what ended the process, and replaces it
        how = "was sent SIGSEGV!" if fault == "segfault" else "exited with code 7"
        master.wait_log(rf"Worker \(pid:\d+\) {how}")
        answered_by(gunicorn.port, 20)  # every request after the crash is answered
        wait_for(lambda: len(set(master.children()) - before) == 1, 10, "a successor")
        successor = (set(master.children()) - before).pop()
        wait_for(lambda: successor in answered_by(gunicorn.port, 5), 20, "the successor serving")
        assert master.proc.poll() is None
    if fault == "segfault":  # every thread's Python stack, from faulthandler, in the error log
        log = master.log
        assert TRACEBACK in log and "in string_at" in log
        threads = 1 + topology.threads if topology.loop_threads else 1  # main + loop threads
        assert log.count("(most recent call first)") >= threads


def oom_score(pid: int) -> int:
    """The kernel's badness of `pid`: the OOM killer ends the process with the highest."""
    try:
        return int(Path(f"/proc/{pid}/oom_score").read_text())
    except (FileNotFoundError, ProcessLookupError):  # gone, or a zombie
        return -1


LEAK_MB = 300  # well above a worker's own size, so that no other process of the server is close


def test_an_oom_kill_ends_only_its_process(gunicorn, topology):
    """SIGKILL, sent as the kernel's OOM killer would: to the process of the server that holds
    the most memory, after one request made it keep LEAK_MB."""
    master = gunicorn.start(topology=topology, workers=2)
    leak = f"/leak?kb={LEAK_MB * 1024}&touch=1"
    leaker = request(gunicorn.port, leak, timeout=30).json()["pid"]
    server = [master.pid, *master.children()]
    victim = max(server, key=oom_score)  # the kernel's choice, not the test's
    assert victim == leaker, {pid: oom_score(pid) for pid in server}
    os.kill(victim, signal.SIGKILL)
    if topology.in_master:  # the workers are threads of the one process that holds the memory
        assert victim == master.pid and server == [master.pid]
        assert master.wait() == -signal.SIGKILL
        # the whole server is gone with it: no process left of its session, nothing listening
        assert session_processes(master.pid) == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gunicorn.port), timeout=5).close()
        return
    assert victim != master.pid  # the master holds no app memory: it survives
    master.wait_log(rf"Worker \(pid:{victim}\) was sent SIGKILL! Perhaps out of memory\?")
    wait_for(
        lambda: len(master.children()) == 2 and victim not in master.children(), 10, "a successor"
    )
    assert answered_by(gunicorn.port, 20) <= set(master.children())


def pss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        # A worker recycled while we read is gone (ENOENT) or a zombie (ESRCH): it holds nothing.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += next(
                int(line.split()[1]) for line in text.splitlines() if line.startswith("Pss:")
            )
    return total / 1024


def test_max_requests_gives_back_what_a_leak_holds(gunicorn):
    """1 MB kept per request: recycling a worker process of threads after 50 requests, counted
    over its threads, gives the memory back (a thread recycled in the master could not)."""
    master = gunicorn.start("--max-requests", "50", topology=PROCESSES_OF_THREADS, workers=2)
    for i in range(500):
        assert request(gunicorn.port, "/leak", timeout=20).status == 200, i
    pss = pss_mb([master.pid, *master.children()])
    print(f"PSS after 500 leaking requests, -w 2 --threads 2 --max-requests 50: {pss:.1f} MB")
    assert pss < 250
    assert master.log_count(r"Autorestarting worker after current request") >= 8


def test_a_thread_stuck_in_c_is_ended_with_its_process(gunicorn):
    """-w 1 --threads 2 --timeout 5: a request stuck in a C call holds back its process's
    heartbeat; the master aborts that process and replaces it. No thread is left behind."""
    master = gunicorn.start(
        "--timeout", "5", "--graceful-timeout", "3", topology=PROCESSES_OF_THREADS, workers=1
    )
    [stuck] = master.children()
    background_request(gunicorn.port, "/csleep?s=120", timeout=130)
    master.wait_log(rf"csleep started in {stuck}")
    master.wait_log(rf"WORKER TIMEOUT \(pid:{stuck}\)", timeout=30)
    wait_for(lambda: not Path(f"/proc/{stuck}").exists(), 10, "the stuck process gone")
    wait_for(lambda: len(master.children()) == 1, 10, "a successor")
    assert answered_by(gunicorn.port, 10) == set(master.children())
    shown = workers(gunicorn)
    assert [w["pid"] for w in shown] == master.children()
    assert len(shown[0]["threads"]) == 2
    assert "abandoned" not in master.log
    master.signal(signal.SIGTERM)
    assert master.wait(timeout=10) == 0  # nothing stuck keeps it alive


@pytest.mark.parametrize(
    ("flag", "value", "error"),
    [
        (
            "--threads",
            "0",
            "--threads must be at least 1 with gilworker (event-loop threads per worker "
            "process); got 0",
        ),
        ("--threads", "-2", "Value must be positive: -2"),
        (
            "--workers",
            "0",
            "-w/--workers must be at least 1 with gilworker; got 0 (0 starts a server that "
            "never answers)",
        ),
    ],
)
def test_bad_thread_and_worker_counts_are_refused_in_one_line(gunicorn, flag, value, error):
    assert refusal(gunicorn, flag, value) == [f"Error: {error}"]


def test_a_stopped_server_leaves_no_process(gunicorn, topology):
    """After SIGTERM no process of the server's session is left: no worker process, nor any
    process a worker started (reparented away from the master, so not among its children).
    With threads in the master, the master is the server's only process."""
    master = gunicorn.start(topology=topology, workers=2)
    assert request(gunicorn.port).status == 200
    expected = 1 if topology.in_master else 3  # the master, and each worker process
    assert len(session_processes(master.pid)) == expected, session_processes(master.pid)
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    with contextlib.suppress(TimeoutError):  # a process may take a moment to go: not 5 s
        wait_for(lambda: session_processes(master.pid) == [], 5, "no process left")
    left = {pid: process_name(pid) for pid in session_processes(master.pid)}
    assert left == {}, f"left of the server's session: {left}"


def process_name(pid: int) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return "(gone)"
