"""Deciding how gilworker runs its workers, and why: the topology.

Pure functions over plain facts (the requested mode, `--threads`, how the interpreter was built,
whether the GIL is on after the application was imported), so each rule is unit-tested without
gunicorn. Three topologies:

- `processes`: gunicorn's forked worker processes, one event loop each;
- `threads`: every worker an event-loop thread of the master (`--threads 1`, the default);
- `processes_of_threads`: `-w P --threads N` forks P worker processes of N event-loop threads
  each, gunicorn's gthread model with event loops for threads.
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Mode = Literal["thread", "process"]
Topology = Literal["processes", "threads", "processes_of_threads"]

# CPython's RuntimeWarning when an extension without free-threading support turns the GIL on.
_GIL_WARNING = re.compile(r"GIL\) has been enabled to load module '([^']+)'")


@dataclass(frozen=True)
class Decision:
    mode: Mode  # "thread": workers run as event-loop threads; "process": one loop per process
    reason: str
    forced: bool = False  # the choice goes against what the interpreter would give: warn
    threads: int = 1  # event-loop threads per worker process (1: threads live in the master)
    workers: int = 1
    ignored: str = ""  # a setting this topology does not apply, and why

    @property
    def topology(self) -> Topology:
        if self.mode == "process":
            return "processes"
        return "threads" if self.threads == 1 else "processes_of_threads"

    @property
    def message(self) -> str:
        if self.topology == "processes_of_threads":
            shape = f"{self.workers} worker processes of {self.threads} threads each"
        elif self.topology == "threads":
            shape = "workers as threads in one process"
        else:
            shape = "workers as forked processes"
        return f"gilworker: running {shape} ({self.reason}){self.ignored}"


def free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_cause(
    warning_messages: Iterable[str], python_gil_env: str | None, gil_xoption: object
) -> str | None:
    """What turned the GIL on: an extension module named by CPython's warning, or the user."""
    for message in warning_messages:
        found = _GIL_WARNING.search(message)
        if found:
            return f"importing the extension module {found.group(1)!r} re-enabled the GIL"
    if python_gil_env == "1":
        return "PYTHON_GIL=1 keeps the GIL on"
    if gil_xoption == "1":
        return "-X gil=1 keeps the GIL on"
    return None


def needs_app_import(requested: str, free_threaded: bool) -> bool:
    """Whether the master must import the app before choosing (and before starting threads)."""
    return requested == "thread" or (requested == "auto" and free_threaded)


def decide(
    requested: str,
    free_threaded: bool,
    gil_on: bool,
    cause: str | None = None,
    threads: int = 1,
    workers: int = 1,
) -> Decision:
    mode, reason, forced = _mode(requested, free_threaded, gil_on, cause)
    if mode == "thread":
        return Decision(mode, reason, forced, threads, workers)
    ignored = ""
    if threads > 1:
        why = (
            "--gil-mode process runs one event loop per worker process"
            if requested == "process"
            else "with the GIL on, threads of one process would share it, so each worker "
            "process runs one event loop (--gil-mode thread honours it)"
        )
        ignored = f"; --threads {threads} is ignored: {why}"
    return Decision(mode, reason, forced, 1, workers, ignored)


def _mode(
    requested: str, free_threaded: bool, gil_on: bool, cause: str | None
) -> tuple[Mode, str, bool]:
    build = "free-threaded build" if free_threaded else "GIL build"
    gil_state = "GIL on" if gil_on else "GIL off after importing the app"
    if requested == "thread":
        if gil_on:
            return (
                "thread",
                f"--gil-mode thread on a {build} with the GIL on: workers share one GIL, "
                "so Python code does not run in parallel",
                True,
            )
        return "thread", f"--gil-mode thread, {build}, {gil_state}", False
    if requested == "process":
        if free_threaded and not gil_on:
            return "process", f"--gil-mode process on a {build} with the GIL off", True
        return "process", f"--gil-mode process, {build}", False
    if not free_threaded:
        return "process", f"gil_mode auto, {build}", False
    if gil_on:
        why = cause or "the GIL is on (PYTHON_GIL=1, -X gil=1 or an extension module)"
        return "process", f"gil_mode auto, {build}, but {why}: falling back to processes", True
    return "thread", f"gil_mode auto, {build}, {gil_state}", False
