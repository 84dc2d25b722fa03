"""What an interpreter switch does to thread mode's cost against process mode, in one run.

    .venvs/gil/bin/python bench/switch_pair.py --ft <venv> --switch EXP_TLS_TYPE_CACHE \
        [--rounds 12] [--path /] [--dependencies async]

Four 2-worker servers, each started anew every round (A B C D, then D C B A, ...): thread and
process mode, each with the environment variable SWITCH unset and set to 1 (with several
`--switch`es: all unset, all set). The switches are those of the patched interpreters in
bench/cpython/, read once when the interpreter starts, or EXP_IMMORTAL with `--config
bench/cpython/immortal_conf.py`. Measured in one run, so the machine's drift, which moves the
thread-to-process ratio by several % from one run to the next, falls out of the comparison.
Prints CPU per request (medians) and paired ratios: thread to process without and with the
switch, and with to without in each mode. `--counts` also loads each server for 2 s more under
`perf stat` (root) and prints, per request, user and system µs and the sched_yield and futex calls
(cpu_split.py's counts): what a switch changes in the kernel's share.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from cpu_split import counted
from run import REALISTIC, Server, Setup, fresh_rounds, paired_ratio

MODES = ("thread", "process")
CPU = "cpu_per_req_us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ft", type=Path, required=True, help="free-threaded venv")
    parser.add_argument(
        "--switch",
        action="append",
        required=True,
        help="environment variable set to 1, or not (repeat: all set together)",
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--path", default="/users?limit=5", help='"/" is the hello route')
    parser.add_argument("--dependencies", choices=("sync", "async"), default="sync")
    parser.add_argument("--config", type=Path, help="a gunicorn config file for all four")
    parser.add_argument("--counts", action="store_true", help="user, system, yields per request")
    args = parser.parse_args()
    os.environ["BENCH_DEPENDENCIES"] = args.dependencies  # read by realistic_app.py
    for name in args.switch:
        os.environ.pop(name, None)
    app = "app:app" if args.path == "/" else REALISTIC
    on = " ".join(f"{name}=1" for name in args.switch)
    setups = {
        (mode, switched): Setup(
            f"{mode} {on}" if switched else mode,
            args.ft / "bin",
            f"gilworker-{mode}",
            app=app,
            options=("-c", str(args.config.resolve())) if args.config else (),
            env=tuple((name, "1") for name in args.switch) if switched else (),
        )
        for switched in (False, True)
        for mode in MODES
    }
    counts: dict[str, list[dict[str, float]]] = {setup.name: [] for setup in setups.values()}

    def count(server: Server) -> None:
        counts[server.setup.name].append(counted(server, args.path, 2))

    after = count if args.counts else None
    results = fresh_rounds(list(setups.values()), args.path, args.rounds, args.seconds, 64, after)
    by = {key: results[setup.name] for key, setup in setups.items()}

    print(f"| {app} {args.path}, 2 workers, {args.rounds} starts each | thread µs/req | ", end="")
    print("process µs/req | thread / process |\n| --- | --- | --- | --- |")
    for switched, label in ((False, "unset"), (True, on)):
        thread, process = by["thread", switched], by["process", switched]
        ratio = paired_ratio(thread, process, CPU)
        print(f"| {label} | {thread.median(CPU):.1f} | {process.median(CPU):.1f} | {ratio:.3f} |")
    for mode in MODES:
        ratio = paired_ratio(by[mode, True], by[mode, False], CPU)
        print(f"{mode} mode, {on} / unset: {ratio:.3f}")
    if args.counts:
        keys = list(counts[setups["thread", False].name][0])
        print("\n| per request, medians | " + " | ".join(keys) + " |")
        print("| --- " * (len(keys) + 1) + "|")
        for setup in setups.values():
            rows = counts[setup.name]
            cells = (f"{statistics.median(r.get(k, 0.0) for r in rows):.2f}" for k in keys)
            print(f"| {setup.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
