"""Side-by-side benchmark of gilworker and the servers it replaces, in one run.

    bash bench/run.sh            # makes/reuses the venvs, then runs this

Every comparison alternates its set-ups round by round (A B A B ...), each round a `wrk` load on
127.0.0.1; per round it records req/s, server CPU time per request (utime + stime of the master
and its children, from /proc) and wrk's p50/p99 latency; the report gives medians with min/max.
Results: bench/results/latest.md (tables), latest.json, chart.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(pid: int) -> list[int]:
    """The master and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in os.listdir(f"/proc/{p}/task") if os.path.exists(f"/proc/{p}") else []:
            try:
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except FileNotFoundError:
                pass
    return pids


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (this process, all threads)
        except FileNotFoundError:
            pass
    return total / TICK


def pss_mb(pid: int) -> float:
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
        except FileNotFoundError:
            pass
    return total / 1024


@dataclass
class Setup:
    name: str
    python: Path  # the venv's bin directory
    kind: str  # gilworker-thread, gilworker-process, uvicorn-worker, asgi, uvicorn, granian
    workers: int = 2

    def argv(self, port: int) -> list[str]:
        bind = f"127.0.0.1:{port}"
        w = str(self.workers)
        common = [
            "-w",
            w,
            "-b",
            bind,
            "--chdir",
            str(HERE),
            "--no-control-socket",
            "--log-level",
            "warning",
        ]
        gunicorn = [str(self.python / "gunicorn")]
        if self.kind.startswith("gilworker"):
            mode = self.kind.split("-")[1]
            return [*gunicorn, "-k", "gilworker", "--gil-mode", mode, *common, "app:app"]
        if self.kind == "uvicorn-worker":
            return [*gunicorn, "-k", "uvicorn_worker.UvicornWorker", *common, "app:app"]
        if self.kind == "asgi":
            return [*gunicorn, "-k", "asgi", *common, "app:app"]
        if self.kind == "uvicorn":
            return [
                str(self.python / "uvicorn"),
                "--app-dir",
                str(HERE),
                "--workers",
                w,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
                "app:app",
            ]
        if self.kind == "granian":
            return [
                str(self.python / "granian"),
                "--interface",
                "asgi",
                "--workers",
                w,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--working-dir",
                str(HERE),
                "app:app",
            ]
        raise ValueError(self.kind)


@dataclass
class Server:
    setup: Setup
    port: int = 0
    proc: subprocess.Popen | None = None
    start_seconds: float = 0.0

    def start(self) -> Server:
        self.port = free_port()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.setup.argv(self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).read()
                self.start_seconds = time.perf_counter() - t0
                return self
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"{self.setup.name} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Round:
    rps: float
    cpu_per_req_us: float
    p50_ms: float
    p99_ms: float


@dataclass
class Result:
    label: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    def spread(self, attr: str) -> str:
        values = [getattr(r, attr) for r in self.rounds]
        return f"{min(values):.4g}..{max(values):.4g}"


def to_ms(wrk_output: str, percentile: str) -> float:
    found = re.search(rf"{percentile}%\s+([\d.]+)(us|ms|s)\b", wrk_output)
    if not found:
        return float("nan")
    return float(found.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[found.group(2)]


def load(server: Server, path: str, seconds: float, connections: int) -> Round:
    url = f"http://127.0.0.1:{server.port}{path}"
    cpu0 = cpu_seconds(server.proc.pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu = cpu_seconds(server.proc.pid) - cpu0
    done = re.search(r"(\d+) requests in", out)
    if not done:
        raise RuntimeError(f"wrk gave no result for {url}:\n{out}")
    requests = int(done.group(1))
    return Round(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        cpu_per_req_us=cpu / max(requests, 1) * 1e6,
        p50_ms=to_ms(out, "50"),
        p99_ms=to_ms(out, "99"),
    )


def compare(
    setups: list[Setup], path: str, rounds: int, seconds: float, connections: int = 64
) -> dict[str, Result]:
    servers: list[Server] = []
    try:
        for setup in setups:
            servers.append(Server(setup))
            servers[-1].start()
        for server in servers:  # warm-up
            load(server, path, 1, connections)
        results = {s.setup.name: Result(s.setup.name) for s in servers}
        for _ in range(rounds):
            for server in servers:  # A B A B: noise hits every set-up alike
                results[server.setup.name].rounds.append(load(server, path, seconds, connections))
        return results
    finally:
        for server in servers:
            server.stop()


def measure_memory(setup: Setup) -> float:
    server = Server(setup).start()
    try:
        load(server, "/", 1, 16)
        time.sleep(0.5)
        return pss_mb(server.proc.pid)
    finally:
        server.stop()


def measure_cold_start(setup: Setup, times: int) -> float:
    """Seconds from exec to the first 200 with every worker up (8 workers: ask until each
    responding worker has been seen is not possible from outside, so: the first 200)."""
    values = []
    for _ in range(times):
        server = Server(setup).start()
        values.append(server.start_seconds)
        server.stop()
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ft", type=Path, required=True, help="free-threaded venv")
    parser.add_argument("--gil", type=Path, required=True, help="GIL-build venv")
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is needed: apt-get install wrk")
    ft, gil = args.ft / "bin", args.gil / "bin"
    n, s = args.rounds, args.seconds
    report: dict[str, object] = {"machine": machine(ft, gil)}
    started = time.monotonic()

    thread = Setup("gilworker thread (3.13t)", ft, "gilworker-thread")
    process = Setup("gilworker process (3.13t)", ft, "gilworker-process")
    everyone = [
        thread,
        process,
        Setup("gilworker process (3.11)", gil, "gilworker-process"),
        Setup("uvicorn-worker (3.11)", gil, "uvicorn-worker"),
        Setup("gunicorn -k asgi (3.11)", gil, "asgi"),
        Setup("uvicorn --workers (3.11)", gil, "uvicorn"),
        Setup("granian (3.13t)", ft, "granian"),
        Setup("granian (3.11)", gil, "granian"),
    ]
    print("hello, 2 workers, every set-up", flush=True)
    report["hello"] = compare(everyone, "/", n, s)
    workloads = {}
    for path in ("/json", "/cpu", "/io", "/stream"):
        print(f"{path}, 2 workers, thread vs process", flush=True)
        workloads[path] = compare([thread, process], path, max(2, n - 1), s)
    report["workloads"] = workloads
    counts = {}
    for w in (1, 8):
        print(f"hello, {w} workers, thread vs process", flush=True)
        counts[w] = compare(
            [
                Setup(f"thread x{w}", ft, "gilworker-thread", w),
                Setup(f"process x{w}", ft, "gilworker-process", w),
            ],
            "/",
            max(2, n - 1),
            s,
        )
    report["counts"] = counts
    print("/cpu scaling, 1 vs 2 worker threads", flush=True)
    report["cpu_scaling"] = compare(
        [
            Setup("cpu thread x1", ft, "gilworker-thread", 1),
            Setup("cpu thread x2", ft, "gilworker-thread", 2),
        ],
        "/cpu",
        n,
        s,
    )
    print("memory and cold start", flush=True)
    report["memory"] = {
        f"{kind} x{w}": measure_memory(Setup(kind, ft, f"gilworker-{kind}", w))
        for kind in ("thread", "process")
        for w in (1, 2, 8, 16)
    }
    report["cold_start"] = {
        kind: measure_cold_start(Setup(kind, ft, f"gilworker-{kind}", 8), 3)
        for kind in ("thread", "process")
    }
    report["respawn_ms"] = respawn_ms(ft)
    report["elapsed_s"] = time.monotonic() - started
    write(report)


def respawn_ms(ft: Path) -> dict[str, str]:
    lines = {}
    for mode in ("thread", "process"):
        out = subprocess.run(
            [
                str(ft / "python"),
                str(HERE / "supervision.py"),
                "--mode",
                mode,
                "--reloads",
                "0",
                "--respawns",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        lines[mode] = out.splitlines()[0] if out else "failed"
    return lines


def machine(ft: Path, gil: Path) -> str:
    def version(python: Path, module: str) -> str:
        return subprocess.run(
            [
                str(python / "python"),
                "-c",
                f"import importlib.metadata as m; print(m.version('{module}'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()

    return (
        f"{os.cpu_count()} cores; 3.13t: gunicorn {version(ft, 'gunicorn')}, uvicorn "
        f"{version(ft, 'uvicorn')}, granian {version(ft, 'granian')}; 3.11: granian "
        f"{version(gil, 'granian')}; wrk -t1 -c64"
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def write(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    hello: dict[str, Result] = report["hello"]
    lines = [f"Machine: {report['machine']}. Medians of alternating rounds (min..max).", ""]
    lines += [
        "| set-up (hello, 2 workers) | req/s | CPU µs/req | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in hello.values():
        lines.append(
            f"| {r.label} | {r.median('rps'):.0f} ({r.spread('rps')}) | "
            f"{r.median('cpu_per_req_us'):.1f} ({r.spread('cpu_per_req_us')}) | "
            f"{r.median('p50_ms'):.2f} | {r.median('p99_ms'):.2f} |"
        )
    lines += [
        "",
        "| workload, 2 workers (3.13t) | thread req/s | process req/s | "
        "thread/process CPU per req |",
        "| --- | --- | --- | --- |",
    ]
    for path, res in report["workloads"].items():
        t, p = res["gilworker thread (3.13t)"], res["gilworker process (3.13t)"]
        lines.append(
            f"| {path} | {t.median('rps'):.0f} | {p.median('rps'):.0f} | "
            f"{ratio(t.median('cpu_per_req_us'), p.median('cpu_per_req_us'))} |"
        )
    for w, res in report["counts"].items():
        t, p = res[f"thread x{w}"], res[f"process x{w}"]
        lines.append(
            f"| / with {w} worker(s) | {t.median('rps'):.0f} | {p.median('rps'):.0f} | "
            f"{ratio(t.median('cpu_per_req_us'), p.median('cpu_per_req_us'))} |"
        )
    mem = report["memory"]
    lines += [
        "",
        "| PSS MB (3.13t, bench app) | 1 | 2 | 8 | 16 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in ("thread", "process"):
        lines.append(
            f"| {kind} | " + " | ".join(f"{mem[f'{kind} x{w}']:.1f}" for w in (1, 2, 8, 16)) + " |"
        )
    t, p = hello["gilworker thread (3.13t)"], hello["gilworker process (3.13t)"]
    g, u = hello["gilworker process (3.11)"], hello["uvicorn-worker (3.11)"]
    a, gr = hello["gunicorn -k asgi (3.11)"], hello["granian (3.13t)"]
    cs = report["cpu_scaling"]
    targets = [
        (
            "thread / process CPU per request, hello, 2 workers",
            "≤ 1.00",
            ratio(t.median("cpu_per_req_us"), p.median("cpu_per_req_us")),
        ),
        (
            "thread / process req/s, hello, 2 workers",
            "≥ 1.00",
            ratio(t.median("rps"), p.median("rps")),
        ),
        (
            "process (3.11) / uvicorn-worker CPU per request",
            "≤ 1.03",
            ratio(g.median("cpu_per_req_us"), u.median("cpu_per_req_us")),
        ),
        (
            "process (3.11) / gunicorn -k asgi CPU per request",
            "≤ 0.75",
            ratio(g.median("cpu_per_req_us"), a.median("cpu_per_req_us")),
        ),
        (
            "thread / granian CPU per request (3.13t)",
            "≤ 1.25",
            ratio(t.median("cpu_per_req_us"), gr.median("cpu_per_req_us")),
        ),
        ("PSS thread / process, 8 workers", "≤ 0.25", ratio(mem["thread x8"], mem["process x8"])),
        (
            "MB per extra thread worker (8 → 16)",
            "≤ 1.0",
            f"{(mem['thread x16'] - mem['thread x8']) / 8:.2f}",
        ),
        (
            "/cpu req/s, 2 worker threads / 1",
            "≥ 1.9",
            ratio(cs["cpu thread x2"].median("rps"), cs["cpu thread x1"].median("rps")),
        ),
        (
            "cold start to first 200, 8 workers, thread / process",
            "≤ 0.5",
            ratio(report["cold_start"]["thread"], report["cold_start"]["process"]),
        ),
        (
            "p99 latency at 64 connections, thread / process",
            "≤ 1.0",
            ratio(t.median("p99_ms"), p.median("p99_ms")),
        ),
    ]
    lines += ["", "| target | goal | measured |", "| --- | --- | --- |"]
    lines += [f"| {name} | {goal} | {value} |" for name, goal, value in targets]
    lines += [
        "",
        "Respawn to serving: " + "; ".join(report["respawn_ms"].values()),
        f"Cold start to first 200, 8 workers: thread {report['cold_start']['thread']:.2f} s,"
        f" process {report['cold_start']['process']:.2f} s. "
        f"Whole run: {report['elapsed_s']:.0f} s.",
    ]
    (RESULTS / "latest.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "latest.json").write_text(json.dumps(report, default=lambda o: o.__dict__, indent=1))
    chart(hello, RESULTS / "chart.png")
    print("\n".join(lines))


def chart(hello: dict[str, Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(hello)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, attr, title in (
        (left, "rps", "req/s (higher is better)"),
        (right, "cpu_per_req_us", "CPU µs per request (lower is better)"),
    ):
        medians = [hello[k].median(attr) for k in labels]
        lows = [
            m - min(getattr(r, attr) for r in hello[k].rounds)
            for k, m in zip(labels, medians, strict=False)
        ]
        highs = [
            max(getattr(r, attr) for r in hello[k].rounds) - m
            for k, m in zip(labels, medians, strict=False)
        ]
        axis.barh(labels, medians, xerr=[lows, highs], color="#4a7ab5")
        axis.set_title(title)
        axis.invert_yaxis()
    right.set_yticklabels([])
    fig.suptitle("hello route, Starlette, 2 workers, wrk -t1 -c64 on 127.0.0.1")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
