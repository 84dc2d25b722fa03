"""New code on HUP in thread mode: forget the app's own modules so that they are imported again.

A forked worker imports the app afresh; worker threads share the master's `sys.modules`. The
app's own modules are those loaded from under its directory (`--chdir`, and `--pythonpath`
entries), outside any site-packages and outside gunicorn, uvicorn and gilworker themselves.
Workers still running the old code keep their references to the old module objects.
What cannot be reloaded in one process: C extensions (never unloaded), and state that libraries
keep at module level about the app's old objects (registries, caches, singletons).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from gunicorn_gilworker.upstream import code_reloader

KEEP = ("gunicorn", "uvicorn", "gunicorn_gilworker", "__main__", "__config__")
LIBRARY_DIRS = ("site-packages", "dist-packages")


def app_modules(app_dirs: Iterable[str]) -> list[str]:
    """Names of the loaded modules whose files lie under one of `app_dirs`."""
    roots = [os.path.join(os.path.realpath(d), "") for d in app_dirs]
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name.split(".")[0] in KEEP:
            continue
        path = os.path.realpath(path)
        if any(part in path.split(os.sep) for part in LIBRARY_DIRS):
            continue
        if any(path.startswith(root) for root in roots):
            found.append(name)
    return found


def forget_app_modules(app_dirs: Iterable[str]) -> list[str]:
    names = app_modules(app_dirs)
    for name in names:
        sys.modules.pop(name, None)
    return names


class MasterReloader:
    """--reload where workers share the master's import: a changed file makes the master reload
    (HUP) once, importing the app anew for the successors. gunicorn's own watcher runs in each
    worker process, which here would stop a worker before any successor had the new code."""

    def __init__(self, arbiter: Any) -> None:
        self.arbiter = arbiter
        self.watcher: Any = None

    def start(self) -> None:
        cfg = self.arbiter.cfg
        if not cfg.reload or self.watcher is not None:
            return
        self.arbiter.log.warning("Reloader is on. Use in development only!")
        self.watcher = code_reloader(cfg, self._changed)
        self.watcher.start()

    def _changed(self, filename: str) -> None:
        self.arbiter.log.info("Worker reloading: %s modified", filename)
        self.watcher = None
        self.arbiter.SIG_QUEUE.put_nowait(signal.SIGHUP)
        sys.exit(0)  # ends this watcher thread; the reload starts a fresh one
