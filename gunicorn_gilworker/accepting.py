"""When a worker takes new connections.

A worker stops accepting, and takes connections again, for two reasons:

- `--worker-connections`: at that many open connections (per event loop), as gunicorn's
  gthread worker does; the other workers take the new ones, or they wait in the listen backlog.
- File descriptors: every worker thread of a process shares one RLIMIT_NOFILE. An accept that
  fails with EMFILE is handled badly by both loops when several run in one process: libuv's
  spare-descriptor trick is "not reliable in a multi-threaded environment" (its own comment)
  and uvloop then spins on accept4 or closes its server for good, without a word; asyncio keeps
  going through its accept loop after the error, logging and rescheduling once per backlog slot
  (CPython gh-151615, fixed after 3.13.5). So a worker stops accepting before that: once the
  process has three quarters of its limit open it counts `/proc/self/fd` at every new
  connection, stops at `limit - reserve`, and accepts again once below it (checked every 0.1 s).
  Both loops accept a whole backlog's worth of connections in one callback before any protocol
  sees one, so a burst larger than the reserve meets EMFILE anyway: asyncio reports it, and the
  worker pauses the same way; libuv closes the rest of that backlog (its spare-descriptor trick)
  and reports nothing, and the count stops the worker at the next connection. Each episode is
  logged once per process (one FdBudget per process, per_process.py).

The threaded topologies raise the soft limit to the hard one at start (`raise_fd_limit`).
"""

from __future__ import annotations

import errno
import os
import resource
import threading
from collections.abc import Callable
from typing import Any, Protocol

from gunicorn_gilworker.operations.measures import process_measures
from gunicorn_gilworker.per_process import PerProcess

FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_FD_DIR = "/proc/self/fd"


def raise_fd_limit(log: Any, workers: str) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one, for `workers` that share it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= hard:
        log.info("gilworker: %s share an open-file limit of %d", workers, soft)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("gilworker: could not raise the open-file limit from %d: %s", soft, exc)
        return
    log.info(
        "gilworker: raised the open-file limit from %d to %d: %s share it", soft, hard, workers
    )


class FdBudget:
    """This process's file descriptors, against its limit (one per process).

    Counting `/proc/self/fd` costs a directory listing, too much for every connection. So the
    budget estimates: the descriptors that are not connections (calibrated from the listing
    every second) plus every worker's open connections; only an estimate near the limit is
    checked by listing."""

    def __init__(self) -> None:
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.reserve = max(32, self.limit // 20)  # for the app, logs, upstream connections
        self.countable = os.path.isdir(_FD_DIR)
        self.gates: list[AcceptGate] = []  # replaced, never changed in place: read without lock
        self.not_connections = 0
        self.calibrated_at = 0.0
        self.paused: set[int] = set()  # workers paused for descriptors
        self.lock = threading.Lock()

    def join(self, gate: AcceptGate) -> None:
        with self.lock:
            self.gates = [*self.gates, gate]

    def leave(self, gate: AcceptGate) -> None:
        with self.lock:
            self.gates = [g for g in self.gates if g is not gate]
            self.paused.discard(id(gate))

    def connections(self) -> int:
        return sum(gate.open_connections for gate in self.gates)

    def open_fds(self) -> int:
        """Counted (and the estimate calibrated)."""
        if not self.countable:
            return 0
        try:
            counted = len(os.listdir(_FD_DIR))
        except OSError:  # listing needs a descriptor too: none is left
            return self.limit
        self.not_connections = counted - self.connections()
        return counted

    def calibrate(self, now: float) -> None:
        if now - self.calibrated_at >= 1.0:
            self.calibrated_at = now
            self.open_fds()

    def maybe_nearly_out(self) -> bool:
        """From the estimate: worth counting?"""
        return self.countable and self.not_connections + self.connections() >= (
            self.limit - 2 * self.reserve
        )

    def nearly_out(self, open_fds: int) -> bool:
        return self.countable and open_fds >= self.limit - self.reserve

    def paused_one(self, gate: AcceptGate) -> bool:
        """Record a paused worker; True if it starts an episode (none was paused)."""
        with self.lock:
            first = not self.paused
            self.paused.add(id(gate))
            return first

    def resumed_one(self, gate: AcceptGate) -> bool:
        """Record a worker accepting again; True if it ends the episode."""
        with self.lock:
            self.paused.discard(id(gate))
            return not self.paused


_BUDGET: PerProcess[FdBudget] = PerProcess()


def fd_budget() -> FdBudget:
    """This process's FdBudget (a forked child makes its own, with its own limit)."""
    return _BUDGET.get(FdBudget)


class _NotStarted:
    """A gate's budget before its worker starts: no pause can happen yet."""

    def maybe_nearly_out(self) -> bool:
        return False

    def leave(self, gate: AcceptGate) -> None:
        pass


_NOT_STARTED: Any = _NotStarted()


class Listening(Protocol):
    """What a gate needs from its worker's server."""

    def stop_accepting(self) -> None: ...
    def accept_again(self) -> None: ...


class AcceptGate:
    """One worker's accepting: paused while any reason holds, resumed when none does."""

    def __init__(
        self,
        server: Listening,
        worker_connections: int,
        log: Any,
        budget: FdBudget | None = None,
        served_enough: Callable[[], bool] = lambda: False,
    ) -> None:
        self.server = server
        # --max-requests reached: uvicorn stops only at its next 0.1 s tick, and a worker that
        # kept accepting until then would serve many more than asked
        self.served_enough = served_enough
        self.worker_connections = worker_connections
        self.log = log
        self.budget = budget or _NOT_STARTED
        self.reasons: set[str] = set()
        self.open_connections = 0

    def start(self) -> None:
        """In the worker's own process (its worker object may be made before a fork)."""
        if self.budget is _NOT_STARTED:
            self.budget = fd_budget()
        self.budget.join(self)
        self.budget.open_fds()

    def stop(self) -> None:
        self.budget.leave(self)

    def connection_made(self, open_connections: int) -> None:
        self.open_connections = open_connections
        if open_connections >= self.worker_connections:
            self.pause("connections")
        if "max_requests" not in self.reasons and self.served_enough():
            self.pause("max_requests")  # for good: the worker stops at its next tick
        budget = self.budget
        # (asyncio makes the protocols of a whole accepted batch after it has paused)
        if "descriptors" not in self.reasons and budget.maybe_nearly_out():
            open_fds = budget.open_fds()
            if budget.nearly_out(open_fds):
                self.pause("descriptors", open_fds)

    def connection_lost(self, open_connections: int) -> None:
        self.open_connections = open_connections
        if "connections" in self.reasons and open_connections < self.worker_connections:
            self.resume("connections")

    def out_of_descriptors(self) -> None:
        """An accept failed for want of descriptors (asyncio reports it, once per remaining
        backlog slot of its accept loop: CPython gh-151615)."""
        if "descriptors" not in self.reasons:
            self.pause("descriptors", self.budget.open_fds())

    def tick(self, now: float) -> None:
        """Every 0.1 s on the worker's loop: keep the estimate true, and accept again once the
        process has descriptors to spare."""
        budget = self.budget
        budget.calibrate(now)
        if "descriptors" in self.reasons:
            open_fds = budget.open_fds()
            if not budget.nearly_out(open_fds):
                self.resume("descriptors", open_fds)

    def pause(self, reason: str, open_fds: int = 0) -> None:
        if reason in self.reasons:
            return
        if reason != "max_requests":
            process_measures().count("gilworker_accept_pauses", reason=reason)
        if not self.reasons:
            self.server.stop_accepting()
        self.reasons.add(reason)
        if reason == "descriptors" and self.budget.paused_one(self):
            self.log.warning(
                "gilworker: %d of %d file descriptors open: workers stop accepting until "
                "some close (raise the limit: ulimit -n, systemd's LimitNOFILE)",
                open_fds,
                self.budget.limit,
                extra={"metric": "gilworker.accept_paused", "value": 1, "mtype": "counter"},
            )

    def resume(self, reason: str, open_fds: int = 0) -> None:
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        if not self.reasons:
            self.server.accept_again()
        if reason == "descriptors" and self.budget.resumed_one(self):
            self.log.info("gilworker: accepting again (%d file descriptors open)", open_fds)
