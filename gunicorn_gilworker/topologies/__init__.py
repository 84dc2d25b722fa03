"""How the workers of one configuration come to life: one spawn strategy per topology.

GilArbiter picks the strategy once per configuration (at start, and again after a HUP), from
the pure decision of `mode.py`; it then asks the strategy to enter its topology (what the
process must do once, before any worker starts) and to spawn workers:

- `ForkedProcesses`: gunicorn's own fork path, untouched (`processes.py`);
- `ProcessesOfThreads`: the same fork path, each child a worker process of N event-loop
  threads (`hosted.py`; the child's side is `host.py`);
- `ThreadsInMaster`: each worker an event-loop thread of the master (`threads.py`).

Signalling and reaping follow what a worker is, not the configuration that spawned it (after a
HUP the old workers drain under the new configuration): a child process is signalled and reaped
by gunicorn's own code, a thread of the master by the master's ThreadSupervisor.
"""

from __future__ import annotations

from typing import Any

from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.strategies.base import Strategy
from gunicorn_gilworker.strategies.hosted import ProcessesOfThreads
from gunicorn_gilworker.strategies.processes import ForkedProcesses
from gunicorn_gilworker.strategies.threads import ThreadsInMaster

STRATEGIES: dict[str, type[Strategy]] = {
    "processes": ForkedProcesses,
    "processes_of_threads": ProcessesOfThreads,
    "threads": ThreadsInMaster,
}


def strategy_for(decision: Decision, arbiter: Any) -> Strategy:
    return STRATEGIES[decision.topology](arbiter, decision)


__all__ = ["Strategy", "strategy_for"]
