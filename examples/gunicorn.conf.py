"""A production-style gunicorn.conf.py: switching to gilworker changes only `worker_class`.

The hooks run once per worker in every topology; `worker.gil_mode` says what a worker is
("thread": a thread of the master; "process": a forked process, which with `threads > 1` runs
that many event-loop threads). Here they keep one marker file per live worker, as a metrics
exporter does for its per-worker data, and clean it up when the worker exits.
"""

import os

bind = os.environ.get("BIND", "127.0.0.1:8000")
# one event loop per CPU this server may use (README: "How many event loops"), not 2 x cores + 1
workers = int(os.environ.get("WORKERS", len(os.sched_getaffinity(0))))
worker_class = "gilworker"
gil_mode = os.environ.get("GIL_MODE", "auto")
threads = int(os.environ.get("THREADS", "1"))  # event-loop threads per worker process
graceful_timeout = 10
accesslog = "-"

WORKER_DIR = os.environ.get("WORKER_DIR", "/tmp/gilworker-example")


def when_ready(server):
    os.makedirs(WORKER_DIR, exist_ok=True)
    server.log.info("example: ready, worker files in %s", WORKER_DIR)


def post_fork(server, worker):
    with open(os.path.join(WORKER_DIR, f"worker-{worker.pid}"), "w") as marker:
        marker.write(worker.gil_mode)
    server.log.info("example: worker %s started as a %s", worker.pid, worker.gil_mode)


def worker_exit(server, worker):
    path = os.path.join(WORKER_DIR, f"worker-{worker.pid}")
    if os.path.exists(path):
        os.remove(path)
