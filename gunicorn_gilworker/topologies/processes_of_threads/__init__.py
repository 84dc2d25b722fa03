"""Worker processes of event-loop threads (`-w P --threads N`): gunicorn's gthread model with an
event loop for each thread.

- `master.py`: the master's side, `ProcessesOfThreads`: gunicorn's fork, signal and reap of P
  processes, forked after the master imported the app so that they share its pages;
- `process.py`: the worker process, `ProcessOfThreads`: N GilWorkers as threads under the same
  thread supervision the master uses for threads in the master;
- `table.py`: what a worker process tells the master about its threads, in shared memory.
"""

from gunicorn_gilworker.topologies.processes_of_threads.master import ProcessesOfThreads
from gunicorn_gilworker.topologies.processes_of_threads.process import ProcessOfThreads

__all__ = ["ProcessOfThreads", "ProcessesOfThreads"]
