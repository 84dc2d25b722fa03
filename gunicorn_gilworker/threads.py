"""A worker thread standing in for a gunicorn worker process.

What gunicorn does to a worker process, done to a thread:
- an id in `Arbiter.WORKERS` that no `os.kill` can reach: Linux pids stay below `pid_max`, at most
  2**22, so an id above that is never a process (a thread's own TID, passed to `kill()`, would
  signal the master);
- signals become actions on the worker's own event loop (see `deliver`);
- an exit status: the worker's `SystemExit` code, 3 for a boot error, 4 for an app load error;
- an exit notice: gunicorn reaps only on SIGCHLD, so the thread records its status, marks itself
  finished, then queues a SIGCHLD for the master itself.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import sys
import threading
import traceback
from typing import Any

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError

THREAD_ID_BASE = 10_000_000  # above any Linux pid (PID_MAX_LIMIT is 2**22 = 4194304)

# The exit statuses that make gunicorn's master halt, with the reasons it gives.
HALT_REASONS = {
    Arbiter.WORKER_BOOT_ERROR: "Worker failed to boot.",
    Arbiter.APP_LOAD_ERROR: "App failed to load.",
}


class WorkerAbort(SystemExit):
    """Raised into a worker thread on SIGABRT, as gunicorn's abort handler exits with 1."""

    def __init__(self, *args: object) -> None:
        super().__init__(1)


def exit_status(code: object) -> int:
    """A `SystemExit` code as the exit status a process would have had."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def failure_status(exc: BaseException, booted: bool, log: Any) -> int:
    """Report an exception that ended a worker, as gunicorn's forked child does."""
    if isinstance(exc, AppImportError):
        log.debug("Exception while loading the application", exc_info=True)
        status = Arbiter.APP_LOAD_ERROR
    else:
        log.exception("Exception in worker thread")
        status = -1 & 0xFF if booted else Arbiter.WORKER_BOOT_ERROR
    print(f"{exc}", file=sys.stderr)
    sys.stderr.flush()
    return status


class ThreadWorker:
    """Starts one GilWorker in a thread and answers for it to the master."""

    def __init__(self, worker: Any, arbiter: Any) -> None:
        self.worker = worker
        self.arbiter = arbiter
        self.id = THREAD_ID_BASE + worker.age
        self.exit_code: int | None = None
        self.retired_at = 0.0  # when it was aborted and replaced (0: it still counts as a worker)
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"gilworker-{self.id}", daemon=True)
        worker.gil_mode = "thread"

    def start(self) -> None:
        self.worker.pid = self.id
        # uvicorn closes the sockets it served on: each thread gets its own dup of each listener.
        self.worker.sockets = [listener.dup() for listener in self.worker.sockets]
        try:
            self.thread.start()
        except BaseException:
            self._close_sockets()
            raise

    @property
    def alive(self) -> bool:
        return not self.finished.is_set()

    def _run(self) -> None:
        worker, arbiter = self.worker, self.arbiter
        cfg, log = worker.cfg, worker.log
        status = 0
        try:
            log.info("Booting worker thread with id: %s", self.id)
            if cfg.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                self._close_sockets()
                worker.sockets = sock.create_sockets(cfg, log)
            cfg.post_fork(arbiter, worker)
            worker.init_process()
        except SystemExit as exc:
            status = exit_status(exc.code)
        except BaseException as exc:
            status = failure_status(exc, worker.booted, log)
        finally:
            log.info("Worker exiting (thread id: %s)", self.id)
            try:
                cfg.worker_exit(arbiter, worker)
            except Exception:
                log.warning("Exception during worker exit:\n%s", traceback.format_exc())
            self._close_sockets()
            self.exit_code = status
            self.finished.set()
            arbiter.SIG_QUEUE.put_nowait(signal.SIGCHLD)  # after the status: the reap sees it

    def abandon(self) -> None:
        """Cut a thread that will not end off from its listeners (it may wake up one day)."""
        self.worker.stop(graceful=False)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for listener in self.worker.sockets:
            listener.close()

    # -- "signals" ----------------------------------------------------------------------------

    def deliver(self, sig: int) -> None:
        """What a worker process does on `sig`, done to the thread without `signal.signal`."""
        if not self.alive:
            return
        if sig == signal.SIGTERM:
            self.worker.stop(graceful=True)
        elif sig in (signal.SIGINT, signal.SIGQUIT):
            self.worker.quit()
        elif sig == signal.SIGABRT:
            self.worker.abort()
            self.raise_in_thread(WorkerAbort)
        elif sig == signal.SIGKILL:
            self.worker.stop(graceful=False)
            self.raise_in_thread(WorkerAbort)
        # USR1 (the master reopened the shared logs already), WINCH, others: nothing to do.

    def raise_in_thread(self, exc_type: type[BaseException]) -> bool:
        """Raise `exc_type` in the thread the next time it runs Python code (a thread blocked in
        C sees it only when the call returns)."""
        ident = self.thread.ident
        if ident is None or not self.alive:
            return False
        set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
        changed = set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
        return changed == 1
