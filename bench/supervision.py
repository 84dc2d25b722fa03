"""Supervision figures: worker respawn to serving, and memory per code reload (HUP).

    python bench/supervision.py [--mode thread|process] [--threads N] [--crash exit|segfault]
                                [--reloads 20] [--respawns 20]

`--crash exit` ends the serving worker's event loop (a thread, or a process's only loop);
`--crash segfault` crashes the serving process in C (ctypes), for worker processes: with
`--mode thread --threads 2` that is a worker process of threads, dead and replaced whole.

Runs a real `gunicorn -k gilworker` master on 127.0.0.1 with the interpreter running this
script, and prints one line per figure.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = """
import asyncio, ctypes, os, sys, threading
VERSION = {version}
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/exit":
        asyncio.get_running_loop().call_soon(sys.exit, 1)
    if scope["path"] == "/segfault":
        ctypes.string_at(0)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    loop = asyncio.get_running_loop()
    who = f"{{VERSION}} {{os.getpid()}}-{{threading.get_ident()}}-{{id(loop)}}"
    await send({{"type": "http.response.body", "body": who.encode()}})
"""


def get(port: int, path: str = "/") -> str | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        body = conn.getresponse().read().decode()
        conn.close()
        return body
    except OSError:
        return None


def pss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (FileNotFoundError, ProcessLookupError):  # gone, or a zombie: it holds nothing
            pass
    return total / 1024


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="thread")
    parser.add_argument("--threads", type=int, default=1, help="event-loop threads per process")
    parser.add_argument("--crash", choices=("exit", "segfault"), default="exit")
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--respawns", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "bench_app.py").write_text(APP.format(version=0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    master = subprocess.Popen(
        [
            gunicorn,
            "-k",
            "gilworker",
            "--gil-mode",
            args.mode,
            "--threads",
            str(args.threads),
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(work),
            "--control-socket",
            str(work / "ctl"),
            "--asgi-lifespan",
            "off",
            "--max-restarts",
            "1000",
            "bench_app:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while get(port) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        respawn = []
        topology = f"{args.mode}, --threads {args.threads}, {args.crash}"
        for _ in range(args.respawns):
            crashed = get(port, f"/{args.crash}")  # None: the connection died with the process
            t0 = time.perf_counter()
            while get(port) in (None, crashed):  # until the replacement answers
                time.sleep(0.001)
            respawn.append((time.perf_counter() - t0) * 1000)
        print(
            f"respawn to serving ({topology}): median {statistics.median(respawn):.1f} ms, "
            f"min {min(respawn):.1f}, max {max(respawn):.1f} over {len(respawn)} crashes"
        )
        if not args.reloads:
            return
        time.sleep(1)
        start = pss_mb(master.pid)
        for version in range(1, args.reloads + 1):
            (work / "bench_app.py").write_text(APP.format(version=version))
            os.kill(master.pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while (get(port) or "").split()[0] != str(version) and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(2)
        end = pss_mb(master.pid)
        print(
            f"memory over {args.reloads} HUP reloads ({topology}, {sys.version.split()[0]}): "
            f"PSS {start:.1f} MB -> {end:.1f} MB, {(end - start) / args.reloads:.2f} MB per "
            "reload"
        )
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()


if __name__ == "__main__":
    main()
