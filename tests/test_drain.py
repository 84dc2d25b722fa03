"""Keep-alive clients lose nothing while workers are replaced, in every topology: each request
already sent on an open connection is answered (the last one with Connection: close), whatever
replaces the worker: HUP, gunicornc worker kill, TTIN/TTOU, max_requests recycling."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time

from server import wait_for
from test_signals import ctl


class KeepAliveLoad:
    """Clients that each keep one connection open and send request after request on it (a new
    connection only after a Connection: close), counting what fails. Bounded in time: `stop()`
    ends it; `seconds` only bounds a test that never calls it, so it outlasts every wait of the
    tests (on a loaded machine a test's steps took over 60 s, and a load that had ended by
    itself then answered nothing)."""

    def __init__(self, port: int, clients: int = 12, seconds: float = 600) -> None:
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.sent = self.answered = self.closed_by_server = 0
        self.errors: list[str] = []
        self.non_2xx = 0
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while self.running and time.monotonic() < self.deadline:
            try:
                conn.request("GET", "/stream?n=1&delay=0")
                response = conn.getresponse()
                response.read()
                with self.lock:
                    self.sent += 1
                    self.answered += 1
                    self.non_2xx += response.status >= 300
                    self.closed_by_server += response.will_close
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.sent += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        conn.close()

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(30)

    def report(self) -> str:
        return (
            f"{self.sent} requests, {self.answered} answered ({self.closed_by_server} with "
            f"Connection: close), {len(self.errors)} errors {self.errors[:3]}, "
            f"{self.non_2xx} non-2xx"
        )


def worker_ids(gunicorn) -> list[int]:
    return [w["pid"] for w in json.loads(ctl(gunicorn, "show workers"))["workers"]]


def test_replacing_workers_under_keep_alive_load_loses_nothing(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    load = KeepAliveLoad(gunicorn.port)
    try:
        wait_for(lambda: load.answered > 200, 20, "the load running")
        for replace in ("hup", "kill", "hup", "kill", "ttin-ttou"):
            before = load.answered
            if replace == "hup":
                master.signal(signal.SIGHUP)
            elif replace == "kill":
                ctl(gunicorn, f"worker kill {worker_ids(gunicorn)[0]}")
            else:
                master.signal(signal.SIGTTIN)
                wait_for(lambda: len(worker_ids(gunicorn)) == 3, 20, "a third worker")
                master.signal(signal.SIGTTOU)
            wait_for(lambda b=before: load.answered > b + 300, 30, f"serving after {replace}")
            wait_for(lambda: len(worker_ids(gunicorn)) == 2, 30, "two workers again")
    finally:
        load.stop()
    print(f"replacements under keep-alive load ({topology}): {load.report()}")
    assert load.errors == [] and load.non_2xx == 0, load.report()
    assert load.closed_by_server > 0  # the stopping workers said Connection: close


def test_max_requests_recycling_under_keep_alive_load_loses_nothing(gunicorn, topology):
    master = gunicorn.start(
        "--max-requests", "150", "--max-requests-jitter", "50", topology=topology, workers=2
    )
    load = KeepAliveLoad(gunicorn.port)
    try:
        recycled = r"Maximum request limit|Autorestarting worker"
        wait_for(lambda: master.log_count(recycled) >= 4, 60, "four workers recycled")
    finally:
        load.stop()
    print(f"max_requests recycling under keep-alive load ({topology}): {load.report()}")
    assert load.errors == [] and load.non_2xx == 0, load.report()
