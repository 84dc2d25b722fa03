"""What a newcomer sees: settings in --help, the lines that explain the mode and the workers,
statsd metrics."""

from __future__ import annotations

import subprocess

from server import FREE_THREADED, GUNICORN, THREAD_ID_BASE, Statsd, request


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
    ids = rf"({THREAD_ID_BASE + 1}|{THREAD_ID_BASE + 2})"  # each process's two threads
    assert master.log_count(rf"Booting worker thread with id: {ids}\n") == threads
    master.signal(15)
    assert master.wait() == 0
    assert master.log_count(r"Worker exiting \(pid: \d+\)") == processes
    assert master.log_count(rf"Worker exiting \(thread id: {ids}\)") == threads


def test_statsd_metrics(gunicorn, topology):
    # a loop thread of a worker process is replaced inside its process, which counts it
    kind = "thread" if topology.threads > 1 else "worker"
    crashed = f"gilworker.{kind}_crashes:1|c"
    gauges = ["gunicorn.workers:2|g", f"gilworker.event_loops:{2 * topology.threads}|g"]
    if topology.loop_threads:
        gauges.append(f"gilworker.gil_enabled:{0 if FREE_THREADED else 1}|g")
    with Statsd() as statsd:
        gunicorn.start("--statsd-host", statsd.host, topology=topology, workers=2)
        assert request(gunicorn.port, "/crash").status == 200
        # the workers gauge follows the respawn
        received = statsd.wait(
            lambda lines: (
                any(m.startswith(crashed) for m in lines)
                and all(gauge in lines for gauge in gauges)
            ),
            20,
            f"{crashed} and the gauges {gauges}",
        )
    assert any(m.startswith(crashed) for m in received)
    assert all(gauge in received for gauge in gauges), received
