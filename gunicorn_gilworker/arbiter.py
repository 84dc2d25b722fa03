"""GilArbiter: gunicorn's master loop, with a spawn strategy per topology.

gunicorn's Arbiter keeps everything it does (signal queue, HUP/TERM/INT/QUIT/TTIN/TTOU/USR1/USR2,
`manage_workers`, `murder_workers`, graceful stop, pidfile, systemd, the control socket). This
subclass overrides only its documented seams:

- `spawn_workers` / `spawn_worker`: handed to the strategy chosen for the configuration
  (`strategies/`), after claiming a worker slot (`budget.Slots`: a slot that keeps crashing
  backs off instead of spinning);
- `kill_worker` / `reap_workers`: a thread of the master goes to the master's ThreadSupervisor,
  a child process to gunicorn's own code (with its exit status kept for the crash budget);
- `setup`: after a HUP, forget the strategy (the new configuration chooses again) and, where
  the master imported the app for its workers, the app's modules (new code);
- `handle_usr1`: the crash tracebacks follow the reopened error log;
- `WORKERS`: a map whose walks see one moment of it, as gunicornc's thread walks it too
  (`worker_map.py`).
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

from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.reloader import reloader_engines

from gunicorn_gilworker.budget import CrashBudget, Slots
from gunicorn_gilworker.control import ControlHandlers, event_loops
from gunicorn_gilworker.faults import write_tracebacks_on_crash
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
from gunicorn_gilworker.stack import start_up_lines
from gunicorn_gilworker.strategies import Strategy, strategy_for
from gunicorn_gilworker.supervision import HALT_REASONS, Ended, ThreadSupervisor, failure_status
from gunicorn_gilworker.worker_map import WorkerMap


class GilArbiter(Arbiter):
    def __init__(self, app: Any) -> None:
        self.WORKERS: dict[int, Any] = WorkerMap()  # gunicornc's thread walks it too
        self.strategy: Strategy | None = None  # chosen when the first worker of a config starts
        self.app_in_master = False  # the master imported the app for its workers to share
        self.gil_watch: GilWatch | None = None
        self.code_reloader: Any = None
        self.import_warnings: list[str] = []
        self.halting = False
        self._wake_at = 0.0
        self._loops_reported = -1
        super().__init__(app)  # runs setup()
        self.threads = ThreadSupervisor(self.log, self.SIG_QUEUE)  # the master's worker threads
        self.slots = Slots(
            CrashBudget(self.cfg.max_restarts, self.cfg.restart_window), self.log, self._wake_in
        )
        self._stats.update(worker_crashes=0, threads_abandoned=0)  # private: gunicornc shows it

    def setup(self, app: Any) -> None:
        if self.strategy is not None and self.app_in_master:  # a HUP: successors get new code
            self._forget_app_code(app)
        with self._recording_warnings():  # a preloaded app may turn the GIL on
            super().setup(app)
        write_tracebacks_on_crash(self.log)
        if self.strategy is not None:  # a reload keeps the slots' records, with the new limits
            self.slots.budget.max_restarts = self.cfg.max_restarts
            self.slots.budget.window = self.cfg.restart_window
        self.strategy = None  # choose again: the reloaded config may ask for another topology

    def handle_usr1(self) -> None:
        super().handle_usr1()
        write_tracebacks_on_crash(self.log)

    # -- choosing and entering the topology -----------------------------------------------

    @property
    def decision(self) -> Decision | None:
        return self.strategy.decision if self.strategy else None

    def topology(self) -> Strategy:
        """The spawn strategy of this configuration, chosen before its first worker starts."""
        if self.strategy is None:
            decision = self._decide()
            (self.log.warning if decision.forced else self.log.info)(decision.message)
            self._log_stack(decision)
            strategy = strategy_for(decision, self)
            strategy.enter()
            self.strategy = strategy
        return self.strategy

    def _log_stack(self, decision: Decision) -> None:
        """What serves HTTP in every worker and, in thread mode, what makes it cost more."""
        thread_mode = decision.mode == "thread"
        loops = decision.workers * decision.threads if thread_mode else decision.workers
        for level, line in start_up_lines(
            self.cfg, loops, len(os.sched_getaffinity(0)), thread_mode
        ):
            getattr(self.log, level)(line)

    def _decide(self) -> Decision:
        requested = self.cfg.gil_mode
        free_threaded = free_threaded_build()
        self.app_in_master = needs_app_import(requested, free_threaded)
        if self.app_in_master:
            self._import_app()
        cause = gil_cause(
            self.import_warnings, os.environ.get("PYTHON_GIL"), sys._xoptions.get("gil")
        )
        return decide(
            requested, free_threaded, gil_enabled(), cause, self.cfg.threads, self.num_workers
        )

    def _import_app(self) -> None:
        """Import the app once, in the master: the GIL state after it decides the topology, and
        the workers (threads, or processes forked from here) share it. A failure halts the
        master as a failed worker would."""
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

    def start_gil_watch(self) -> None:
        """Notice an extension that turns the GIL back on at run time (thread workers)."""
        if self.gil_watch is None:
            self.gil_watch = GilWatch(self.log)
            self.gil_watch.start()

    def start_code_reloader(self) -> None:
        """--reload where workers share the master's import: a changed file makes the master
        reload (HUP) once, importing the app anew for the successors."""
        if not self.cfg.reload or self.code_reloader is not None:
            return

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

    # -- the seams: spawn, signal, reap ---------------------------------------------------

    def spawn_workers(self) -> None:
        self.topology().spawn_workers()

    def spawn_worker(self) -> int | None:
        strategy = self.topology()  # first: entering thread mode drops privileges
        slot = self.slots.claim(self.WORKERS)
        if slot is None:
            return None
        wid = strategy.spawn_worker()
        if wid is not None:
            self.slots.hold(wid, slot)
        return wid

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
        if pid not in self.threads:
            super().kill_worker(pid, sig)
            return
        self.threads.deliver(pid, sig)  # thread-safe: gunicornc calls it from its own thread
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._stats["workers_killed"] += 1
        if sig == signal.SIGABRT:  # stuck: replace it now; the supervisor keeps watching it
            self.WORKERS.pop(pid, None)

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
        loops = event_loops(self.WORKERS.values())
        if loops != self._loops_reported:  # as gunicorn reports its worker count
            self._loops_reported = loops
            self.log.debug(
                "%d event loops",
                loops,
                extra={"metric": "gilworker.event_loops", "value": loops, "mtype": "gauge"},
            )

    def reap_threads(self) -> None:
        for ended in self.threads.reap(abandon_after=self.cfg.graceful_timeout):
            self._thread_ended(ended)

    def _thread_ended(self, ended: Ended) -> None:
        """What gunicorn does for a reaped worker process, done for a thread."""
        wid, worker = ended.handle.id, ended.handle.worker
        if ended.abandoned:
            self._stats["threads_abandoned"] += 1
            self.log.error(
                "Worker thread %s did not stop within %ss of its abort: abandoned (%d so far)",
                wid,
                self.cfg.graceful_timeout,
                self._stats["threads_abandoned"],
                extra={"metric": "gilworker.threads_abandoned", "value": 1, "mtype": "counter"},
            )
        else:
            self.WORKERS.pop(wid, None)
            if ended.status in HALT_REASONS and not self.halting:  # one halt, however many fail
                raise HaltServer(HALT_REASONS[ended.status], ended.status)
        worker.tmp.close()
        self.cfg.child_exit(self, worker)
        self._worker_ended(wid, ended.crashed)

    def _worker_ended(self, wid: int, crashed: bool) -> None:
        if self.slots.release(wid, crashed and not self.halting):
            self._stats["worker_crashes"] += 1
            self.log.debug(  # a statsd counter
                "worker crashed",
                extra={"metric": "gilworker.worker_crashes", "value": 1, "mtype": "counter"},
            )

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        super().halt(reason, exit_status)

    # -- gunicornc --------------------------------------------------------------------------

    def _start_control_server(self) -> None:
        # Private seam: gunicorn 25.1+ starts gunicornc's server here; its `handlers` answer.
        super()._start_control_server()
        if self._control_server is not None:
            self._control_server.handlers = ControlHandlers(self)
