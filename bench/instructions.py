"""Instructions per request (valgrind's callgrind) of one worker process: gilworker against
uvicorn-worker and gunicorn's own `-k asgi`, on the GIL build. A count of instructions does not
move with the machine's load (it leaves out the kernel's share), so this shows what each worker
does per request in user space when CPU-time ratios are within noise.

    python bench/instructions.py --venv .venvs/gil     # about a minute; needs valgrind
    (bench/run.sh runs it too when valgrind is installed)

Each worker serves N1 and then N2 sequential keep-alive requests in separate runs; the difference
of its instruction totals over N2 - N1 is its cost per request (start-up and shutdown cancel out).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
WORKERS = {
    "gilworker (process)": "gilworker",
    "uvicorn-worker": "uvicorn_worker.UvicornWorker",
    "gunicorn -k asgi": "asgi",
}
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_requests(port: int, count: int, deadline: float) -> None:
    while True:
        try:
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with conn:
        for _ in range(count):
            conn.sendall(REQUEST)
            data = b""
            while b"Hello, world!" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    raise RuntimeError("connection closed")
                data += chunk


def worker_instructions(venv: Path, worker: str, count: int) -> int:
    out = Path(tempfile.mkdtemp())
    port = free_port()
    argv = [
        *("valgrind", "--tool=callgrind", "--trace-children=yes"),
        f"--callgrind-out-file={out}/cg.%p",
        str(venv / "bin" / "python"),
        str(venv / "bin" / "gunicorn"),
        *("-k", worker, "-w", "1", "-b", f"127.0.0.1:{port}", "--chdir", str(HERE)),
        *("--no-control-socket", "--log-level", "warning", "--timeout", "600", "app:app"),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if worker == "gilworker":
        argv[argv.index("-w") : argv.index("-w")] = ["--gil-mode", "process"]
    master = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        serve_requests(port, count, time.monotonic() + 300)
    finally:
        os.killpg(master.pid, signal.SIGTERM)
        master.wait(timeout=300)
    totals = {}
    for path in out.glob("cg.*"):
        found = re.search(r"^summary:\s+(\d+)", path.read_text(errors="replace"), re.M)
        totals[int(path.suffix[1:])] = int(found.group(1)) if found else 0
    shutil.rmtree(out)
    workers = [n for pid, n in totals.items() if pid != master.pid]
    if len(workers) != 1:
        raise RuntimeError(f"expected one worker's profile, got {totals}")
    return workers[0]


def per_request(venv: Path, counts: tuple[int, int]) -> dict[str, float]:
    """Instructions per request of each worker class, from runs of counts[0] and counts[1]."""
    n1, n2 = counts
    result = {}
    for label, worker in WORKERS.items():
        low, high = (worker_instructions(venv, worker, n) for n in (n1, n2))
        result[label] = (high - low) / (n2 - n1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, required=True, help="GIL-build venv")
    parser.add_argument("--counts", type=int, nargs=2, default=(500, 2500))
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("bench: valgrind is needed: apt-get install valgrind")
    measured = per_request(args.venv, tuple(args.counts))
    for label, n in measured.items():
        print(f"{label}: {n:,.0f} instructions per request")
    ours = measured["gilworker (process)"]
    for label in list(WORKERS)[1:]:
        print(f"gilworker / {label} instructions per request: {ours / measured[label]:.3f}")


if __name__ == "__main__":
    main()
