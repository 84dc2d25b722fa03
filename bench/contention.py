"""Where a free-threaded server spends CPU that a single-threaded one does not: `perf` samples of
a server under load, sorted into lock waits (PyMutex / critical sections that had to wait),
reference counting of objects owned by another thread, and the rest.

Used by run.py (skipped with --no-profile or when perf cannot record here). perf unwinds with
DWARF, so CPython needs no frame pointers; on a free-threaded 3.13 the lock waits show which
interpreter-wide structures the worker threads contend for.
"""

from __future__ import annotations

import collections
import re
import subprocess
import tempfile
from pathlib import Path

LOCK_WAIT = re.compile(
    r"_PyCriticalSection_BeginSlow|PyMutex_Lock\b|_PyMutex_LockTimed|_PyParkingLot"
)
SHARED_REFCOUNT = re.compile(
    r"_Py_DecRefShared|_Py_MergeZeroLocalRefcount|_Py_IncRefShared|_Py_TryIncrefCompare|"
    r"_Py_ExplicitMergeRefcount|_Py_brc"
)
ASYNCIO_TASK_DICT = re.compile(r"\b(enter_task|leave_task)\b")  # 3.13: one dict for all loops
INLINE_LOCK = re.compile(r"_PyCriticalSection|_PyMutex|PyMutex|_Py_yield|sched_yield|syscall")


def available() -> bool:
    try:
        return (
            subprocess.run(
                ["perf", "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "true"],
                capture_output=True,
                timeout=30,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def record(pids: list[int], seconds: float) -> Path:
    data = Path(tempfile.mkdtemp()) / "perf.data"
    subprocess.run(
        [
            *("perf", "record", "-q", "-F", "499", "-e", "cpu-clock", "--call-graph", "dwarf"),
            *("-p", ",".join(map(str, pids)), "-o", str(data), "--", "sleep", str(seconds)),
        ],
        capture_output=True,
        timeout=seconds + 120,
    )
    return data


def stacks(data: Path) -> list[list[str]]:
    """Each sample's stack, leaf first, as symbol names."""
    out = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym"],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    samples: list[list[str]] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith("\t"):
            samples.append([])
        elif samples:
            parts = line.split(None, 1)
            symbol = parts[1].split("+")[0].replace(" (inlined)", "") if len(parts) > 1 else "?"
            samples[-1].append(symbol)
    return [s for s in samples if s]


def classify(data: Path) -> dict[str, object]:
    samples = stacks(data)
    counts = dict.fromkeys(("lock_waits", "asyncio_task_dict", "shared_refcount"), 0)
    sites: collections.Counter[str] = collections.Counter()
    for stack in samples:
        waits = [i for i, frame in enumerate(stack) if LOCK_WAIT.search(frame)]
        if waits:
            counts["lock_waits"] += 1
            caller = next((f for f in stack[waits[-1] + 1 :] if not INLINE_LOCK.search(f)), "?")
            sites[caller] += 1
            if any(ASYNCIO_TASK_DICT.search(f) for f in stack):
                counts["asyncio_task_dict"] += 1
        elif SHARED_REFCOUNT.search(" ".join(stack[:2])):
            counts["shared_refcount"] += 1
    total = max(len(samples), 1)
    return {
        "samples": len(samples),
        **{key: 100 * n / total for key, n in counts.items()},
        "lock_sites": [(site, 100 * n / total) for site, n in sites.most_common(5)],
    }
