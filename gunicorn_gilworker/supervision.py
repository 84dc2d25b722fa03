"""Supervising worker threads: one implementation for the master (threads in the master) and for
a worker process of threads (`-w P --threads N`).

`WorkerThread` is the handle on one worker thread, doing to a thread what gunicorn does to a
worker process:
- an id that no `os.kill` can reach: Linux pids stay below `pid_max`, at most 2**22, so an id
  above that is never a process (a thread's own TID, passed to `kill()`, would signal the whole
  process);
- signals become actions on the worker's own event loop (see `deliver`);
- an exit status: the worker's `SystemExit` code, 3 for a boot error, 4 for an app load error;
- an exit notice: its owner reaps when a SIGCHLD reaches its queue (gunicorn's master loop does
  so), so the thread records its status, marks itself finished, then queues a SIGCHLD itself.

`ThreadSupervisor` keeps the handles of one process: starts them, signals them, and reaps the
finished ones (and, in the master, abandons a thread that outlived its abort).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError

from gunicorn_gilworker.upstream import raise_in_thread

THREAD_ID_BASE = 10_000_000  # above any Linux pid (PID_MAX_LIMIT is 2**22 = 4194304)


def thread_id(age: int) -> int:
    """The id of the worker thread of this age: never a process's."""
    return THREAD_ID_BASE + age


# The exit statuses that make gunicorn's master halt, with the reasons it gives.
HALT_REASONS = {
    Arbiter.WORKER_BOOT_ERROR: "Worker failed to boot.",
    Arbiter.APP_LOAD_ERROR: "App failed to load.",
}


class Notices(Protocol):
    """Where a finished thread says so: the master's SIG_QUEUE, or a worker process's own."""

    def put_nowait(self, item: int, /) -> None: ...


_aborted = threading.local()  # per worker thread: what it does first when aborted


def when_aborted(first: Callable[[], None]) -> None:
    """Have this thread call `first` as soon as a WorkerAbort is raised into it."""
    _aborted.first = first


class WorkerAbort(SystemExit):
    """Raised into a worker thread on SIGABRT, as gunicorn's abort handler exits with 1.

    CPython makes the exception in the aborted thread, the moment that thread runs Python code
    again and before its event loop gets control back: the thread stops accepting there and then.
    The stop asked of its loop from the master comes later: uvloop polls its listeners once more
    first, and a connection it accepts then would be closed unanswered as the worker ends."""

    def __init__(self, *args: object) -> None:
        super().__init__(1)
        first = getattr(_aborted, "first", None)
        if first is not None:
            _aborted.first = None  # once, however many times the exception is made
            with contextlib.suppress(Exception):  # the abort goes on regardless
                first()


def exit_status(code: object) -> int:
    """A `SystemExit` code as the exit status a process would have had."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)  # sys.exit("message") prints it and exits 1
    return 1


def failure_status(exc: BaseException, booted: bool, log: Any) -> int:
    """Report an exception that ended a worker, as gunicorn's forked child does, but once:
    gunicorn prints the message again after the traceback that already ends with it."""
    if isinstance(exc, AppImportError):  # its traceback is at debug level: say what failed
        log.debug("Exception while loading the application", exc_info=True)
        print(f"{exc}", file=sys.stderr)
        sys.stderr.flush()
        return Arbiter.APP_LOAD_ERROR
    log.exception("Exception in worker thread")
    return -1 & 0xFF if booted else Arbiter.WORKER_BOOT_ERROR


class WorkerThread:
    """A handle on one GilWorker running in a thread, answering for it to its owner.

    `hook_server` is what gunicorn's `post_fork` and `worker_exit` hooks get as their server:
    the arbiter, for threads in the master. A loop thread inside a worker process of threads
    runs no per-worker hook (None): its process runs them, as gunicorn does for gthread."""

    def __init__(self, worker: Any, notices: Notices, hook_server: Any = None) -> None:
        self.worker = worker  # made with runs_as="thread": its id and its own listeners
        self.notices = notices
        self.hook_server = hook_server
        self.id = worker.pid
        self.exit_code: int | None = None
        self.retired_at = 0.0  # when it was aborted and replaced (0: it still counts as a worker)
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"gilworker-{self.id}", daemon=True)

    def start(self) -> None:
        try:
            self.thread.start()
        except BaseException:
            self._close_sockets()
            raise

    @property
    def alive(self) -> bool:
        return not self.finished.is_set()

    def _run(self) -> None:
        worker = self.worker
        cfg, log = worker.cfg, worker.log
        status = 0
        try:
            log.info("Booting worker thread with id: %s", self.id)
            if not worker.sockets and cfg.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                # --reuse-port in the master binds nothing: each thread binds its own. A worker
                # process bound its own already, and its threads share them.
                worker.sockets = sock.create_sockets(cfg, log)
            if worker.runs_hooks:
                cfg.post_fork(self.hook_server, worker)
            worker.init_process()
        except SystemExit as exc:
            status = exit_status(exc.code)
        except BaseException as exc:
            status = failure_status(exc, worker.booted, log)
        finally:
            log.info("Worker exiting (thread id: %s)", self.id)
            if worker.runs_hooks:
                try:
                    cfg.worker_exit(self.hook_server, worker)
                except Exception:
                    log.warning("Exception during worker exit:\n%s", traceback.format_exc())
            self._close_sockets()
            self.exit_code = status
            self.finished.set()
            self.notices.put_nowait(signal.SIGCHLD)  # after the status: the reap sees it

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
        # USR1 (the process reopened the shared logs already), WINCH, others: nothing to do.

    def raise_in_thread(self, exc_type: type[BaseException]) -> bool:
        """Raise `exc_type` in the thread the next time it runs Python code (a thread blocked in
        C sees it only when the call returns)."""
        ident = self.thread.ident
        if ident is None or not self.alive:
            return False
        return raise_in_thread(ident, exc_type)


@dataclass(frozen=True)
class Ended:
    """A worker thread that is gone: reaped with its exit status, or abandoned."""

    handle: WorkerThread
    status: int
    abandoned: bool = False

    @property
    def crashed(self) -> bool:
        return self.abandoned or self.status != 0


class ThreadSupervisor:
    """The worker threads of one process, from start to reap."""

    def __init__(self, log: Any, notices: Notices) -> None:
        self.log = log
        self.notices = notices
        self.handles: dict[int, WorkerThread] = {}  # started, not yet reaped or abandoned

    def __contains__(self, wid: object) -> bool:
        return wid in self.handles

    def __len__(self) -> int:
        return len(self.handles)

    def live(self) -> list[WorkerThread]:
        """The threads that still count as workers (not aborted and replaced)."""
        return [h for h in self.handles.values() if not h.retired_at]

    def start(self, worker: Any, hook_server: Any = None) -> WorkerThread | None:
        handle = WorkerThread(worker, self.notices, hook_server)
        try:
            handle.start()
        except RuntimeError as exc:  # out of threads: the owner's next turn tries again
            self.log.error("Could not start worker thread %s: %s", handle.id, exc)
            worker.tmp.close()
            return None
        self.handles[handle.id] = handle
        return handle

    def deliver(self, wid: int, sig: int) -> None:
        handle = self.handles[wid]
        handle.deliver(sig)
        if sig == signal.SIGABRT and not handle.retired_at:
            # A thread stuck in a timeout may never end: its owner replaces it now and this
            # keeps watching it.
            handle.retired_at = time.monotonic()

    def deliver_all(self, sig: int) -> None:
        for wid in list(self.handles):
            self.deliver(wid, sig)

    def reap(self, abandon_after: float | None = None) -> Iterator[Ended]:
        """The threads that finished, with their exit status; and, if `abandon_after` is given,
        those that outlived their abort by that many seconds (cut off from their sockets: a
        thread cannot be killed)."""
        now = time.monotonic()
        for wid, handle in list(self.handles.items()):
            if handle.finished.is_set():
                del self.handles[wid]
                status = handle.exit_code or 0
                if status:
                    self.log.error("Worker (thread id:%s) exited with code %s.", wid, status)
                yield Ended(handle, status)
            elif (
                abandon_after is not None
                and handle.retired_at
                and now - handle.retired_at > abandon_after
            ):
                del self.handles[wid]
                handle.abandon()
                yield Ended(handle, 1, abandoned=True)

    def wait(self, timeout: float) -> bool:
        """Wait until every thread has finished, at most `timeout` seconds; True if they have."""
        deadline = time.monotonic() + timeout
        for handle in list(self.handles.values()):
            if not handle.finished.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True
