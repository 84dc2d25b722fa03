"""GilArbiter: gunicorn's master loop, with workers as forked processes or as threads.

gunicorn's Arbiter keeps everything it does (signal queue, HUP/TERM/INT/QUIT/TTIN/TTOU/USR1/USR2,
`manage_workers`, `murder_workers`, graceful stop, pidfile, systemd, the control socket). This
subclass overrides only the seams where a worker is spawned, signalled and reaped: in process mode
each goes to gunicorn's own method; in thread mode to a `ThreadWorker`. Both modes share the
crash-loop budget (worker slots that keep crashing back off instead of spinning).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.ctl.handlers import CommandHandlers
from gunicorn.errors import HaltServer
from gunicorn.reloader import reloader_engines

from gunicorn_gilworker.budget import CrashBudget
from gunicorn_gilworker.gil_watch import GilWatch
from gunicorn_gilworker.mode import (
    Decision,
    decide,
    free_threaded_build,
    gil_cause,
    gil_enabled,
    needs_app_import,
)
from gunicorn_gilworker.reload import forget_app_modules
from gunicorn_gilworker.threads import HALT_REASONS, ThreadWorker, failure_status


class GilArbiter(Arbiter):
    def __init__(self, app: Any) -> None:
        self.threads: dict[int, ThreadWorker] = {}  # started and not yet reaped or abandoned
        self.slots: dict[int, tuple[int, float]] = {}  # worker id -> (slot, start time)
        self.budget = CrashBudget(max_restarts=0, window=0)  # its limits are set in setup()
        self.decision: Decision | None = None
        self.gil_watch: GilWatch | None = None
        self.code_reloader: Any = None
        self.import_warnings: list[str] = []
        self.halting = False
        self._wake_at = 0.0
        super().__init__(app)
        self._stats.update(worker_crashes=0, threads_abandoned=0)

    def setup(self, app: Any) -> None:
        if self.threads:  # a HUP while worker threads run: their successors get new code
            self._forget_app_code(app)
            super().setup(app)
        else:
            with self._recording_warnings():  # a preloaded app may turn the GIL on
                super().setup(app)
        # a reload keeps the slots' records, with the new limits
        self.budget.max_restarts = self.cfg.max_restarts
        self.budget.window = self.cfg.restart_window
        self.decision = None  # choose again: the reloaded config may ask for another mode

    # -- choosing the mode --------------------------------------------------------------------

    def choose_mode(self) -> Decision:
        """Threads or processes, decided before the first worker of this configuration."""
        if self.decision is None:
            requested = self.cfg.gil_mode
            free_threaded = free_threaded_build()
            if needs_app_import(requested, free_threaded):
                self._import_app()
            cause = gil_cause(
                self.import_warnings, os.environ.get("PYTHON_GIL"), sys._xoptions.get("gil")
            )
            self.decision = decide(requested, free_threaded, gil_enabled(), cause)
            (self.log.warning if self.decision.forced else self.log.info)(self.decision.message)
            if self.decision.mode == "thread":
                self._start_thread_mode()
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

    def _start_thread_mode(self) -> None:
        """What gunicorn does once per worker process, done once for the shared process."""
        try:  # gunicorn drops privileges in each child; here every worker shares the master's
            util.set_owner_process(self.cfg.uid, self.cfg.gid, initgroups=self.cfg.initgroups)
        except OSError as exc:
            raise HaltServer(f"thread mode cannot switch to user/group: {exc}", 1) from exc
        if self.gil_watch is None:
            self.gil_watch = GilWatch(self.log)
            self.gil_watch.start()
        if self.cfg.reload and self.code_reloader is None:
            self._start_code_reloader()

    def _start_code_reloader(self) -> None:
        """--reload in thread mode: a changed file makes the master reload (HUP) once."""

        def changed(filename: str) -> None:
            self.log.info("Worker reloading: %s modified", filename)
            self.code_reloader = None
            self.SIG_QUEUE.put_nowait(signal.SIGHUP)
            sys.exit(0)  # ends this watcher thread; the reload starts a fresh one

        self.log.warning("Reloader is on. Use in development only!")
        engine = reloader_engines[self.cfg.reload_engine]
        self.code_reloader = engine(extra_files=self.cfg.reload_extra_files, callback=changed)
        self.code_reloader.start()

    def _forget_app_code(self, app: Any) -> None:
        app_dirs = [app.cfg.chdir, *filter(None, (app.cfg.pythonpath or "").split(","))]
        forgotten = forget_app_modules(app_dirs)
        app.callable = None  # gunicorn's cache of the loaded app: load it again
        self.log.info("gilworker: %d app modules will be imported again", len(forgotten))

    # -- the seams: spawn, signal, reap -------------------------------------------------------

    def spawn_workers(self) -> None:
        if self.choose_mode().mode == "process":
            super().spawn_workers()
            return
        for _ in range(self.num_workers - len(self.WORKERS)):  # no fork: no need to stagger
            self.spawn_worker()

    def spawn_worker(self) -> int | None:
        slot = self._next_slot()
        if slot is None:
            return None
        if self.choose_mode().mode == "process":
            wid = super().spawn_worker()
        else:
            wid = self._spawn_thread()
        if wid is not None:
            self.slots[wid] = (slot, time.monotonic())
        return wid

    def _spawn_thread(self) -> int | None:
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

    def _next_slot(self) -> int | None:
        """The lowest free worker slot, unless it is backing off after too many crashes."""
        used = {self.slots[wid][0] for wid in self.WORKERS if wid in self.slots}
        slot = next(i for i in range(len(used) + 1) if i not in used)
        wait = self.budget.wait(slot)
        if wait <= 0:
            return slot
        self._wake_in(wait)
        return None

    def _wake_in(self, delay: float) -> None:
        """Wake the master loop when a backed-off slot may start again."""
        now = time.monotonic()
        wake_at = now + delay
        if now < self._wake_at <= wake_at:
            return  # an earlier wake-up is already pending
        self._wake_at = wake_at
        timer = threading.Timer(delay, self.wakeup)
        timer.daemon = True
        timer.start()

    def kill_worker(self, pid: int, sig: int) -> None:
        handle = self.threads.get(pid)
        if handle is None:
            super().kill_worker(pid, sig)
            return
        handle.deliver(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._stats["workers_killed"] += 1
        if sig == signal.SIGABRT and self.WORKERS.pop(pid, None) is not None:
            # A thread stuck in a timeout may never end: replace it now, keep watching it.
            handle.retired_at = time.monotonic()

    def reap_workers(self) -> None:
        exits = self._peek_process_exits()
        try:
            super().reap_workers()
        except HaltServer:
            # gunicorn raises it again for each further worker that failed to boot, from inside
            # halt() itself, which then dies with a traceback and exit status 1.
            if not self.halting:
                raise
        for pid, crashed in exits.items():
            if pid not in self.WORKERS:
                self._worker_ended(pid, crashed)
        self.reap_threads()

    def _peek_process_exits(self) -> dict[int, bool]:
        """Which worker processes have exited and whether they crashed, read without reaping
        them (WNOWAIT): gunicorn's own reap_workers() reaps them and keeps no status."""
        exits = {}
        for pid in list(self.WORKERS):
            if pid in self.threads:
                continue
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                continue
            if info is not None:
                exits[pid] = not (info.si_code == os.CLD_EXITED and info.si_status == 0)
        return exits

    def manage_workers(self) -> None:
        self.reap_threads()  # on every loop turn too: an exit notice must never be the only way
        if self.gil_watch is not None:
            self.gil_watch.check()
        super().manage_workers()

    def reap_threads(self) -> None:
        now = time.monotonic()
        for wid, handle in list(self.threads.items()):
            if handle.finished.is_set():
                self._reap_thread(wid, handle)
            elif handle.retired_at and now - handle.retired_at > self.cfg.graceful_timeout:
                self._abandon_thread(wid, handle)

    def _reap_thread(self, wid: int, handle: ThreadWorker) -> None:
        del self.threads[wid]
        self.WORKERS.pop(wid, None)
        status = handle.exit_code
        if status:
            self.log.error("Worker (thread id:%s) exited with code %s.", wid, status)
        if status in HALT_REASONS and not self.halting:  # one halt, however many fail
            raise HaltServer(HALT_REASONS[status], status)
        self._thread_gone(wid, handle, crashed=bool(status))

    def _abandon_thread(self, wid: int, handle: ThreadWorker) -> None:
        """A thread that outlived its abort by graceful_timeout: it cannot be killed, so it is
        cut off from its sockets and left behind; its replacement already serves."""
        del self.threads[wid]
        handle.abandon()
        self._stats["threads_abandoned"] += 1
        self.log.error(
            "Worker thread %s did not stop within %ss of its abort: abandoned (%d so far)",
            wid,
            self.cfg.graceful_timeout,
            self._stats["threads_abandoned"],
            extra={"metric": "gilworker.threads_abandoned", "value": 1, "mtype": "counter"},
        )
        self._thread_gone(wid, handle, crashed=True)

    def _thread_gone(self, wid: int, handle: ThreadWorker, crashed: bool) -> None:
        """What gunicorn does for a reaped worker process: its tmp file, `child_exit`."""
        handle.worker.tmp.close()
        self.cfg.child_exit(self, handle.worker)
        self._worker_ended(wid, crashed)

    def _worker_ended(self, wid: int, crashed: bool) -> None:
        slot, started = self.slots.pop(wid, (None, 0.0))
        if not crashed or slot is None or self.halting:
            return
        self._stats["worker_crashes"] += 1
        self.log.debug(  # a statsd counter
            "worker crashed",
            extra={"metric": "gilworker.worker_crashes", "value": 1, "mtype": "counter"},
        )
        delay = self.budget.crashed(slot, time.monotonic() - started)
        if delay is not None:
            self.log.warning(
                "Worker slot %d crashed more than %d times within %ss: next start in %.1fs",
                slot,
                self.budget.max_restarts,
                self.budget.window,
                delay,
            )

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

    def show_stats(self) -> dict:
        stats = super().show_stats()
        arbiter = self.arbiter
        watch = arbiter.gil_watch
        stats.update(
            gil_mode=arbiter.decision.mode if arbiter.decision else None,
            gil_enabled=watch.enabled if watch else gil_enabled(),
            gil_cause=watch.cause if watch else None,
            worker_crashes=arbiter._stats["worker_crashes"],
            threads_abandoned=arbiter._stats["threads_abandoned"],
        )
        return stats

    def worker_kill(self, pid: int) -> dict:
        pid = int(pid)
        if pid not in self.arbiter.threads:
            return super().worker_kill(pid)
        self.arbiter.kill_worker(pid, signal.SIGTERM)  # ThreadWorker.deliver is thread-safe
        return {"success": True, "killed": pid}
