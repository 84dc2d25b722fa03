"""--metrics-bind's scrape after many recycles, and /readyz after SIGTERM (one gilworker master).

    python bench/metrics_scrape.py VENV_BIN [RECYCLES]

8 worker processes with --max-requests 1 serve the bench app (its own prometheus_client Counter)
until the master counts RECYCLES worker exits; then 20 scrapes are timed. Prints JSON: the
median and max scrape ms, the files in the multiprocess directory, the exits, whether the
app's counter equals the requests sent; then the ms from SIGTERM to the first 503 of /readyz.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def value(text: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def main() -> None:
    venv, recycles = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    port, metrics = free_port(), free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
    argv = [
        str(venv / "gunicorn"),
        "-k",
        "gilworker",
        "--gil-mode",
        "process",
        "-w",
        "8",
        "--max-requests",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        "--metrics-bind",
        f"127.0.0.1:{metrics}",
        "--chdir",
        str(HERE),
        "--no-control-socket",
        "metrics_app:app",
    ]
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    sent = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(metrics, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        exits, lock = 0.0, threading.Lock()

        def client() -> None:
            nonlocal sent
            while exits < recycles:
                try:
                    get(port, "/")
                except (OSError, http.client.HTTPException):
                    continue  # a worker that just stopped: the next one answers
                with lock:
                    sent += 1

        clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 900
        while exits < recycles and time.monotonic() < deadline:
            time.sleep(0.5)
            exits = value(get(metrics, "/metrics")[1], "gilworker_worker_exits_total")
        for c in clients:
            c.join(30)
        log.seek(0)
        directory = re.search(r"multiprocess directory: (\S+)", log.read()).group(1)
        time.sleep(1)  # the last workers publish (twice a second)
        timings = []
        for _ in range(20):
            t0 = time.perf_counter()
            _, text = get(metrics, "/metrics")
            timings.append((time.perf_counter() - t0) * 1000)
        app_count = value(text, "bench_requests_total")
        served = value(text, "gilworker_requests_total")
        files = len(os.listdir(directory))
        proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        while get(metrics, "/readyz")[0] != 503:
            pass
        readyz_ms = (time.perf_counter() - t0) * 1000
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(
        json.dumps(
            {
                "recycles": value(text, "gilworker_worker_exits_total"),
                "scrape_ms_median": statistics.median(timings),
                "scrape_ms_max": max(timings),
                "files": files,
                "requests_answered": sent,
                "app_counter": app_count,
                "gilworker_counter": served,
                "readyz_503_after_sigterm_ms": readyz_ms,
            }
        )
    )


if __name__ == "__main__":
    main()
