"""The examples/ directory, run as a user would, in both modes."""

from __future__ import annotations

import signal
from pathlib import Path

from server import FREE_THREADED, request, wait_for
from websockets.sync.client import connect

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_starlette_example_with_its_conf_file(gunicorn, topology, tmp_path):
    worker_dir = tmp_path / "workers"
    env = gunicorn.env(
        GIL_MODE=topology.gil_mode,
        THREADS=str(topology.threads),
        WORKERS="3",
        WORKER_DIR=str(worker_dir),
    )
    env["BIND"] = "127.0.0.1:1"  # the launcher's -b wins over the conf file's bind
    env["PYTHONPATH"] = str(EXAMPLES)
    master = gunicorn.start(
        "-c",
        str(EXAMPLES / "gunicorn.conf.py"),
        app="starlette_app:app",
        worker_class=None,
        workers=3,
        env=env,
        mode=None,
    )

    def written() -> list[str] | None:
        # post_fork creates the file, then writes the mode: read it once it has been written
        if not worker_dir.is_dir():
            return None
        kinds = [f.read_text() for f in worker_dir.iterdir()]
        return kinds if len(kinds) == 3 and all(kinds) else None

    kinds = wait_for(written, 20, "a marker file per worker")
    assert set(kinds) == {topology.worker_kind}
    for _ in range(10):
        body = request(gunicorn.port).json()
        assert body["db"] == "ok"
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10).endswith(": hi")
    assert f"started as a {topology.worker_kind}" in master.log
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    assert list(worker_dir.iterdir()) == []  # worker_exit ran for every worker


def test_hello_example(gunicorn, topology):
    env = gunicorn.env(PYTHONPATH=str(EXAMPLES))
    gunicorn.start(app="hello:app", topology=topology, env=env)
    body = request(gunicorn.port).json()
    assert body["hello"] == "world"
    assert body["gil"] == ("off" if FREE_THREADED else "on")
    assert body["worker"].startswith("gilworker-" if topology.loop_threads else "MainThread")
