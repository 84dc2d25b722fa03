"""The three topologies, each owning its workers' whole life under GilArbiter.

GilArbiter chooses one per configuration (at start, and again after a HUP) from the pure
decision of `mode.py`, enters it, and hands it each seam of gunicorn's master loop:

- `ForkedProcesses`: gunicorn's own fork path, one event loop per process (`processes.py`);
- `ThreadsInMaster`: each worker an event-loop thread of the master (`threads_in_master.py`);
- `ProcessesOfThreads`: `-w P --threads N`, P forked processes of N event-loop threads each,
  master side and child side together (`processes_of_threads/`).
"""

from __future__ import annotations

from typing import Any

from gunicorn_gilworker.mode import Decision
from gunicorn_gilworker.mode import Topology as TopologyName
from gunicorn_gilworker.topologies.base import Topology
from gunicorn_gilworker.topologies.processes import ForkedProcesses
from gunicorn_gilworker.topologies.processes_of_threads import ProcessesOfThreads
from gunicorn_gilworker.topologies.threads_in_master import ThreadsInMaster

TOPOLOGIES: dict[TopologyName, type[Topology]] = {
    "processes": ForkedProcesses,
    "processes_of_threads": ProcessesOfThreads,
    "threads": ThreadsInMaster,
}


def topology_for(decision: Decision, arbiter: Any) -> Topology:
    return TOPOLOGIES[decision.topology](arbiter, decision)


__all__ = ["TOPOLOGIES", "Topology", "topology_for"]
