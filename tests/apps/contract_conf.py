"""A gunicorn.conf.py with request hooks that record each call, one JSON line each, to $HOOK_LOG.

`pre_request` raises for /hook-raises: the request must still be answered."""

import json
import os
import threading

LOG = os.environ["HOOK_LOG"]


def record(hook, worker, **extra):
    entry = {
        "hook": hook,
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
        "worker": worker.pid,
        "worker_class": type(worker).__name__,
    }
    entry.update(extra)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


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
