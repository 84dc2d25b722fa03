"""What a newcomer sees: settings in --help, the lines that explain the mode and the workers,
statsd metrics."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

from server import FREE_THREADED, GUNICORN, request, wait_for


def test_every_gilworker_setting_is_in_help_with_one_line():
    done = subprocess.run([GUNICORN, "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(done.stdout.split())
    for flag, meta, summary in [
        ("--gil-mode", "STRING", "gilworker: run workers as threads or processes"),
        ("--max-restarts", "INT", "gilworker: crashes of one worker slot"),
        ("--restart-window", "SECONDS", "gilworker: the window (seconds)"),
        ("--header-timeout", "SECONDS", "gilworker: close a connection whose request head"),
    ]:
        assert f"{flag} {meta} {summary}" in text, flag


def test_worker_lines_say_thread_or_process_and_the_id(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    processes = 0 if topology.in_master else 2
    threads = 2 * topology.threads if topology.loop_threads else 0
    assert master.log_count(r"Booting worker with pid: \d+\n") == processes
    assert master.log_count(r"Booting worker thread with id: 1000000[12]\n") == threads
    master.signal(15)
    assert master.wait() == 0
    assert master.log_count(r"Worker exiting \(pid: \d+\)") == processes
    assert master.log_count(r"Worker exiting \(thread id: 1000000\d\)") == threads


def test_statsd_metrics(gunicorn, topology):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.2)
        port = statsd.getsockname()[1]
        gunicorn.start("--statsd-host", f"127.0.0.1:{port}", topology=topology, workers=2)
        assert request(gunicorn.port, "/crash").status == 200
        received: list[str] = []
        # a loop thread of a worker process is replaced inside its process, which counts it
        kind = "thread" if topology.threads > 1 else "worker"
        crashed = f"gilworker.{kind}_crashes:1|c"

        def collect() -> list[str]:
            with contextlib.suppress(TimeoutError):
                received.extend(statsd.recv(65536).decode().splitlines())
            return received

        wait_for(lambda: any(m.startswith(crashed) for m in collect()), 20, crashed)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the workers gauge follows the respawn
            collect()
    assert "gunicorn.workers:2|g" in received
    assert f"gilworker.event_loops:{2 * topology.threads}|g" in received
    if topology.loop_threads:
        assert f"gilworker.gil_enabled:{0 if FREE_THREADED else 1}|g" in received
