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


def test_worker_lines_say_thread_or_process_and_the_id(gunicorn, mode):
    master = gunicorn.start(mode=mode, workers=2)
    if mode == "thread":
        assert master.log_count(r"Booting worker thread with id: 1000000[12]\n") == 2
    else:
        assert master.log_count(r"Booting worker with pid: \d+\n") == 2
    master.signal(15)
    assert master.wait() == 0
    pattern = (
        r"Worker exiting \(thread id: 1000000\d\)"
        if mode == "thread"
        else (r"Worker exiting \(pid: \d+\)")
    )
    assert master.log_count(pattern) == 2


def test_statsd_metrics(gunicorn, mode):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(0.2)
        port = statsd.getsockname()[1]
        gunicorn.start("--statsd-host", f"127.0.0.1:{port}", mode=mode, workers=2)
        assert request(gunicorn.port, "/crash").status == 200
        received: list[str] = []

        def collect() -> bool:
            with contextlib.suppress(TimeoutError):
                received.extend(statsd.recv(65536).decode().splitlines())
            return any(m.startswith("gilworker.worker_crashes:1|c") for m in received)

        wait_for(collect, 20, "the crash counter")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the workers gauge follows the respawn
            collect()
    assert "gunicorn.workers:2|g" in received
    if mode == "thread":
        assert f"gilworker.gil_enabled:{0 if FREE_THREADED else 1}|g" in received
