"""A worker process of event-loop threads (`-w P --threads N`), the child's side.

To the master it is an ordinary gunicorn worker process: a pid in WORKERS, gunicorn's signal
handlers (TERM graceful, INT/QUIT quick with `worker_int`, ABRT with `worker_abort`, USR1), one
heartbeat, `max_requests` (+ jitter), and the hooks gunicorn runs for a process (`post_fork`,
`post_worker_init`, `worker_exit`, `child_exit`) once per process, as for gthread.

Inside, it supervises N GilWorkers as threads with the master's own thread supervision
(`supervision.py`): each on its own event loop and its own dup of the listeners; a thread that
dies is replaced in this process within milliseconds, under the same crash budget per slot.
It never abandons a thread: a loop blocked past `--timeout` holds back this process's heartbeat,
so the master aborts and replaces the whole process, which really ends a thread stuck in C.
Requests are counted over all the threads, so `max_requests` recycles the whole process and
gives its memory back.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gunicorn.workers.base import Worker
from uvicorn.server import ServerState

from gunicorn_gilworker.budget import CrashBudget, Slots
from gunicorn_gilworker.faults import write_tracebacks_on_crash
from gunicorn_gilworker.gil_watch import GilWatch
from gunicorn_gilworker.supervision import HALT_REASONS, ThreadSupervisor
from gunicorn_gilworker.topologies.processes_of_threads.table import ThreadRow, ThreadTable
from gunicorn_gilworker.upstream import gil_enabled, server_state, set_heartbeat
from gunicorn_gilworker.worker import GilWorker, refuse_wsgi

TURN = 0.1  # seconds between two looks at the threads (uvicorn's own tick)


class ProcessOfThreads(Worker):
    runs_as = "process"  # to the master and to gunicorn's hooks, a worker process
    gil_mode = runs_as  # the name hooks read it by (README: Thread mode)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in the master, before the fork
        self.threads = self.cfg.threads
        self.table = ThreadTable(self.threads)  # shared with the master across the fork
        self.events: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.stopping = "graceful"  # "quick" on INT/QUIT and boot errors, "abort" on ABRT
        self.thread_age = 0
        self.thread_crashes = 0

    @property
    def loops(self) -> int:
        """Event loops serving in this process now (read by the master from the table)."""
        return len(self.table.read()[0])

    def __str__(self) -> str:
        return f"<ProcessOfThreads {self.pid} of {self.threads} threads>"

    # -- gunicorn's worker-process life, once per process ---------------------------------------

    def init_signals(self) -> None:
        super().init_signals()
        write_tracebacks_on_crash(self.log)  # after gunicorn's handlers: it chains to them

    def handle_usr1(self, sig: int, frame: Any) -> None:
        super().handle_usr1(sig, frame)
        write_tracebacks_on_crash(self.log)  # the log's descriptor changed

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self.events.put_nowait(sig)  # wake the loop now

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.stopping = "quick"
        super().handle_quit(sig, frame)  # worker_int, then SystemExit(0) out of run()

    def handle_abort(self, sig: int, frame: Any) -> None:
        self.stopping = "abort"
        super().handle_abort(sig, frame)  # worker_abort, then SystemExit(1) out of run()

    def load_wsgi(self) -> None:
        # The master watches the files for --reload here: its reload imports the app anew before
        # it forks the next processes. gunicorn's per-process watcher, made just before this
        # call, would stop this process before a successor had the new code.
        self.reloader = None
        super().load_wsgi()  # the app the master imported, shared with it across the fork
        refuse_wsgi(self.wsgi)

    # -- the loop of this process -----------------------------------------------------------

    def run(self) -> None:
        self.slots = Slots(
            CrashBudget(self.cfg.max_restarts, self.cfg.restart_window),
            self.log,
            wake_in=lambda delay: None,  # the loop looks again every TURN
        )
        self.supervisor = ThreadSupervisor(self.log, self.events)
        self.budget = RequestBudget(self.max_requests, lambda: self.events.put_nowait(0))
        self.gil_watch = GilWatch(self.log)
        self.gil_watch.start()
        try:
            while self.alive:
                self.reap()
                self.spawn_threads()
                served = self.budget.spent
                if served >= self.max_requests:
                    self.log.info(
                        "Autorestarting worker after current request "
                        "(%d served by its %d threads; max_requests %d).",
                        served,
                        self.threads,
                        self.max_requests,
                    )
                    break
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                self.heartbeat()
                self.gil_watch.check()
                self.wait_for_event(TURN)
        finally:
            self.stop_threads()

    def spawn_threads(self) -> None:
        while len(self.supervisor.live()) < self.threads:
            slot = self.slots.claim(h.id for h in self.supervisor.live())
            if slot is None:
                return
            self.thread_age += 1
            counted = self.max_requests < sys.maxsize
            worker = GilWorker(
                self.thread_age,
                self.pid,
                self.sockets,
                self.app,
                self.timeout,
                self.cfg,
                self.log,
                runs_as="thread",
                host=self,  # the worker the request hooks get, as gthread passes its own
                server_state=CountedState(self.budget) if counted else None,
            )
            handle = self.supervisor.start(worker)  # no per-thread hooks: this process ran them
            if handle is None:
                return
            self.slots.hold(handle.id, slot)

    def reap(self) -> None:
        for ended in self.supervisor.reap():
            state = server_state(ended.handle.worker.server)
            if isinstance(state, CountedState):
                self.budget.leave(state)
            if ended.status in HALT_REASONS:  # a boot or app load error: the master halts
                self.stopping = "quick"
                sys.exit(ended.status)
            if self.slots.release(ended.handle.id, ended.crashed):
                self.thread_crashes += 1
                self.log.debug(
                    "worker thread crashed",
                    extra={"metric": "gilworker.thread_crashes", "value": 1, "mtype": "counter"},
                )

    def heartbeat(self) -> None:
        """This process's heartbeat is its oldest thread's: a loop blocked past --timeout holds
        it back, and the master aborts the whole process. (gunicorn's WorkerTmp keeps a
        heartbeat as the file's time, on the monotonic clock.)"""
        now = time.monotonic()
        rows = [
            ThreadRow(
                h.id,
                h.worker.age,
                min(h.worker.tmp.last_update(), now),
                server_state(h.worker.server).total_requests,
            )
            for h in self.supervisor.live()
        ]
        oldest = min((row.last_heartbeat for row in rows), default=now)
        set_heartbeat(self.tmp, oldest)
        self.table.write(rows, self.thread_crashes, gil_enabled())

    def wait_for_event(self, timeout: float) -> None:
        """Sleep until a thread ends or a signal arrives, at most `timeout` seconds."""
        try:
            self.events.get(timeout=timeout)
            while True:
                self.events.get_nowait()
        except queue.Empty:
            pass

    def stop_threads(self) -> None:
        """Graceful (TERM, max_requests, a parent gone): let each thread drain its connections;
        the master bounds the wait with --graceful-timeout. Quick (INT/QUIT, a boot error):
        close them now. Abort (ABRT, a timeout): leave at once, since a thread may be stuck in
        C; the process's exit ends every thread."""
        if self.stopping == "abort":
            return
        quick = self.stopping == "quick"
        # This process's copies of the listeners, kept to start threads: no thread starts now.
        # Open, they keep the socket listening after every thread closed its own, and the
        # kernel would accept connections that nobody serves, then reset them at exit.
        for listener in self.sockets:
            listener.close()
        self.supervisor.deliver_all(signal.SIGQUIT if quick else signal.SIGTERM)
        self.supervisor.wait(timeout=2.0 if quick else self.cfg.graceful_timeout)


class RequestBudget:
    """`max_requests` for a whole process, spent by all its threads.

    Each thread counts its own requests (no shared counter on the hot path: on a free-threaded
    build a lock taken by every request of every thread is contended). What is left is shared
    out among the threads; one that has used its share rechecks the process's total under the
    lock and shares out the rest anew. When nothing is left, `spent_out` is called at once, so
    the process stops taking connections within a request or so of the limit."""

    def __init__(self, limit: int, spent_out: Callable[[], None]) -> None:
        self.limit = limit
        self.spent_out = spent_out
        self.states: list[CountedState] = []
        self.of_ended_threads = 0
        self.lock = threading.Lock()
        self.done = False

    @property
    def spent(self) -> int:
        return self.of_ended_threads + sum(state.counted for state in self.states)

    def join(self, state: CountedState) -> None:
        with self.lock:
            self.states.append(state)
            self._share_out()

    def leave(self, state: CountedState) -> None:
        with self.lock:
            self.states.remove(state)
            self.of_ended_threads += state.counted
            self._share_out()

    def share_used(self) -> None:
        with self.lock:
            self._share_out()

    def _share_out(self) -> None:
        left = self.limit - self.spent
        if left <= 0:
            for state in self.states:
                state.share_ends = sys.maxsize  # nothing more to share out
            if not self.done:
                self.done = True
                self.spent_out()
            return
        each = -(-left // max(1, len(self.states)))  # rounded up: the shares cover what is left
        for state in self.states:
            state.share_ends = state.counted + each


class CountedState(ServerState):
    """uvicorn's state of one thread's server, whose request count (uvicorn adds 1 per request)
    also spends its process's RequestBudget."""

    def __init__(self, budget: RequestBudget) -> None:
        self.budget = budget
        self.counted = 0
        self.share_ends = sys.maxsize
        super().__init__()
        budget.join(self)

    @property  # type: ignore[override]
    def total_requests(self) -> int:
        return self.counted

    @total_requests.setter
    def total_requests(self, value: int) -> None:
        self.counted = value
        if value >= self.share_ends:
            self.budget.share_used()
