"""Deciding how gilworker runs its workers: threads or processes, and why.

Pure functions over plain facts (the requested mode, how the interpreter was built, whether the
GIL is on after the application was imported), so each rule is unit-tested without gunicorn.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Mode = Literal["thread", "process"]

# CPython's RuntimeWarning when an extension without free-threading support turns the GIL on.
_GIL_WARNING = re.compile(r"GIL\) has been enabled to load module '([^']+)'")


@dataclass(frozen=True)
class Decision:
    mode: Mode
    reason: str
    forced: bool = False  # the choice goes against what the interpreter would give: warn

    @property
    def message(self) -> str:
        kind = "threads in one process" if self.mode == "thread" else "forked processes"
        return f"gilworker: running workers as {kind} ({self.reason})"


def free_threaded_build() -> bool:
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


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


def decide(requested: str, free_threaded: bool, gil_on: bool, cause: str | None = None) -> Decision:
    build = "free-threaded build" if free_threaded else "GIL build"
    gil_state = "GIL on" if gil_on else "GIL off after importing the app"
    if requested == "thread":
        if gil_on:
            return Decision(
                "thread",
                f"--gil-mode thread on a {build} with the GIL on: workers share one GIL, "
                "so Python code does not run in parallel",
                forced=True,
            )
        return Decision("thread", f"--gil-mode thread, {build}, {gil_state}")
    if requested == "process":
        if free_threaded and not gil_on:
            return Decision(
                "process", f"--gil-mode process on a {build} with the GIL off", forced=True
            )
        return Decision("process", f"--gil-mode process, {build}")
    if not free_threaded:
        return Decision("process", f"gil_mode auto, {build}")
    if gil_on:
        why = cause or "the GIL is on (PYTHON_GIL=1, -X gil=1 or an extension module)"
        return Decision(
            "process",
            f"gil_mode auto, {build}, but {why}: falling back to processes",
            forced=True,
        )
    return Decision("thread", f"gil_mode auto, {build}, {gil_state}")
