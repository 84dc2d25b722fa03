"""Which attribute lookups miss 3.13t's type cache, and why, per request.

    .venvs/gil/bin/python bench/type_cache_misses.py --ft <venv> [--starts 3] [--path /]

Needs an interpreter built with bench/cpython/type-cache-misses-3.13.5.patch (on top of
upstream-fixes-3.13.5.patch): with EXP_MISS_LOG=<file> it writes one line for every 16th miss of
each thread, naming the type, the name, and what held the slot. 3.13t's free-threaded build does
not specialize bytecode, so every attribute access looks its name up in the one 4096-slot cache
all threads share, at slot (type's version tag ^ (address of the name >> 3)) % 4096, and a miss
takes the interpreter's one type lock. Two hot names whose addresses fall in the same slot evict
each other on every type that has both, whatever its version tag; where the interned names land
is drawn anew at each start. Starts each mode anew `--starts` times (2 workers, wrk -c64) and
prints, per start, misses per request and the pairs of names that evict each other.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path

from run import Server, Setup, run_wrk

CONNECTIONS = 64
SAMPLED = 16  # the patch writes one miss in this many, per thread
PATCH = "bench/cpython/type-cache-misses-3.13.5.patch"


def misses(ft: Path, mode: str, path: str, seconds: int) -> tuple[int, list[str]]:
    """Requests served and the sampled miss lines of one fresh start, after a warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "misses")
        setup = Setup(mode, ft / "bin", f"gilworker-{mode}", env=(("EXP_MISS_LOG", log),))
        server = Server(setup).start()
        try:
            run_wrk(server.port, path, 1, CONNECTIONS)
            warm = os.path.getsize(log) if os.path.exists(log) else 0  # after the warm-up
            requests, _ = run_wrk(server.port, path, seconds, CONNECTIONS)
        finally:
            server.stop()
        if not os.path.exists(log):  # no miss at all is not 3.13t: the interpreter lacks the patch
            raise SystemExit(f"{ft}: its interpreter writes no misses: build it with {PATCH}")
        with open(log) as file:
            file.seek(warm)
            return requests, file.read().splitlines()


def why_and_pair(line: str) -> str:
    # "<why> <type>.<name> v=<version> slot=<n> entry_v=<version> entry_name=<name>"
    why, looked_up, *fields = line.split()
    held = dict(field.split("=", 1) for field in fields)
    if why == "samever-othername":  # the same type's other name holds the slot
        return f"{looked_up} <-> {held['entry_name']}"
    return f"{looked_up} ({why}: slot held by {held['entry_name']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ft", type=Path, required=True, help="venv of the patched 3.13t")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--path", default="/")
    parser.add_argument("--top", type=int, default=4)
    args = parser.parse_args()
    for start in range(args.starts):
        for mode in ("thread", "process"):
            requests, lines = misses(args.ft, mode, args.path, args.seconds)
            per_request = SAMPLED / max(requests, 1)
            print(f"start {start + 1}, {mode}: {len(lines) * per_request:.2f} misses per request")
            for pair, count in Counter(map(why_and_pair, lines)).most_common(args.top):
                print(f"  {count * per_request:6.3f}  {pair}")


if __name__ == "__main__":
    main()
