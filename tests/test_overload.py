"""More clients than a worker may hold, in every topology: the open-file limit,
--worker-connections, and what clients can make the server log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from server import (
    THREADS,
    Statsd,
    accept_queue,
    background_request,
    children_of,
    closed_by_peer,
    serves,
    wait_for,
)

from gunicorn_gilworker.client_noise import KINDS, ClientNoise


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing."""
    connections = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        connections.append(s)
    return connections


def server_cpu(pid: int) -> float:
    """CPU seconds of the master and its children."""
    total = 0
    for p in [pid, *children_of(pid)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def quiet(pid: int, share: float, over: float) -> Callable[[], bool]:
    """For wait_for: whether the server has used under `share` of one core over the last `over`
    seconds (its CPU time read at each call)."""
    samples: list[tuple[float, float]] = []

    def check() -> bool:
        now = time.monotonic()
        samples.append((now, server_cpu(pid)))
        while len(samples) > 1 and now - samples[1][0] >= over:
            samples.pop(0)  # keep the oldest sample at least `over` seconds back
        then, cpu = samples[0]
        return now - then >= over and (samples[-1][1] - cpu) / (now - then) < share

    return check


@pytest.fixture
def many_descriptors():
    """This test process may open a few thousand connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= 2500, f"the test needs an open-file hard limit of 2500, not {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def connected(s: socket.socket) -> bool:
    """Whether the non-blocking connect of `s` has completed."""
    try:
        s.getpeername()
        return True
    except OSError:
        return False


def limit_to(soft: int, hard: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_at_the_descriptor_limit_workers_pause_then_serve_again(
    gunicorn, topology, loop, many_descriptors
):
    # One process at its limit, with two loops where the topology has threads: the limit is per
    # process, so 2 worker processes would hold up to 2 x 973 of the 2,000 and might never reach it.
    workers = 2 if topology == THREADS else 1
    master = gunicorn.start(
        "--asgi-loop", loop, topology=topology, workers=workers, preexec_fn=limit_to(1024, 1024)
    )
    before = len(master.log.splitlines())
    idle = open_idle(gunicorn.port, 2000)
    try:
        master.wait_log(r"file descriptors open: workers stop accepting", timeout=20)
        # Past the burst of taking on a thousand connections, and past asyncio's retry of an
        # accept that failed for want of descriptors (ACCEPT_RETRY_DELAY after it): quiet for
        # longer than that delay.
        over = asyncio.constants.ACCEPT_RETRY_DELAY + 0.5
        wait_for(quiet(master.pid, 0.10, over), 20, f"the server quiet for {over} s")
        cpu = server_cpu(master.pid)
        time.sleep(3)  # the behaviour under test: a server at its limit stays idle this long
        cpu = server_cpu(master.pid) - cpu
        print(f"saturated ({topology}, {loop}): {cpu / 3:.1%} of one core")
        assert cpu / 3 < 0.10
        logged = master.log.splitlines()[before:]
        assert len(logged) < 20, "\n".join(logged[:40])
    finally:
        for s in idle:
            s.close()
    # Served again within 2 s. (While it takes on the backlog of connections the idle clients
    # left, a loop at the limit may refuse one, libuv by design: a client may retry at once.)
    wait_for(lambda: serves(gunicorn.port, timeout=0.5), 2, "GET / answered")
    master.wait_log(r"gilworker: accepting again")


def test_threads_raise_the_soft_descriptor_limit_and_say_so(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2, preexec_fn=limit_to(512, 4096))
    soft = re.search(r"Max open files\s+(\d+)", Path(f"/proc/{master.pid}/limits").read_text())
    if topology.loop_threads:  # the workers' threads share one process's limit
        assert "gilworker: raised the open-file limit from 512 to 4096" in master.log
        assert soft and int(soft.group(1)) == 4096
    else:  # gunicorn's own processes: each has the limit it was given
        assert "open-file limit" not in master.log
        assert soft and int(soft.group(1)) == 512


def test_worker_connections_caps_each_event_loop(gunicorn, topology):
    """At --worker-connections open connections a loop stops accepting, as gthread does: the
    next client waits in the listen backlog until a connection closes."""
    cap = 4
    gunicorn.start("--worker-connections", str(cap), topology=topology, workers=1)
    held = cap * topology.threads
    idle = open_idle(gunicorn.port, held)  # every loop holds its cap
    try:
        wait_for(
            lambda: all(connected(s) for s in idle) and accept_queue(gunicorn.port) == 0,
            10,
            f"the {held} connections accepted",
        )
        client, answered = background_request(gunicorn.port, "/", timeout=20)
        wait_for(lambda: accept_queue(gunicorn.port) == 1, 10, "the client in the backlog")
        client.join(1.0)  # the behaviour under test: for a while, no loop takes it
        assert answered == [] and accept_queue(gunicorn.port) == 1
        idle.pop().close()
        client.join(10)
        assert answered and answered[0].status == 200
    finally:
        for s in idle:
            s.close()


def test_connections_closed_by_the_header_timeout_are_counted_not_logged(
    gunicorn, topology, many_descriptors
):
    master = gunicorn.start("--header-timeout", "1", topology=topology, workers=2)
    before = len(master.log.splitlines())
    idle = open_idle(gunicorn.port, 2000)
    try:
        wait_for(lambda: all(closed_by_peer(s) for s in idle), 30, "every idle connection closed")
    finally:
        for s in idle:
            s.close()
    master.wait_log(r"gilworker: connections closed because their request head took over")
    logged = master.log.splitlines()[before:]
    assert len(logged) < 20, "\n".join(logged[:40])


def test_client_noise_is_in_the_debug_log_and_statsd(gunicorn):
    slow, malformed = "gilworker.client.slow_head", "gilworker.client.malformed"
    with Statsd() as statsd:
        master = gunicorn.start(
            "--header-timeout",
            "1",
            "--log-level",
            "debug",
            "--statsd-host",
            statsd.host,
            topology=THREADS,
            workers=1,
        )
        idle = open_idle(gunicorn.port, 30)
        try:
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=5) as s:
                    s.sendall(b"GARBAGE\r\n\r\n")
                    s.recv(100)
            master.wait_log(
                r"DEBUG\] Closing a connection whose request head took over 1.0s", count=30
            )
            statsd.wait(
                lambda _: statsd.total(slow) >= 30 and statsd.total(malformed) >= 20,
                10,
                "the counts in statsd",
            )
        finally:
            for s in idle:
                s.close()
    assert master.log_count(r"DEBUG\] Invalid HTTP request received") == 20
    assert statsd.total(slow) == 30
    assert statsd.total(malformed) == 20


def test_the_counts_are_summarised_once_per_interval(mocker):
    log = mocker.Mock()
    noise = ClientNoise(log, interval=60)
    noise.since = 1000.0
    for _ in range(5):
        noise.count("slow_head")
    noise.count("malformed")
    noise.flush(1000.1)
    warned = [c.args for c in log.warning.call_args_list]
    assert len(warned) == 2  # the first of each kind
    assert "connections closed because their request head" in warned[0][1]
    for _ in range(3):
        noise.count("slow_head")
    noise.flush(1030.0)
    assert log.warning.call_count == 2  # the count comes with the interval
    noise.flush(1061.0)
    summaries = [c.args for c in log.warning.call_args_list[2:]]
    assert summaries == [
        ("gilworker: %d %s in the last %.0f s", 8, KINDS["slow_head"], 61.0),
        ("gilworker: %d %s in the last %.0f s", 1, KINDS["malformed"], 61.0),
    ]
    metrics = [c.kwargs["extra"]["value"] for c in log.debug.call_args_list]
    assert metrics == [5, 1, 3]  # statsd counts, per flush
