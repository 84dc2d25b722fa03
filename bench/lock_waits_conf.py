"""gunicorn conf for bench/run.py's lock_waits section: counts how often a worker waited for the
access log handler's lock, and for how long; the master logs the totals as it exits.

    gunicorn -c bench/lock_waits_conf.py ...                      # gilworker's own line
    gunicorn -c bench/lock_waits_conf.py --logger-class lock_waits_conf.PlainLogger ...

PlainLogger is gunicorn's Logger under another name: a custom logger class, so gilworker writes
through `Logger.access`, one record (one lock) a request, as before it made the line itself.
Meaningful where the workers share the master's logger (thread topologies).
"""

import threading
import time

from gunicorn.glogging import Logger


class PlainLogger(Logger):
    pass


class CountingLock:
    """A handler's lock that counts the acquisitions that had to wait."""

    def __init__(self, lock):
        self.lock = lock
        self.acquired = self.waits = 0
        self.waited = 0.0

    def acquire(self, blocking=True, timeout=-1):
        if self.lock.acquire(blocking=False):
            self.acquired += 1
            return True
        if not blocking:
            return False
        started = time.perf_counter()
        got = self.lock.acquire(True, timeout)
        self.waited += time.perf_counter() - started
        self.waits += got
        self.acquired += got
        return got

    def release(self):
        self.lock.release()

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()

    def __getattr__(self, name):  # _at_fork_reinit, _is_owned, ...
        return getattr(self.lock, name)


_wrapped = threading.Lock()


def post_worker_init(worker):
    with _wrapped:
        for handler in worker.log.access_log.handlers:
            if not isinstance(handler.lock, CountingLock):
                handler.lock = CountingLock(handler.lock)


def on_exit(server):
    for handler in server.log.access_log.handlers:
        lock = handler.lock
        if isinstance(lock, CountingLock):
            server.log.warning(
                "lock waits: %d of %d acquisitions waited, %.1f ms in all",
                lock.waits,
                lock.acquired,
                lock.waited * 1000,
            )
