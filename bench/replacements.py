"""What a keep-alive client loses while workers are replaced.

    python bench/replacements.py --venv .venvs/freethreaded [--seconds 10] [--kinds hup,kill]

Runs `wrk -t1 -c32` (keep-alive) against a real master on 127.0.0.1 while replacing workers
every 0.5 s, one kind at a time: HUP, `gunicornc worker kill`, TTIN then TTOU, `--max-requests`
recycling. Reports wrk's socket errors (connect, read, write, timeout) and non-2xx answers per
set-up: gilworker in each topology, and uvicorn-worker (where installed) as the anchor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
SETUPS = {
    "processes": ["-k", "gilworker", "--gil-mode", "process"],
    "threads": ["-k", "gilworker", "--gil-mode", "thread"],
    "processes of threads": ["-k", "gilworker", "--gil-mode", "thread", "--threads", "2"],
    "uvicorn-worker": ["-k", "uvicorn_worker.UvicornWorker"],
}
KINDS = ("hup", "kill", "ttin-ttou", "max-requests")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers(gunicornc: str, ctl: str) -> list[int]:
    out = subprocess.run(
        [gunicornc, "-s", ctl, "-j", "-c", "show workers"], capture_output=True, text=True
    ).stdout
    try:
        return [w["pid"] for w in json.loads(out)["workers"]]
    except (ValueError, KeyError):
        return []


def replace_workers(kind: str, pid: int, gunicornc: str, ctl: str, until: float) -> int:
    """Replace workers every 0.5 s until `until`; returns how many replacements were made."""
    done = 0
    while time.monotonic() < until - 0.5:
        time.sleep(0.5)
        if kind == "hup":
            os.kill(pid, signal.SIGHUP)
        elif kind == "kill":
            ids = workers(gunicornc, ctl)
            if ids:
                subprocess.run(
                    [gunicornc, "-s", ctl, "-c", f"worker kill {ids[0]}"], capture_output=True
                )
        elif kind == "ttin-ttou":
            os.kill(pid, signal.SIGTTIN)
            time.sleep(0.25)
            os.kill(pid, signal.SIGTTOU)
        else:
            return 0  # max-requests: the workers recycle themselves
        done += 1
    return done


def run(bin_dir: Path, name: str, kind: str, seconds: float) -> dict[str, object]:
    port, ctl = free_port(), tempfile.mktemp(suffix=".ctl")
    argv = [str(bin_dir / "gunicorn"), *SETUPS[name], "-w", "2", "-b", f"127.0.0.1:{port}"]
    argv += ["--chdir", str(HERE), "--log-level", "warning", "--control-socket", ctl]
    if kind == "max-requests":
        argv += ["--max-requests", "3000", "--max-requests-jitter", "500"]
    master = subprocess.Popen(
        [*argv, "app:app"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if (
                subprocess.run(
                    ["curl", "-sf", f"http://127.0.0.1:{port}/"], capture_output=True
                ).returncode
                == 0
            ):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        until = time.monotonic() + seconds
        made = [0]
        actor = threading.Thread(
            target=lambda: made.__setitem__(
                0, replace_workers(kind, master.pid, str(bin_dir / "gunicornc"), ctl, until)
            )
        )
        actor.start()
        out = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
        actor.join()
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        socket_errors = [int(x) for x in errors.groups()] if errors else [0, 0, 0, 0]
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        requests = re.search(r"(\d+) requests in", out)
        return {
            "setup": name,
            "kind": kind,
            "replacements": made[0],
            "requests": int(requests.group(1)) if requests else 0,
            "socket errors": sum(socket_errors),
            "connect/read/write/timeout": socket_errors,
            "non-2xx": int(non_2xx.group(1)) if non_2xx else 0,
        }
    finally:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait()


def table(rows: list[dict], seconds: float) -> list[str]:
    lines = [
        f"| replacement (wrk -t1 -c32, {seconds:.0f} s, every 0.5 s) | set-up | made | "
        "requests | socket errors (connect/read/write/timeout) | non-2xx |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c, rd, w, t = r["connect/read/write/timeout"]
        lines.append(
            f"| {r['kind']} | {r['setup']} | {r['replacements'] or '-'} | {r['requests']} | "
            f"{r['socket errors']} ({c}/{rd}/{w}/{t}) | {r['non-2xx']} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    bin_dir = args.venv / "bin"
    has_uvicorn_worker = (
        subprocess.run(
            [str(bin_dir / "python"), "-c", "import uvicorn_worker"], capture_output=True
        ).returncode
        == 0
    )
    rows = []
    for kind in args.kinds.split(","):
        for name in args.setups.split(","):
            if name == "uvicorn-worker" and not has_uvicorn_worker:
                continue
            row = run(bin_dir, name, kind, args.seconds)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n".join(table(rows, args.seconds)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
