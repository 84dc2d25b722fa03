"""GilArbiter: gunicorn's master loop, each worker seam handed to the worker's topology.

gunicorn's Arbiter keeps everything it does (signal queue, HUP/TERM/INT/QUIT/TTIN/TTOU/USR1/USR2,
`manage_workers`, `murder_workers`, graceful stop, pidfile, systemd, the control socket). This
subclass overrides only its documented seams, and hands each to a topology (`topologies/`):

- `spawn_workers` / `spawn_worker`: to the topology chosen for the configuration (chosen once per
  configuration from the pure rules of `mode.py`, entered before its first worker), after
  claiming a worker slot (`budget.Slots`: a slot that keeps crashing backs off);
- `kill_worker` / `reap_workers`: to the topology that started the worker (after a HUP that
  chose another topology, the old workers drain under the one that started them);
- `setup`: after a HUP, choose again, and where the master imported the app for its workers,
  forget the app's modules (new code);
- `handle_usr1`: the crash tracebacks follow the reopened error log;
- `WORKERS`: a map whose walks see one moment of it, as gunicornc's thread walks it too;
- `start`, `signal`, `handle_term`, `reload`, `stop`: --metrics-bind's endpoint (operations/),
  told why each worker is signalled and how it ended, and --shutdown-delay.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from gunicorn_gilworker.budget import CrashBudget, Slots
from gunicorn_gilworker.control import ControlHandlers
from gunicorn_gilworker.faults import write_tracebacks_on_crash
from gunicorn_gilworker.mode import (
    Decision,
    decide,
    free_threaded_build,
    gil_cause,
    needs_app_import,
)
from gunicorn_gilworker.operations import metric_files
from gunicorn_gilworker.operations.app_collectors import AppCollectors
from gunicorn_gilworker.operations.service import Operations, forks_workers
from gunicorn_gilworker.reload import MasterReloader, forget_app_modules
from gunicorn_gilworker.supervision import HALT_REASONS, failure_status
from gunicorn_gilworker.topologies import Topology, topology_for
from gunicorn_gilworker.upstream import (
    arbiter_stats,
    gil_enabled,
    gil_xoption,
    reaped_statuses,
    start_control_server,
)
from gunicorn_gilworker.worker_map import WorkerMap


class GilArbiter(Arbiter):
    def __init__(self, app: Any) -> None:
        self.WORKERS: dict[int, Any] = WorkerMap()  # gunicornc's thread walks it too
        self.current: Topology | None = None  # chosen when the first worker of a config starts
        self.topologies: dict[str, Topology] = {}  # each run since start: it owns its workers
        self.app_in_master = False  # the master imported the app for its workers to share
        self.import_warnings: list[str] = []
        self.halting = False
        self._wake_at = 0.0
        self._loops_reported = -1
        self.operations: Operations | None = None  # --metrics-bind
        self.app_collectors = AppCollectors()  # the app's prometheus_client metrics, per HUP
        self._reloading = False
        self.stopping_workers = False
        self._stop_at: float | None = None  # --shutdown-delay: when the graceful stop begins
        super().__init__(app)  # runs setup()
        self.reloader = MasterReloader(self)
        self.slots = Slots(
            CrashBudget(self.cfg.max_restarts, self.cfg.restart_window), self.log, self._wake_in
        )
        arbiter_stats(self).update(worker_crashes=0, threads_abandoned=0)  # gunicornc shows it

    def setup(self, app: Any) -> None:
        if self.current is not None and self.app_in_master:  # a HUP: successors get new code
            self._forget_app_code(app)
        self._set_up_operations(app.cfg)  # before a preloaded app imports prometheus_client
        # a preloaded app may turn the GIL on; a HUP with --preload imports it again here
        with self._recording_warnings(), self.app_collectors.importing():
            super().setup(app)
        write_tracebacks_on_crash(self.log)
        if self.current is not None:  # a reload keeps the slots' records, with the new limits
            self.slots.budget.max_restarts = self.cfg.max_restarts
            self.slots.budget.window = self.cfg.restart_window
        self.current = None  # choose again: the reloaded config may ask for another topology

    def handle_usr1(self) -> None:
        super().handle_usr1()
        write_tracebacks_on_crash(self.log)

    # -- operations: --metrics-bind and --shutdown-delay ----------------------------------

    def _set_up_operations(self, cfg: Any) -> None:
        if self.operations is not None:
            if cfg.metrics_bind != self.operations.metrics_bind:
                self.log.warning("gilworker: a new --metrics-bind takes effect at a restart")
            return
        if cfg.metrics_bind:
            metric_files.master_pid = os.getpid()
            forks = forks_workers(cfg, free_threaded_build())
            # the directory as gunicorn's --env would set it (it applies --env after setup)
            environ = {**os.environ, **(cfg.env or {})}
            self.operations = Operations(self, cfg.metrics_bind, forks, environ)

    def start(self) -> None:
        if self.operations is not None:
            self.operations.bind(self.cfg.address)  # first: a bad address binds nothing else
        super().start()
        if self.operations is not None:
            self.operations.start()

    def signal(self, sig: int, frame: Any) -> None:
        if self.operations is not None:  # readiness fails from the moment the signal lands
            self.operations.stop_signal(self.SIG_NAMES.get(sig, "").upper())
        super().signal(sig, frame)

    def handle_term(self) -> None:
        delay = self.cfg.shutdown_delay
        if delay > 0 and self._stop_at is None:
            self._stop_at = time.monotonic() + delay
            self.log.info(
                "gilworker: SIGTERM: not ready from now on; serving for %ss more, then the "
                "graceful stop",
                delay,
            )
            self._wake_in(delay)
            return
        super().handle_term()  # a second SIGTERM stops at once

    def reload(self) -> None:
        self._reloading = True  # the workers it stops are stopped for the HUP
        try:
            super().reload()
        finally:
            self._reloading = False

    def stop(self, graceful: bool = True) -> None:
        self.stopping_workers = True
        super().stop(graceful)

    # -- choosing and entering the topology -----------------------------------------------

    @property
    def decision(self) -> Decision | None:
        return self.current.decision if self.current else None

    def topology(self) -> Topology:
        """The topology of this configuration, chosen and entered before its first worker."""
        if self.current is None:
            decision = self._decide()
            if self.operations is not None:  # before a first fork, its directory
                self.operations.entering(decision.topology != "threads")
            topology = self.topologies.get(decision.topology) or topology_for(decision, self)
            self.topologies[decision.topology] = topology
            topology.enter(decision)
            self.current = topology
        return self.current

    def owner(self, wid: int) -> Topology | None:
        """The topology that started worker `wid` and has not reaped it."""
        # a snapshot: the metrics endpoint's thread asks while a HUP may add a topology
        return next((t for t in tuple(self.topologies.values()) if t.owns(wid)), None)

    def _decide(self) -> Decision:
        requested = self.cfg.gil_mode
        free_threaded = free_threaded_build()
        self.app_in_master = needs_app_import(requested, free_threaded)
        if self.app_in_master:
            self._import_app()
        cause = gil_cause(self.import_warnings, os.environ.get("PYTHON_GIL"), gil_xoption())
        return decide(
            requested, free_threaded, gil_enabled(), cause, self.cfg.threads, self.num_workers
        )

    def _import_app(self) -> None:
        """Import the app once, in the master: the GIL state after it decides the topology, and
        the workers (threads, or processes forked from here) share it. A failure halts the
        master as a failed worker would."""
        with self._recording_warnings(), self.app_collectors.importing():
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

    def _forget_app_code(self, app: Any) -> None:
        app_dirs = [app.cfg.chdir, *filter(None, (app.cfg.pythonpath or "").split(","))]
        forgotten = forget_app_modules(app_dirs)
        app.callable = None  # gunicorn's cache of the loaded app: load it again
        count = len(forgotten)
        self.log.info(
            "gilworker: the app's %s will be imported anew for the new workers",
            "module" if count == 1 else f"{count} modules",
        )

    # -- the seams: spawn, signal, reap ---------------------------------------------------

    def spawn_workers(self) -> None:
        self.topology().spawn_workers()

    def spawn_worker(self) -> int | None:
        topology = self.topology()  # first: entering thread mode drops privileges
        slot = self.slots.claim(self.WORKERS)
        if slot is None:
            return None
        wid = topology.spawn_worker()
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
        if self.operations is not None:
            self.operations.signalling(pid, sig, self._reloading, self.stopping_workers)
        owner = self.owner(pid)
        if owner is None:  # not started by a topology (gunicorn's own bookkeeping)
            super().kill_worker(pid, sig)
        else:
            owner.kill(pid, sig)

    def reap_workers(self) -> None:
        if self.operations is not None:  # gunicorn's waits (a HUP's, a stop's) reap as they wait
            self.operations.loop_turned()
        try:
            with reaped_statuses() as reaped:
                super().reap_workers()
        except HaltServer:
            # gunicorn raises it again for each further worker that failed to boot, from inside
            # halt() itself, which then dies with a traceback and exit status 1.
            if not self.halting:
                raise
        finally:
            for pid, status in reaped:
                if self.owner(pid) is not None and pid not in self.WORKERS:
                    how = ended_how(status)
                    self.worker_ended(pid, how is not None, how, process=True)
        self._reap_topologies()

    def _reap_topologies(self) -> None:
        for topology in list(self.topologies.values()):
            topology.reap()

    def worker_ended(
        self, wid: int, crashed: bool, how: str | None = None, process: bool = False
    ) -> None:
        """A worker of any topology is gone: its slot is free, a crash charged to it. `how`:
        None for a clean end, else the signal that ended a process ("SIGSEGV") or "exit N"."""
        if self.operations is not None:
            self.operations.worker_ended(wid, how or ("crash" if crashed else None), process)
        if self.slots.release(wid, crashed and not self.halting):
            arbiter_stats(self)["worker_crashes"] += 1
            self.log.debug(  # a statsd counter
                "worker crashed",
                extra={"metric": "gilworker.worker_crashes", "value": 1, "mtype": "counter"},
            )

    def manage_workers(self) -> None:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            raise StopIteration  # --shutdown-delay is over: gunicorn's graceful stop
        if self.operations is not None:
            self.operations.loop_turned()
        self._reap_topologies()  # on every loop turn too: a thread's exit notice may be lost
        super().manage_workers()
        loops = self.event_loops()
        if loops != self._loops_reported:  # as gunicorn reports its worker count
            self._loops_reported = loops
            self.log.debug(
                "%d event loops",
                loops,
                extra={"metric": "gilworker.event_loops", "value": loops, "mtype": "gauge"},
            )

    def event_loops(self) -> int:
        return sum(t.event_loops() for t in tuple(self.topologies.values()))

    def halt(self, reason: str | None = None, exit_status: int = 0) -> None:
        self.halting = True
        try:
            super().halt(reason, exit_status)
        finally:  # halt ends the process
            if self.operations is not None:
                self.operations.close()

    # -- gunicornc --------------------------------------------------------------------------

    def _start_control_server(self) -> None:
        start_control_server(self, super()._start_control_server, ControlHandlers(self))


def ended_how(status: int) -> str | None:
    """A worker process's wait status: None for exit 0, else "exit N" or the signal's name."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
    code = os.waitstatus_to_exitcode(status)
    return f"exit {code}" if code else None
