"""Where thread mode's extra CPU per request on 3.13t comes from: the shared app or the interpreter.

    .venvs/gil/bin/python bench/thread_cost.py --ft .venvs/freethreaded [--rounds 8]

Three 2-worker servers on the hello route, each started anew for every round (A B C, then
C B A, ...): thread mode as shipped (one app instance for every worker thread); thread mode with
each worker thread given its own Starlette instance (`app_per_thread_conf.py`: app, router, routes
and middleware per thread, while modules, classes and functions stay shared); and process mode.
Per start it records CPU per request and, where `perf probe` can attach (root, and a CPython with
debug info, as scripts/build-freethreaded-python.sh builds), two counts per request: attribute
lookups that took the locked fallback of 3.13t's type cache (`find_name_in_mro`), and lock
acquisitions that had to wait (`_PyMutex_LockTimed`).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
from pathlib import Path

from run import HERE, Server, Setup, fresh_rounds, paired_ratio

PROBES = {"fallback": "find_name_in_mro", "waited": "_PyMutex_LockTimed"}
GROUP = "gilworker_bench"


def add_probes(python: Path) -> bool:
    """uprobes on the interpreter's binary; False when perf cannot place them here."""
    binary = os.path.realpath(python)
    for event, function in PROBES.items():
        done = subprocess.run(
            ["perf", "probe", "-q", "-x", binary, "-a", f"{GROUP}:{event}={function}"],
            capture_output=True,
        )
        if done.returncode != 0:
            remove_probes()
            return False
    return True


def remove_probes() -> None:
    subprocess.run(["perf", "probe", "-q", "-d", f"{GROUP}:*"], capture_output=True)


def counts_per_request(server: Server, seconds: int) -> dict[str, float]:
    """Probe hits per request during a wrk load of `seconds` (system-wide: only the server's
    processes run that binary)."""
    events = ",".join(f"{GROUP}:{event}" for event in PROBES)
    url = f"http://127.0.0.1:{server.port}/"
    done = subprocess.run(
        [
            "perf",
            "stat",
            "-x,",
            "-e",
            events,
            "-a",
            "--",
            "wrk",
            "-t1",
            "-c64",
            f"-d{seconds}s",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    found = re.search(r"(\d+) requests in", done.stdout)
    if not found:
        raise RuntimeError(f"wrk gave no result for {url}:\n{done.stdout}{done.stderr}")
    requests = int(found.group(1))
    hits = {}
    for line in done.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith(f"{GROUP}:"):
            hits[fields[2].split(":", 1)[1]] = int(fields[0]) / max(requests, 1)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ft", type=Path, required=True, help="free-threaded venv")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    ft = args.ft / "bin"
    setups = [
        Setup("thread, one app", ft, "gilworker-thread"),
        Setup(
            "thread, app per thread",
            ft,
            "gilworker-thread",
            options=("-c", str(HERE / "app_per_thread_conf.py")),
        ),
        Setup("process", ft, "gilworker-process"),
    ]
    probing = add_probes(ft / "python")
    probed: dict[str, list[dict[str, float]]] = {s.name: [] for s in setups}

    def count(server: Server) -> None:
        if probing:
            probed[server.setup.name].append(counts_per_request(server, 2))

    try:
        results = fresh_rounds(setups, "/", args.rounds, 2, after_round=count)
    finally:
        if probing:
            remove_probes()

    print(
        "| 3.13t, hello, 2 workers, fresh start per round | CPU µs/req | / process | "
        "type-cache fallbacks per req | lock waits per req |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, result in results.items():
        cpu = [r.cpu_per_req_us for r in result.rounds]
        ratio = paired_ratio(result, results["process"], "cpu_per_req_us")
        cells = [f"{statistics.median(cpu):.1f} ({min(cpu):.1f}..{max(cpu):.1f})", f"{ratio:.3f}"]
        for event in PROBES:
            values = [p[event] for p in probed[name]]
            cells.append(f"{min(values):.2f}..{max(values):.2f}" if values else "(no perf probe)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
