"""Noticing the GIL coming back while thread workers run.

A lazy import inside a request (an extension module without free-threading support) turns the
GIL on for the whole process at run time: thread mode keeps working but loses its parallelism.
CPython says so with a RuntimeWarning naming the module; this keeps that name, and the master
checks the GIL on every loop turn, warns once, and reports it as a statsd gauge and in
`gunicornc show stats`.
"""

from __future__ import annotations

import warnings
from typing import Any

from gunicorn_gilworker.mode import gil_cause
from gunicorn_gilworker.upstream import gil_enabled


class GilWatch:
    def __init__(self, log: Any) -> None:
        self.log = log
        self.enabled = gil_enabled()
        self.cause: str | None = None
        self._show_warning = warnings.showwarning

    def start(self) -> None:
        """Keep the module named by CPython's GIL warning; the warning is still shown."""
        if warnings.showwarning is not self._keep_cause:
            self._show_warning = warnings.showwarning
            warnings.showwarning = self._keep_cause
        self.report()

    def _keep_cause(self, message: Warning | str, *args: Any, **kwargs: Any) -> None:
        self.cause = self.cause or gil_cause([str(message)], None, None)
        self._show_warning(message, *args, **kwargs)

    def check(self) -> None:
        """Called on every master loop turn: warn once when the GIL has come back."""
        if self.enabled or not gil_enabled():
            return
        self.enabled = True
        self.log.warning(
            "gilworker: the GIL was re-enabled at run time (%s): worker threads no longer run "
            "Python code in parallel",
            self.cause or "by an extension module imported after start-up",
        )
        self.report()

    def report(self) -> None:
        self.log.debug(  # a statsd gauge, as gunicorn reports its worker count
            "gil enabled: %s",
            self.enabled,
            extra={"metric": "gilworker.gil_enabled", "value": int(self.enabled), "mtype": "gauge"},
        )
