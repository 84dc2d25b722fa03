"""Where thread mode's extra CPU per request goes on 3.13t: user time or kernel time, and which
system calls and which locks make the kernel's share.

    python bench/cpu_split.py --ft .venvs/freethreaded [--rounds 8] [--path "/users?limit=5"]

Thread and process mode (2 workers), each started anew for every round (A B, then B A, ...).
Per start and per request: user and system CPU (utime, stime of the master and its children,
from /proc), context switches and the sched_yield and futex calls of the server's threads
(`perf stat` on tracepoints), and what the sched_yield calls were waiting for: a `perf record`
of them with call stacks, each stack put under the first lock it shows (3.13t's `PyMutex`
spins with `sched_yield` before it sleeps, so a contended lock shows as yields). Needs root for
perf; the stack split needs an interpreter with debug info (scripts/build-freethreaded-python.sh).

`--functions N` also samples where the CPU goes (`perf record -e cpu-clock`) and lists the N
functions that take the most more CPU per request in thread mode than in process mode.
`--workers 1` shows what is left with no second worker thread to contend with; `EXP_IMMORTAL=1
... --config bench/cpython/immortal_conf.py` (both modes) what is left once no thread counts
references to the objects they share.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from run import REALISTIC, Server, Setup, cpu_times, family, run_wrk

CONNECTIONS = 64
SYSCALLS = ("sched_yield", "futex")
EVENTS = ("context-switches", *(f"syscalls:sys_enter_{name}" for name in SYSCALLS))
POOL_LOCK = "a threading.Lock in a thread with no event loop (a pool thread)"
# A yield's lock: the first of these whose marks show among the stack's innermost frames (a
# critical section on the type lock shows both the lookup and _PyCriticalSection_BeginSlow).
LOCKS = (
    (
        "the type lock (a lookup that missed the type cache)",
        ("_PyType_LookupRef", "do_super_lookup"),
    ),
    ("an object's lock (critical section)", ("_PyCriticalSection_BeginSlow",)),
    (POOL_LOCK, ("lock_PyThread_acquire_lock",)),
)
INNERMOST = 12
# A line of `perf report --sort sym`: "  12.34%  [.] _PyEval_EvalFrameDefault"
SAMPLE_SHARE = re.compile(r"^\s*(?P<percent>[\d.]+)%\s+\[.\]\s+(?P<function>.+?)\s*$")
LOOP_MARKS = ("uvloop", "run_forever")  # frames only an event loop's thread has (uvloop, asyncio)


def perf_on(pids: list[int], argv: list[str]) -> subprocess.Popen:
    perf = subprocess.Popen(
        ["perf", *argv, "-p", ",".join(map(str, pids))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # attached
    return perf


def stop(perf: subprocess.Popen) -> str:
    perf.send_signal(signal.SIGINT)
    return perf.communicate(timeout=120)[1]


def loaded(server: Server, path: str, seconds: int) -> tuple[int, float, float]:
    """A wrk load: the requests done, and the server's user and system CPU µs per request."""
    user0, system0 = cpu_times(server.proc.pid)
    requests, _ = run_wrk(server.port, path, seconds, CONNECTIONS)
    user1, system1 = cpu_times(server.proc.pid)
    return requests, (user1 - user0) / requests * 1e6, (system1 - system0) / requests * 1e6


def counted(server: Server, path: str, seconds: int) -> dict[str, float]:
    """Per request: user and system µs, context switches, sched_yield and futex calls."""
    perf = perf_on(family(server.proc.pid), ["stat", "-x,", "-e", ",".join(EVENTS)])
    requests, user, system = loaded(server, path, seconds)
    row = {"user µs": user, "sys µs": system}
    for line in stop(perf).splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            row[fields[2].removeprefix("syscalls:sys_enter_")] = int(fields[0]) / requests
    return row


def yields_by_lock(server: Server, path: str, seconds: int) -> Counter[str]:
    """Shares (0..1) of the sched_yield calls, by the lock each one waited for."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        argv = ["record", "-q", "-o", data, "-m", "4096", "--call-graph", "dwarf,8192"]
        perf = perf_on(family(server.proc.pid), [*argv, "-e", "syscalls:sys_enter_sched_yield"])
        run_wrk(server.port, path, seconds, CONNECTIONS)
        stop(perf)
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym"],
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    shares: Counter[str] = Counter()
    for sample in script.split("\n\n"):
        if not sample.strip():
            continue
        shares[lock_of(sample.split("\n"))] += 1
    total = sum(shares.values()) or 1
    return Counter({lock: n / total for lock, n in shares.items()})


def cpu_by_function(server: Server, path: str, seconds: int) -> dict[str, float]:
    """CPU µs per request of each function (its own samples, not its callees')."""
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        argv = ["record", "-q", "-o", data, "-e", "cpu-clock", "-F", "1999"]
        perf = perf_on(family(server.proc.pid), argv)
        _, user, system = loaded(server, path, seconds)
        stop(perf)
        report = subprocess.run(
            ["perf", "report", "-i", data, "--stdio", "-q", "--sort", "sym"],
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    per_request = user + system
    shares = (SAMPLE_SHARE.match(line) for line in report.splitlines())
    return {m["function"]: float(m["percent"]) / 100 * per_request for m in shares if m}


def lock_of(frames: list[str]) -> str:
    inner = frames[:INNERMOST]
    for lock, marks in LOCKS:
        if any(mark in frame for frame in inner for mark in marks):
            if lock == POOL_LOCK and any(m in f for f in frames for m in LOOP_MARKS):
                return "a threading.Lock in an event loop's thread"
            return lock
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ft", type=Path, required=True, help="free-threaded venv")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--path", default="/users?limit=5", help='"/" is the hello route')
    parser.add_argument("--app", help="default: app:app for /, else the FastAPI app")
    parser.add_argument(
        "--dependencies",
        choices=("sync", "async"),
        default="sync",
        help="the FastAPI app's dependencies: functions (run in its thread pool) or coroutines",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--config", type=Path, help="a gunicorn config file for both modes")
    parser.add_argument(
        "--functions", type=int, default=0, help="list the N functions thread mode spends more in"
    )
    args = parser.parse_args()
    os.environ["BENCH_DEPENDENCIES"] = args.dependencies  # read by realistic_app.py
    app = args.app or ("app:app" if args.path == "/" else REALISTIC)
    options = ("-c", str(args.config.resolve())) if args.config else ()
    setups = [
        Setup(mode, args.ft / "bin", f"gilworker-{mode}", args.workers, app, options=options)
        for mode in ("thread", "process")
    ]
    rows: dict[str, list[dict[str, float]]] = {s.name: [] for s in setups}
    locks: dict[str, Counter[str]] = {s.name: Counter() for s in setups}
    functions: dict[str, Counter[str]] = {s.name: Counter() for s in setups}
    for i in range(args.rounds):
        for setup in setups if i % 2 == 0 else setups[::-1]:
            server = Server(setup).start()
            try:
                run_wrk(server.port, args.path, 1, CONNECTIONS)  # warm-up
                rows[setup.name].append(counted(server, args.path, 2))
                locks[setup.name].update(yields_by_lock(server, args.path, 1))
                if args.functions:
                    functions[setup.name].update(cpu_by_function(server, args.path, 2))
            finally:
                server.stop()

    keys = list(rows["thread"][0])
    title = f"3.13t, {app} {args.path} ({args.dependencies} dependencies), {args.workers} workers"
    if args.config:
        title += f", -c {args.config.name}"
    print(f"| {title}, medians over {args.rounds} starts | " + " | ".join(keys) + " |")
    print("| --- " * (len(keys) + 1) + "|")
    for name, found in rows.items():
        cells = [f"{statistics.median(r.get(k, 0.0) for r in found):.1f}" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    pairs = list(zip(rows["thread"], rows["process"], strict=True))
    total = [(t["user µs"] + t["sys µs"]) / (p["user µs"] + p["sys µs"]) for t, p in pairs]
    user = [t["user µs"] / p["user µs"] for t, p in pairs]
    extra_system = [t["sys µs"] - p["sys µs"] for t, p in pairs]
    print(
        f"\nthread / process CPU per request: {statistics.median(total):.3f} "
        f"(user time alone {statistics.median(user):.3f}); "
        f"extra system time {statistics.median(extra_system):.0f} µs/req"
    )
    print("\nsched_yield calls per request, by the lock they waited for:")
    for name, shares in locks.items():
        per_request = statistics.median(r.get("sched_yield", 0.0) for r in rows[name])
        parts = (
            f"{lock} {per_request * share / args.rounds:.1f}"
            for lock, share in shares.most_common()
        )
        print(f"- {name}: " + "; ".join(parts))
    if args.functions:
        thread, process = functions["thread"], functions["process"]
        apart = sorted(thread.keys() | process.keys(), key=lambda f: process[f] - thread[f])
        print(f"\nCPU µs per request (mean of {args.rounds} starts) where thread mode spends more:")
        print("| function | thread | process | thread - process |\n| --- | --- | --- | --- |")
        for function in apart[: args.functions]:
            t, p = thread[function] / args.rounds, process[function] / args.rounds
            print(f"| {function} | {t:.1f} | {p:.1f} | {t - p:+.1f} |")


if __name__ == "__main__":
    main()
