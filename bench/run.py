"""Side-by-side benchmark of gilworker and the servers it replaces, in one run.

    bash bench/run.sh                       # makes/reuses the venvs, then runs every section
    bash bench/run.sh --only pairs,memory   # some sections (SECTIONS below; --help lists them)

Every comparison alternates its set-ups round by round (A B A B ...), each round a `wrk` load on
127.0.0.1; per round it records req/s, server CPU time per request (utime + stime of the master
and its children, from /proc) and wrk's p50/p99 latency; the report gives medians with min/max.
Results: bench/results/latest.md (tables), latest.json, chart.png; a run of some sections writes
partial.md, partial.json (and partial-chart.png) instead, so that it leaves the full run's alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import replacements

HERE = Path(__file__).parent
REPLACEMENT_SECONDS = 5  # of wrk per replacement kind and set-up (bench/replacements.py)
REALISTIC = "realistic_app:app"  # FastAPI, 12 resources x 5 routes: memory and cold start
ACCESS = ("--access-logfile", "/dev/null")  # an access log in gunicorn's default format
# A statsd server that never reads: the kernel drops what overflows, the sender sees no error
STATSD_SINK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
STATSD_SINK.bind(("127.0.0.1", 0))
STATSD = ("--statsd-host", f"127.0.0.1:{STATSD_SINK.getsockname()[1]}")
LOCK_WAITS = ("-c", str(HERE / "lock_waits_conf.py"))
METRICS = (
    "--metrics-bind",
    "127.0.0.1:0",
)  # any free port: nothing scrapes it during a pair  # counts waits on the access log's lock
# h2c by prior knowledge from 127.0.0.1 (HTTP/1.1 too: the start-up probe speaks it)
H2C = ("--http-protocols", "h2,h1", "--http2-cleartext", "both")
H2C += ("--forwarded-allow-ips", "127.0.0.1")
H2C_LOG = (*H2C, *ACCESS)
H2LOAD = ("-c", "8", "-m", "16")
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
    """User and system CPU seconds of the master and its descendants (all their threads)."""
    ticks = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        except FileNotFoundError:
            pass
    return ticks / TICK


def pss_mb(pid: int) -> float:
    total = 0
    for p in family(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
        except (FileNotFoundError, ProcessLookupError):  # gone, or a zombie: it holds nothing
            pass
    return total / 1024


@dataclass
class Setup:
    name: str
    python: Path  # the venv's bin directory
    kind: str  # gilworker-thread, gilworker-process, uvicorn-worker, asgi, uvicorn, granian
    workers: int = 2
    app: str = "app:app"  # the Starlette bench app; REALISTIC for memory and cold start
    log_level: str = "warning"  # "info" shows when each worker serves (cold start)
    options: tuple[str, ...] = ()  # more gunicorn options (gunicorn-based set-ups)
    h2: bool = False  # loaded over HTTP/2 (h2c, prior knowledge) by h2load, not wrk

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
            self.log_level,
        ]
        gunicorn = [str(self.python / "gunicorn")]
        if self.kind.startswith("gilworker"):
            mode = self.kind.split("-")[1]
            gilworker = ["-k", "gilworker", "--gil-mode", mode]
            return [*gunicorn, *gilworker, *common, *self.options, self.app]
        if self.kind == "uvicorn-worker":
            worker = ["-k", "uvicorn_worker.UvicornWorker"]
            return [*gunicorn, *worker, *common, *self.options, self.app]
        if self.kind == "asgi":
            return [*gunicorn, "-k", "asgi", *common, *self.options, self.app]
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
                self.app,
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
                self.app,
            ]
        raise ValueError(self.kind)


# What each worker logs once it serves (INFO): gilworker's line, or uvicorn's (uvicorn-worker)
SERVING = re.compile(r"Worker (?:thread|process) \d+ serving|Application startup complete")


@dataclass
class Server:
    setup: Setup
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Any = None
    first_200_seconds: float = 0.0  # from exec to the first 200
    all_serving_seconds: float = 0.0  # from exec to every worker serving (needs log_level info)

    def start(self, all_serving: bool = False) -> Server:
        self.port = free_port()
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            self.setup.argv(self.port),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.first_200_seconds:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1).read()
                    self.first_200_seconds = time.perf_counter() - t0
                except OSError:
                    pass
            if all_serving and not self.all_serving_seconds:
                self.log.seek(0)
                if len(SERVING.findall(self.log.read())) >= self.setup.workers:
                    self.all_serving_seconds = time.perf_counter() - t0
            if self.first_200_seconds and (self.all_serving_seconds or not all_serving):
                return self
            time.sleep(0.005)
        raise RuntimeError(f"{self.setup.name} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.log:
            self.log.close()


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


def run_wrk(port: int, path: str, seconds: float, connections: int) -> tuple[int, str]:
    """Requests done and wrk's report. `path` may name a wrk script after a space:
    "/users bench/post_user.lua" POSTs."""
    path, _, script = path.partition(" ")
    url = f"http://127.0.0.1:{port}{path}"
    scripted = ["-s", str(HERE / script)] if script else []
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *scripted, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    if not done:
        raise RuntimeError(f"wrk gave no result for {url}:\n{out}")
    return int(done.group(1)), out


def run_h2load(port: int, path: str, seconds: float) -> tuple[int, str]:
    """Requests done and h2load's report: 8 connections of 16 concurrent streams each."""
    url = f"http://127.0.0.1:{port}{path}"
    out = subprocess.run(
        ["h2load", *H2LOAD, "-D", str(int(seconds)), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done or done.group(1) != done.group(2) or done.group(1) == "0":
        raise RuntimeError(f"h2load gave no clean result for {url}:\n{out}")
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    assert rps is not None
    return int(done.group(1)), f"Requests/sec: {rps.group(1)}\n"  # as wrk says it


def load(server: Server, path: str, seconds: float, connections: int) -> Round:
    cpu0 = cpu_seconds(server.proc.pid)
    if server.setup.h2:
        requests, out = run_h2load(server.port, path, seconds)
    else:
        requests, out = run_wrk(server.port, path, seconds, connections)
    cpu = cpu_seconds(server.proc.pid) - cpu0
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


def paired_ratio(a: Result, b: Result, attr: str) -> float:
    """Median over rounds of a/b, each round's a and b measured one after the other: a slow
    drift of the machine's speed cancels out of each round's ratio."""
    return statistics.median(
        getattr(x, attr) / getattr(y, attr) for x, y in zip(a.rounds, b.rounds, strict=True)
    )


def fresh_rounds(
    setups: list[Setup],
    path: str,
    rounds: int,
    seconds: float,
    connections: int = 64,
) -> dict[str, Result]:
    """Like `compare`, but every round starts each server anew (A B, then B A, ...). On 3.13t a
    thread-mode server's cost per request differs from one start to the next by up to ~15%
    (which hot attribute lookups collide in the interpreter's type cache, how connections split
    between the loops): one start per set-up would report one draw, not the typical server."""
    results = {s.name: Result(s.name) for s in setups}
    for i in range(rounds):
        for setup in setups if i % 2 == 0 else setups[::-1]:
            server = Server(setup).start()
            try:
                load(server, path, 1, connections)  # warm-up
                results[setup.name].rounds.append(load(server, path, seconds, connections))
            finally:
                server.stop()
    return results


def pair(
    a: Setup, b: Setup, path: str, rounds: int, seconds: float, fresh: bool = False
) -> dict[str, float]:
    """A and B alone, alternating: CPU per request, req/s and p99 ratios (A / B)."""
    results = (fresh_rounds if fresh else compare)([a, b], path, rounds, seconds)
    ra, rb = results[a.name], results[b.name]
    return {attr: paired_ratio(ra, rb, attr) for attr in ("cpu_per_req_us", "rps", "p99_ms")}


LOCK_WAIT_PATHS = {  # the access line's path -> what puts a worker on it
    "Logger.access": ("--logger-class", "lock_waits_conf.PlainLogger"),
    "gilworker's writer": (),
}


def lock_waits(ft: Path, extra: tuple[str, ...], seconds: float) -> dict[str, float]:
    """Waits on the access log handler's lock under a hello load, 4 threads of the master
    sharing one log (bench/lock_waits_conf.py counts them; the master logs them at exit)."""
    options = (*ACCESS, *LOCK_WAITS, *extra)
    server = Server(Setup("lock waits", ft, "gilworker-thread", 4, options=options)).start()
    try:
        result = load(server, "/", seconds, 64)
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(30)
        server.log.seek(0)
        said = re.search(
            r"lock waits: (\d+) of (\d+) acquisitions waited, ([\d.]+) ms", server.log.read()
        )
    finally:
        server.stop()
    if said is None:
        raise RuntimeError("the master did not log its lock waits")
    waits, acquired, ms = int(said.group(1)), int(said.group(2)), float(said.group(3))
    return {"waits": waits, "acquired": acquired, "ms": ms, "rps": result.rps}


def measure_memory(setup: Setup, path: str) -> float:
    """PSS of the whole server (master and children) after a second of load on `path`."""
    server = Server(setup).start()
    try:
        load(server, path, 1, 32)
        time.sleep(0.5)
        return pss_mb(server.proc.pid)
    finally:
        server.stop()


def measure_cold_start(setup: Setup, times: int) -> dict[str, float]:
    """Median seconds from exec to the first 200, and to every worker serving."""
    first, every = [], []
    for _ in range(times):
        server = Server(setup).start(all_serving=True)
        first.append(server.first_200_seconds)
        every.append(server.all_serving_seconds)
        server.stop()
    return {"first_200": statistics.median(first), "all_serving": statistics.median(every)}


SECTIONS = {  # --only's names; a full run runs them all, in this order
    "hello": "hello route, 2 workers, every server side by side (the chart)",
    "pairs": "hello-route A/B pairs with targets: thread/process, vs uvicorn-worker, asgi, granian",
    "access_log": "CPU per request with and without the access log (3.11)",
    "contract_cost": "the per-request contract's own µs per request, in-process (3.11)",
    "lock_waits": "waits on the access log's lock, 4 worker threads, Logger.access vs gilworker's",
    "metrics": "--metrics-bind on/off (3.11 process, 3.13t thread), a scrape after 1,000 recycles",
    "http2": "HTTP/2 (h2load -c 8 -m 16): gilworker / -k asgi (3.11), thread / process (3.13t)",
    "workloads": "/json /cpu /io /stream with 2 workers, / with 1: thread vs process (3.13t)",
    "users": "default install vs [fast], FastAPI GET and POST, 8 workers (3.13t)",
    "cpu_scaling": "/cpu req/s with 2 worker threads against 1",
    "memory": "PSS of the whole server, 1 to 16 workers, FastAPI and Starlette apps",
    "cold_start": "exec to first 200 and to all 8 workers serving, FastAPI app",
    "respawn": "a crashed worker's respawn to serving (bench/supervision.py)",
    "replacements": "requests lost while workers are replaced (bench/replacements.py)",
}


def sections(names: str) -> list[str]:
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)}; not {names!r}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sections:\n" + "\n".join(f"  {k:13} {v}" for k, v in SECTIONS.items()),
    )
    parser.add_argument("--ft", type=Path, required=True, help="free-threaded venv")
    parser.add_argument("--gil", type=Path, required=True, help="GIL-build venv")
    parser.add_argument(
        "--ft-default",
        type=Path,
        required=True,
        help="free-threaded venv of the default install (`pip install gunicorn-gilworker`: "
        "h11 + asyncio on 3.13t)",
    )
    parser.add_argument(
        "--seconds", type=float, default=3, help="seconds per round (the A/B pairs' rounds are 2 s)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the hello comparison (every set-up)"
    )
    parser.add_argument(
        "--pair-rounds", type=int, default=6, help="rounds of each target's A/B pair (2 s each)"
    )
    parser.add_argument(
        "--other-rounds", type=int, default=3, help="rounds of the thread-vs-process comparisons"
    )
    parser.add_argument(
        "--only",
        type=sections,
        default=list(SECTIONS),
        metavar="SECTION[,SECTION]",
        help="run these sections only (listed below); results go to bench/results/partial.*",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is needed: apt-get install wrk")
    ft, gil = args.ft / "bin", args.gil / "bin"
    n, m, s, k = args.rounds, args.other_rounds, args.seconds, args.pair_rounds
    report: dict[str, object] = {"machine": machine(ft, gil)}
    started = time.monotonic()

    thread = Setup("gilworker thread (3.13t)", ft, "gilworker-thread")
    process = Setup("gilworker process (3.13t)", ft, "gilworker-process")
    process_gil = Setup("gilworker process (3.11)", gil, "gilworker-process")
    uvicorn_worker = Setup("uvicorn-worker (3.11)", gil, "uvicorn-worker")
    asgi = Setup("gunicorn -k asgi (3.11)", gil, "asgi")
    granian = Setup("granian (3.13t)", ft, "granian")
    if "hello" in args.only:
        print("hello, 2 workers, every set-up", flush=True)
        everyone = [
            *(thread, process, process_gil, uvicorn_worker, asgi),
            Setup("uvicorn --workers (3.11)", gil, "uvicorn"),
            Setup("uvicorn --workers (3.13t)", ft, "uvicorn"),
            granian,
            Setup("granian (3.11)", gil, "granian"),
        ]
        report["hello"] = compare(everyone, "/", n, s)
    if "pairs" in args.only:
        print("target pairs, hello, 2 workers, A B A B", flush=True)
        # one worker process of two event-loop threads: `thread`'s loops, out of the master
        hosted = Setup("-w 1 --threads 2", ft, "gilworker-thread", 1, options=("--threads", "2"))
        report["pairs"] = {
            "thread/process": pair(thread, process, "/", k, 2, fresh=True),
            "process 3.11/uvicorn-worker": pair(process_gil, uvicorn_worker, "/", k, 2),
            "process 3.11/-k asgi": pair(process_gil, asgi, "/", k, 2),
            "thread/granian": pair(thread, granian, "/", k, 2, fresh=True),
            # Two thread-mode set-ups: one round's ratio ranges 0.77-1.28 (16 fresh rounds), so a
            # 2% target needs three times the rounds of the others to be read at all.
            "processes of threads/threads in master": pair(
                hosted, thread, "/", 3 * k, 2, fresh=True
            ),
            "process 3.11/uvicorn-worker, access log": pair(
                Setup("gilworker process, log", gil, "gilworker-process", options=ACCESS),
                Setup("uvicorn-worker, log", gil, "uvicorn-worker", options=ACCESS),
                "/",
                k,
                2,
                fresh=True,
            ),
            "process 3.11 log+statsd/uvicorn-worker log": pair(
                Setup(
                    "gilworker process, log+statsd",
                    gil,
                    "gilworker-process",
                    options=(*ACCESS, *STATSD),
                ),
                Setup("uvicorn-worker, log", gil, "uvicorn-worker", options=ACCESS),
                "/",
                k,
                2,
                fresh=True,
            ),
            # three times the rounds too: its 6-round medians ranged 1.03-1.14 in one session,
            # and 14-round ones 1.03 twice
            "thread/process, access log": pair(
                Setup("thread, log", ft, "gilworker-thread", options=ACCESS),
                Setup("process, log", ft, "gilworker-process", options=ACCESS),
                "/",
                3 * k,
                2,
                fresh=True,
            ),
        }
    if "access_log" in args.only:
        print("the access log's cost per request, 3.11, 2 workers", flush=True)
        report["access_log"] = compare(
            [
                Setup("gilworker process, no access log", gil, "gilworker-process"),
                Setup("gilworker process, access log", gil, "gilworker-process", options=ACCESS),
                Setup("uvicorn-worker, no access log", gil, "uvicorn-worker"),
                Setup("uvicorn-worker, access log", gil, "uvicorn-worker", options=ACCESS),
                Setup("gunicorn -k asgi, no access log", gil, "asgi"),
                Setup("gunicorn -k asgi, access log", gil, "asgi", options=ACCESS),
            ],
            "/",
            m,
            s,
        )
    if "contract_cost" in args.only:
        print("the per-request contract's own cost (3.11, bench/contract_cost.py)", flush=True)
        out = subprocess.run(
            [str(gil / "python"), str(HERE / "contract_cost.py")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        report["contract_cost"] = json.loads(out)
    if "lock_waits" in args.only:
        print("waits on the access log's lock, 4 worker threads (3.13t)", flush=True)
        report["lock_waits"] = {
            path: lock_waits(ft, extra, s) for path, extra in LOCK_WAIT_PATHS.items()
        }
    if "metrics" in args.only:
        print("--metrics-bind on / off, access log on for both, hello, 2 workers", flush=True)
        report["metrics_pairs"] = {
            # three times the rounds: 6-round medians ranged 1.02-1.10 over four runs, for a
            # difference of 0.3 µs a request in process (bench/contract_cost.py)
            "process 3.11, metrics on/off": pair(
                Setup("process, metrics", gil, "gilworker-process", options=(*ACCESS, *METRICS)),
                Setup("process, no metrics", gil, "gilworker-process", options=ACCESS),
                "/",
                3 * k,
                2,
                fresh=True,
            ),
            # thread-mode pairs on 3.13t need three times the rounds to be read (see "pairs")
            "thread 3.13t, metrics on/off": pair(
                Setup("thread, metrics", ft, "gilworker-thread", options=(*ACCESS, *METRICS)),
                Setup("thread, no metrics", ft, "gilworker-thread", options=ACCESS),
                "/",
                3 * k,
                2,
                fresh=True,
            ),
        }
        print("a scrape of 8 workers after 1,000 recycles (bench/metrics_scrape.py)", flush=True)
        out = subprocess.run(
            [str(gil / "python"), str(HERE / "metrics_scrape.py"), str(gil), "1000"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        report["metrics_scrape"] = json.loads(out)
    if "http2" in args.only:
        print("HTTP/2, h2load -c 8 -m 16, hello, 2 workers", flush=True)
        report["http2_pairs"] = {
            "process 3.11/-k asgi, HTTP/2": pair(
                Setup("process, h2", gil, "gilworker-process", options=H2C, h2=True),
                Setup("-k asgi, h2", gil, "asgi", options=H2C, h2=True),
                "/",
                k,
                2,
                fresh=True,
            ),
            "process 3.11/-k asgi, HTTP/2, access log": pair(
                Setup("process, h2, log", gil, "gilworker-process", options=H2C_LOG, h2=True),
                Setup("-k asgi, h2, log", gil, "asgi", options=H2C_LOG, h2=True),
                "/",
                k,
                2,
                fresh=True,
            ),
            # thread-mode pairs on 3.13t need three times the rounds to be read (see "pairs")
            "thread/process 3.13t, HTTP/2": pair(
                Setup("thread, h2", ft, "gilworker-thread", options=H2C, h2=True),
                Setup("process, h2", ft, "gilworker-process", options=H2C, h2=True),
                "/",
                3 * k,
                2,
                fresh=True,
            ),
        }
    if "workloads" in args.only:
        workloads = {}
        for path in ("/json", "/cpu", "/io", "/stream"):
            print(f"{path}, 2 workers, thread vs process", flush=True)
            workloads[path] = compare([thread, process], path, m, s)
        report["workloads"] = workloads
        print("hello, 1 worker, thread vs process", flush=True)
        one = [Setup(f"{kind} x1", ft, f"gilworker-{kind}", 1) for kind in ("thread", "process")]
        report["counts"] = {1: compare(one, "/", m, s)}
    if "users" in args.only:
        print("what users run (3.13t): default install, FastAPI, 8 workers on 2 CPUs", flush=True)
        report["users"] = users_run(ft, args.ft_default / "bin", k)
    if "cpu_scaling" in args.only:
        print("/cpu scaling, 1 vs 2 worker threads", flush=True)
        report["cpu_scaling"] = compare(
            [
                Setup("cpu thread x1", ft, "gilworker-thread", 1),
                Setup("cpu thread x2", ft, "gilworker-thread", 2),
            ],
            "/cpu",
            k,
            2,
        )
    if "memory" in args.only:
        print("memory (FastAPI app of realistic size, and the Starlette app)", flush=True)
        report["memory"] = {
            f"{kind} x{w}": measure_memory(
                Setup(kind, ft, f"gilworker-{kind}", w, app=REALISTIC), "/users?limit=5"
            )
            for kind in ("thread", "process")
            for w in (1, 2, 8, 16)
        }
        report["memory"]["processes of threads 2x4"] = measure_memory(
            Setup("2x4", ft, "gilworker-thread", 2, app=REALISTIC, options=("--threads", "4")),
            "/users?limit=5",
        )
        report["memory_small_app"] = {
            f"{kind} x{w}": measure_memory(Setup(kind, ft, f"gilworker-{kind}", w), "/")
            for kind in ("thread", "process")
            for w in (8, 16)
        }
    if "cold_start" in args.only:
        print("cold start, 8 workers (FastAPI app of realistic size)", flush=True)
        report["cold_start"] = {
            kind: measure_cold_start(
                Setup(kind, ft, f"gilworker-{kind}", 8, app=REALISTIC, log_level="info"), 3
            )
            for kind in ("thread", "process")
        }
    if "respawn" in args.only:
        print("respawn to serving after a crash (3.13t)", flush=True)
        report["respawn_ms"] = respawn_ms(ft)
    if "replacements" in args.only:
        print("replacing workers under keep-alive load (3.13t)", flush=True)
        report["replacements"] = [
            replacements.run(ft, name, kind, REPLACEMENT_SECONDS)
            for kind in replacements.KINDS
            for name in replacements.SETUPS
        ]
    report["elapsed_s"] = time.monotonic() - started
    write(report, full=set(args.only) == set(SECTIONS))


# name -> (A, B, path): thread mode's cost where users run it, each pair started anew
# every round (fresh_rounds): on 3.13t one start of a thread-mode server differs from the next.
def users_run(ft: Path, ft_default: Path, rounds: int) -> dict[str, dict[str, float]]:
    def gilworker(venv: Path, mode: str, workers: int = 2, app: str = "app:app") -> Setup:
        return Setup(
            f"{mode} {venv.parent.name} x{workers} {app}",
            venv,
            f"gilworker-{mode}",
            workers,
            app=app,
        )

    users = "/users?limit=5"  # a GET with a query model and a dependency
    post = "/users post_user.lua"  # a POST of a nested JSON body with a header dependency
    pairs = {
        "thread/process, default install": (
            gilworker(ft_default, "thread"),
            gilworker(ft_default, "process"),
            "/",
        ),
        "default install/[fast], thread": (
            gilworker(ft_default, "thread"),
            gilworker(ft, "thread"),
            "/",
        ),
        "default install/[fast], process": (
            gilworker(ft_default, "process"),
            gilworker(ft, "process"),
            "/",
        ),
        "thread/process, FastAPI GET": (
            gilworker(ft, "thread", app=REALISTIC),
            gilworker(ft, "process", app=REALISTIC),
            users,
        ),
        "thread/process, FastAPI POST": (
            gilworker(ft, "thread", app=REALISTIC),
            gilworker(ft, "process", app=REALISTIC),
            post,
        ),
        "thread/process, 8 workers": (gilworker(ft, "thread", 8), gilworker(ft, "process", 8), "/"),
        "8 loops/2 loops, thread": (gilworker(ft, "thread", 8), gilworker(ft, "thread"), "/"),
    }
    # The FastAPI pairs: one round's ratio ranges 0.82-1.66 (16 fresh rounds), twice the rounds.
    more = {"thread/process, FastAPI GET", "thread/process, FastAPI POST"}
    return {
        name: pair(a, b, path, 2 * rounds if name in more else rounds, 2, fresh=True)
        for name, (a, b, path) in pairs.items()
    }


RESPAWNS = {  # what crashes, and how: the thread of a loop, or a whole worker process
    "thread": ("--mode", "thread"),
    "process": ("--mode", "process"),
    "process of threads, segfault": ("--mode", "thread", "--threads", "2", "--crash", "segfault"),
}


def respawn_ms(ft: Path) -> dict[str, str]:
    lines = {}
    for name, args in RESPAWNS.items():
        out = subprocess.run(
            [
                str(ft / "python"),
                str(HERE / "supervision.py"),
                *args,
                "--reloads",
                "0",
                "--respawns",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        lines[name] = out.splitlines()[0] if out else "failed"
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


def cpu(result: Result) -> float:
    return result.median("cpu_per_req_us")


Row = Callable[[dict], str]  # a comparison's figure, read from the report


def paired(name: str, attr: str = "cpu_per_req_us") -> Row:
    return lambda r: f"{r['pairs'][name][attr]:.2f}"


def users_pair(name: str) -> Row:
    return lambda r: f"{r['users'][name]['cpu_per_req_us']:.2f}"


def hello_cpu(a: str, b: str) -> Row:
    return lambda r: ratio(cpu(r["hello"][a]), cpu(r["hello"][b]))


def pss(a: str, b: str, section: str = "memory") -> Row:
    return lambda r: ratio(r[section][a], r[section][b])


def mb_per_thread(section: str) -> Row:
    return lambda r: f"{(r[section]['thread x16'] - r[section]['thread x8']) / 8:.2f}"


def ratio_of(pair: dict[str, float]) -> str:
    return f"{pair['cpu_per_req_us']:.2f}"


def scrape_ms(r: dict) -> str:
    m = r["metrics_scrape"]
    return (
        f"{m['scrape_ms_median']:.1f} (max {m['scrape_ms_max']:.1f}; {m['recycles']:.0f} "
        f"recycles, {m['files']} files; app counter {m['app_counter']:.0f} of "
        f"{m['requests_answered']} requests; /readyz 503 {m['readyz_503_after_sigterm_ms']:.1f} "
        "ms after SIGTERM)"
    )


def access_log_cost(r: dict) -> str:
    access = r["access_log"]
    on, off = "gilworker process, access log", "gilworker process, no access log"
    return f"{cpu(access[on]) - cpu(access[off]):.1f}"


def cold_start(r: dict) -> str:
    return ratio(r["cold_start"]["thread"]["first_200"], r["cold_start"]["process"]["first_200"])


def cpu_scaling(r: dict) -> str:
    two, one = r["cpu_scaling"]["cpu thread x2"], r["cpu_scaling"]["cpu thread x1"]
    return f"{paired_ratio(two, one, 'rps'):.2f}"


# What is compared (A / B, the measure), its target ("" for none) and its figure.
COMPARISONS: list[tuple[str, str, Row]] = [
    ("thread / process CPU per request, hello, 2 workers", "≤ 1.00", paired("thread/process")),
    ("thread / process req/s, hello, 2 workers", "≥ 1.00", paired("thread/process", "rps")),
    (
        "process (3.11) / uvicorn-worker CPU per request",
        "≤ 1.03",
        paired("process 3.11/uvicorn-worker"),
    ),
    (
        "process (3.11) / uvicorn-worker CPU per request, access log on for both",
        "≤ 0.90",
        paired("process 3.11/uvicorn-worker, access log"),
    ),
    (
        "process (3.11), access log and statsd / uvicorn-worker, access log",
        "≤ 0.95",
        paired("process 3.11 log+statsd/uvicorn-worker log"),
    ),
    ("the access log's cost per request, process (3.11), µs", "≤ 40", access_log_cost),
    (
        "thread / process CPU per request, access log on (3.13t)",
        "≤ 1.05",
        paired("thread/process, access log"),
    ),
    ("process (3.11) / gunicorn -k asgi CPU per request", "≤ 0.75", paired("process 3.11/-k asgi")),
    (
        "process (3.11) / gunicorn -k asgi CPU per request, HTTP/2 (h2load -c 8 -m 16)",
        "≤ 0.90",
        lambda r: ratio_of(r["http2_pairs"]["process 3.11/-k asgi, HTTP/2"]),
    ),
    (
        "process (3.11) / gunicorn -k asgi CPU per request, HTTP/2, access log on for both",
        "",
        lambda r: ratio_of(r["http2_pairs"]["process 3.11/-k asgi, HTTP/2, access log"]),
    ),
    (
        "thread / process CPU per request, HTTP/2 (3.13t)",
        "≤ 1.05",
        lambda r: ratio_of(r["http2_pairs"]["thread/process 3.13t, HTTP/2"]),
    ),
    (
        "CPU per request, --metrics-bind on / off, process (3.11), access log on",
        "≤ 1.03",
        lambda r: ratio_of(r["metrics_pairs"]["process 3.11, metrics on/off"]),
    ),
    (
        "CPU per request, --metrics-bind on / off, thread (3.13t), access log on",
        "≤ 1.03",
        lambda r: ratio_of(r["metrics_pairs"]["thread 3.13t, metrics on/off"]),
    ),
    ("one scrape of 8 workers after 1,000 recycles, ms", "< 50", scrape_ms),
    ("thread / granian CPU per request (3.13t)", "≤ 1.25", paired("thread/granian")),
    ("PSS thread / process, 8 workers, FastAPI app", "≤ 0.25", pss("thread x8", "process x8")),
    (
        "PSS -w 2 --threads 4 / -w 8 processes, FastAPI app",
        "≤ 0.50",
        pss("processes of threads 2x4", "process x8"),
    ),
    (
        "CPU per request, -w 1 --threads 2 / threads in the master -w 2",
        "≤ 1.02",
        paired("processes of threads/threads in master"),
    ),
    ("MB per extra thread worker (8 → 16), FastAPI app", "≤ 1.0", mb_per_thread("memory")),
    ("/cpu req/s, 2 worker threads / 1", "≥ 1.9", cpu_scaling),
    ("cold start to first 200, 8 workers, thread / process, FastAPI app", "≤ 0.5", cold_start),
    (
        "thread / process CPU per request, default install (h11 + asyncio)",
        "≤ 1.05",
        users_pair("thread/process, default install"),
    ),
    (
        "thread / process CPU per request, FastAPI GET /users?limit=5",
        "≤ 1.05",
        users_pair("thread/process, FastAPI GET"),
    ),
    (
        "thread / process CPU per request, FastAPI POST /users (JSON body)",
        "≤ 1.05",
        users_pair("thread/process, FastAPI POST"),
    ),
    (
        "thread / process CPU per request, 8 workers on 2 CPUs",
        "≤ 1.10",
        users_pair("thread/process, 8 workers"),
    ),
    (
        "p99 latency at 64 connections, thread / process, hello, 2 workers",
        "≤ 1.0",
        paired("thread/process", "p99_ms"),
    ),
    (
        "default install / [fast] CPU per request, thread mode, hello",
        "",
        users_pair("default install/[fast], thread"),
    ),
    (
        "default install / [fast] CPU per request, process mode, hello",
        "",
        users_pair("default install/[fast], process"),
    ),
    (
        "8 / 2 worker threads CPU per request, hello, on 2 CPUs",
        "",
        users_pair("8 loops/2 loops, thread"),
    ),
    (
        "thread (3.13t) / bare `uvicorn --workers 2` (3.13t) CPU per request, hello table",
        "",
        hello_cpu("gilworker thread (3.13t)", "uvicorn --workers (3.13t)"),
    ),
    (
        "gilworker process (3.11) / granian (3.11) CPU per request, hello table",
        "",
        hello_cpu("gilworker process (3.11)", "granian (3.11)"),
    ),
    (
        "PSS thread / process, 8 workers, 5-route Starlette app",
        "",
        pss("thread x8", "process x8", "memory_small_app"),
    ),
    (
        "MB per extra thread worker (8 → 16), 5-route Starlette app",
        "",
        mb_per_thread("memory_small_app"),
    ),
]


def tables(report: dict) -> list[str]:
    """latest.md: the figures of each section that ran, then every comparison they give."""
    blocks = [[f"Machine: {report['machine']}. Medians of alternating rounds (min..max)."]]
    if "hello" in report:
        block = [
            "| set-up (hello, 2 workers) | req/s | CPU µs/req | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in report["hello"].values():
            block.append(
                f"| {r.label} | {r.median('rps'):.0f} ({r.spread('rps')}) | "
                f"{cpu(r):.1f} ({r.spread('cpu_per_req_us')}) | "
                f"{r.median('p50_ms'):.2f} | {r.median('p99_ms'):.2f} |"
            )
        blocks.append(block)
    if "workloads" in report:
        block = [
            "| workload, 2 workers (3.13t) | thread req/s | process req/s | "
            "thread/process CPU per req |",
            "| --- | --- | --- | --- |",
        ]
        rows = [
            (path, res["gilworker thread (3.13t)"], res["gilworker process (3.13t)"])
            for path, res in report["workloads"].items()
        ]
        rows += [
            (f"/ with {w} worker(s)", res[f"thread x{w}"], res[f"process x{w}"])
            for w, res in report["counts"].items()
        ]
        for label, t, p in rows:
            block.append(
                f"| {label} | {t.median('rps'):.0f} | {p.median('rps'):.0f} | "
                f"{ratio(cpu(t), cpu(p))} |"
            )
        blocks.append(block)
    if "memory" in report:
        mem, small = report["memory"], report["memory_small_app"]
        block = [
            "| PSS MB, whole server (3.13t) | 1 | 2 | 8 | 16 |",
            "| --- | --- | --- | --- | --- |",
        ]
        for kind in ("thread", "process"):
            block.append(
                f"| {kind}, FastAPI app (60 routes) | "
                + " | ".join(f"{mem[f'{kind} x{w}']:.1f}" for w in (1, 2, 8, 16))
                + " |"
            )
        block.append(
            f"| -w 2 --threads 4 (processes of threads), FastAPI app | | | "
            f"{mem['processes of threads 2x4']:.1f} | |"
        )
        for kind in ("thread", "process"):
            block.append(
                f"| {kind}, 5-route Starlette app | | | "
                + " | ".join(f"{small[f'{kind} x{w}']:.1f}" for w in (8, 16))
                + " |"
            )
        blocks.append(block)
    if "cold_start" in report:
        cold = report["cold_start"]
        block = [
            "| cold start, 8 workers, FastAPI app (3.13t) | thread s | process s | "
            "thread/process |",
            "| --- | --- | --- | --- |",
        ]
        for key, label in (("first_200", "to first 200"), ("all_serving", "to all 8 serving")):
            t8, p8 = cold["thread"][key], cold["process"][key]
            block.append(f"| {label} | {t8:.2f} | {p8:.2f} | {ratio(t8, p8)} |")
        blocks.append(block)
    if "access_log" in report:
        access = report["access_log"]
        block = [
            "| 3.11, hello, 2 workers | CPU µs/req, no access log | with access log | "
            "the log's cost |",
            "| --- | --- | --- | --- |",
        ]
        for server in ("gilworker process", "uvicorn-worker", "gunicorn -k asgi"):
            off, on = cpu(access[f"{server}, no access log"]), cpu(access[f"{server}, access log"])
            block.append(f"| {server} | {off:.1f} | {on:.1f} | {on - off:.1f} |")
        blocks.append(block)
    if "contract_cost" in report:
        block = ["| the per-request contract alone (3.11, in-process) | µs per request |"]
        block.append("| --- | --- |")
        for what, us in report["contract_cost"].items():
            block.append(f"| {what} | {max(us, 0):.1f} |")
        blocks.append(block)
    if "lock_waits" in report:
        block = [
            "| access log, 4 threads of the master (3.13t) | lock waits | of acquisitions | "
            "ms waited | req/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for path, w in report["lock_waits"].items():
            block.append(
                f"| {path} | {w['waits']} | {w['acquired']} | {w['ms']:.1f} | {w['rps']:.0f} |"
            )
        blocks.append(block)
    block = ["| compared (A / B, measure) | target | measured |", "| --- | --- | --- |"]
    for name, target, figure in COMPARISONS:
        with contextlib.suppress(KeyError):  # its section did not run (--only)
            block.append(f"| {name} | {target} | {figure(report)} |")
    if len(block) > 2:
        note = (
            "Ratios of CPU per request, req/s and p99 are medians of per-round ratios of an A/B "
            "pair run alone (alternating 2-s rounds; the 3.13t pairs start both servers anew each "
            'round); rows marked "hello table" divide the medians of the first table.'
        )
        blocks += [block, [note]]
    if "replacements" in report:
        blocks.append(replacements.table(report["replacements"], REPLACEMENT_SECONDS))
    if "respawn_ms" in report:
        respawns = report["respawn_ms"].values()
        blocks.append(
            [
                "Respawn after a crash, 1 worker (bench/supervision.py, 3.13t):",
                *(f"- {r}" for r in respawns),
            ]
        )
    blocks.append([f"Whole run: {report['elapsed_s']:.0f} s."])
    return [line for block in blocks for line in ("", *block)][1:]


def write(report: dict, full: bool) -> None:
    lines = tables(report)
    RESULTS.mkdir(exist_ok=True)
    stem = "latest" if full else "partial"
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(
        json.dumps(report, default=lambda o: o.__dict__, indent=1)
    )
    if "hello" in report:
        chart(report["hello"], RESULTS / ("chart.png" if full else "partial-chart.png"))
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
