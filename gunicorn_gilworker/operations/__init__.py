"""What the master serves to operators (`--metrics-bind`): Prometheus metrics, /livez, /readyz.

- `measures.py`: what each event loop and each process counts, as plain numbers (no lock on
  the request path), and the metric families they make;
- `metric_files.py`: in the topologies that fork, each worker process publishes its numbers
  into prometheus_client's multiprocess directory, where the app's own metrics are too; the
  master folds a dead process's files into one per type, so the directory stays bounded;
- `master_metrics.py`: what only the master knows (workers, exits by cause, back-offs, the
  GIL, build info, each worker process's CPU and memory from /proc);
- `endpoint.py`: the HTTP server, a thread of the master, so it answers while workers are
  stuck or restarting; readiness follows the workers and fails from SIGTERM on.
"""
