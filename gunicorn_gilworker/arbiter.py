"""GilArbiter: gunicorn's master loop, with workers as forked processes or as threads.

gunicorn's Arbiter keeps everything it does (signal queue, HUP/TERM/INT/QUIT/TTIN/TTOU/USR1/USR2,
`manage_workers`, `murder_workers`, graceful stop, pidfile, systemd, the control socket). This
subclass overrides only the seams where a worker is spawned, signalled and reaped: in process mode
each goes straight to gunicorn's own method; in thread mode to a `ThreadWorker`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.ctl.handlers import CommandHandlers
from gunicorn.errors import HaltServer

from gunicorn_gilworker.mode import (
    Decision,
    decide,
    free_threaded_build,
    gil_cause,
    gil_enabled,
    needs_app_import,
)
from gunicorn_gilworker.threads import HALT_REASONS, ThreadWorker, failure_status


class GilArbiter(Arbiter):
    def __init__(self, app: Any) -> None:
        self.threads: dict[int, ThreadWorker] = {}
        self.halting = False
        self.decision: Decision | None = None
        self.import_warnings: list[str] = []
        super().__init__(app)

    def setup(self, app: Any) -> None:
        if self.threads:  # a reload: warnings can't be recorded while other threads run
            super().setup(app)
        else:
            with self._recording_warnings():  # a preloaded app may turn the GIL on
                super().setup(app)
        self.decision = None  # choose again: the reloaded config may ask for another mode

    # -- choosing the mode --------------------------------------------------------------------

    def choose_mode(self) -> Decision:
        """Threads or processes, decided before the first worker of this configuration."""
        if self.decision is None:
            requested = getattr(self.cfg, "gil_mode", "auto")
            free_threaded = free_threaded_build()
            if needs_app_import(requested, free_threaded):
                self._import_app()
            cause = gil_cause(
                self.import_warnings, os.environ.get("PYTHON_GIL"), sys._xoptions.get("gil")
            )
            self.decision = decide(requested, free_threaded, gil_enabled(), cause)
            (self.log.warning if self.decision.forced else self.log.info)(self.decision.message)
            if self.decision.mode == "thread":
                self._drop_privileges()
        return self.decision

    def _import_app(self) -> None:
        """Import the app once, in the master: the GIL state after it decides the mode, and the
        worker threads share it. A failure halts the master like a failed worker would."""
        with self._recording_warnings():
            try:
                self.app.wsgi()
            except Exception as exc:
                status = failure_status(exc, booted=False, log=self.log)
                raise HaltServer(HALT_REASONS[status], status) from exc

    @contextlib.contextmanager
    def _recording_warnings(self) -> Iterator[None]:
        """Keep the warnings of an app import for `gil_cause`; they are still shown."""
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                yield
        finally:
            for w in caught:
                self.import_warnings.append(str(w.message))
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)

    def _drop_privileges(self) -> None:
        """gunicorn drops privileges in each child; worker threads share the master's process."""
        try:
            util.set_owner_process(self.cfg.uid, self.cfg.gid, initgroups=self.cfg.initgroups)
        except OSError as exc:
            raise HaltServer(f"thread mode cannot switch to user/group: {exc}", 1) from exc

    # -- the seams: spawn, signal, reap -------------------------------------------------------

    def spawn_worker(self) -> int | None:
        if self.choose_mode().mode == "process":
            return super().spawn_worker()
        self.worker_age += 1
        worker = self.worker_class(
            self.worker_age,
            self.pid,
            self.LISTENERS,
            self.app,
            self.timeout / 2.0,
            self.cfg,
            self.log,
        )
        handle = ThreadWorker(worker, self)
        self.cfg.pre_fork(self, worker)
        try:
            handle.start()
        except RuntimeError as exc:  # out of threads: the next loop turn tries again
            self.log.error("Could not start worker thread %s: %s", handle.id, exc)
            worker.tmp.close()
            return None
        self.threads[handle.id] = handle
        self.WORKERS[handle.id] = worker
        self._stats["workers_spawned"] += 1
        return handle.id

    def kill_worker(self, pid: int, sig: int) -> None:
        handle = self.threads.get(pid)
        if handle is None:
            super().kill_worker(pid, sig)
            return
        handle.deliver(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._stats["workers_killed"] += 1

    def reap_workers(self) -> None:
        try:
            super().reap_workers()
        except HaltServer:
            # gunicorn raises it again for each further worker that failed to boot, from inside
            # halt() itself, which then dies with a traceback and exit status 1.
            if not self.halting:
                raise
        self.reap_threads()

    def manage_workers(self) -> None:
        self.reap_threads()  # on every loop turn too: an exit notice must never be the only way
        super().manage_workers()

    def reap_threads(self) -> None:
        for wid, handle in list(self.threads.items()):
            if not handle.finished.is_set():
                continue
            del self.threads[wid]
            worker = self.WORKERS.pop(wid, None)
            if worker is None:
                continue
            status = handle.exit_code
            if status:
                self.log.error("Worker (thread id:%s) exited with code %s.", wid, status)
            if status in HALT_REASONS and not self.halting:  # one halt, however many fail
                raise HaltServer(HALT_REASONS[status], status)
            worker.tmp.close()
            self.cfg.child_exit(self, worker)

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason, exit_status)

    # -- gunicornc ----------------------------------------------------------------------------

    def _start_control_server(self) -> None:
        super()._start_control_server()
        if self._control_server is not None:
            self._control_server.handlers = ControlHandlers(self)


class ControlHandlers(CommandHandlers):
    """gunicornc's commands, with thread workers told apart and never sent a real signal."""

    arbiter: GilArbiter

    def show_workers(self) -> dict:
        shown = super().show_workers()
        for entry in shown["workers"]:
            entry["mode"] = "thread" if entry["pid"] in self.arbiter.threads else "process"
        return shown

    def worker_kill(self, pid: int) -> dict:
        pid = int(pid)
        if pid not in self.arbiter.threads:
            return super().worker_kill(pid)
        self.arbiter.kill_worker(pid, signal.SIGTERM)  # ThreadWorker.deliver is thread-safe
        return {"success": True, "killed": pid}
