"""A gunicorn.conf.py that records every hook call, server and request hooks alike, one JSON line
each, to $HOOK_LOG (read back with Launcher.hooks()).

`pre_request` raises for /hook-raises: the request must still be answered."""

import json
import os
import threading

LOG = os.environ["HOOK_LOG"]


def record(hook, worker=None, **extra):
    entry = {"hook": hook, "pid": os.getpid(), "thread": threading.current_thread().name}
    if worker is not None:
        # a worker's id: its pid, or for a thread of the master THREAD_ID_BASE + its age
        entry["worker"] = worker.pid if isinstance(worker.pid, int) else None
        entry["age"] = worker.age
        entry["mode"] = getattr(worker, "gil_mode", None)
        entry["worker_class"] = type(worker).__name__
    entry.update(extra)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def on_starting(server):
    record("on_starting")


def when_ready(server):
    record("when_ready")


def pre_fork(server, worker):
    record("pre_fork", worker)


def post_fork(server, worker):
    record("post_fork", worker)


def post_worker_init(worker):
    record("post_worker_init", worker)


def worker_int(worker):
    record("worker_int", worker)


def worker_abort(worker):
    record("worker_abort", worker)


def worker_exit(server, worker):
    record("worker_exit", worker)


def child_exit(server, worker):
    record("child_exit", worker)


def nworkers_changed(server, new_value, old_value):
    record("nworkers_changed", new=new_value, old=old_value)


def on_exit(server):
    record("on_exit")


def pre_request(worker, req):
    record("pre_request", worker, method=req.method, path=req.path, uri=req.uri)
    if req.path == "/hook-raises":
        raise RuntimeError("a pre_request hook that fails")


def post_request(worker, req, environ, resp):
    record(
        "post_request",
        worker,
        path=req.path,
        status=resp.status,
        sent=resp.sent,
        remote=environ["REMOTE_ADDR"],
        ua=environ.get("HTTP_USER_AGENT"),
    )
