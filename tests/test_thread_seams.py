"""Thread-mode seams that a real process cannot reach, driven with pytest-mock, and the one
that it can: a worker thread that will not stop."""

from __future__ import annotations

import http.client
import signal
import threading
import time

from server import THREAD_ID_BASE, background_request, in_process_arbiter

from gunicorn_gilworker.supervision import WorkerThread


class ExitingWorker:
    """Stands in for a GilWorker whose init_process ends at once with `status`."""

    status = 7
    booted = False

    def __init__(self, age, ppid, sockets, app, timeout, cfg, log, runs_as="thread"):
        self.age, self.sockets, self.cfg, self.log = age, sockets, cfg, log
        self.pid = THREAD_ID_BASE + age
        self.runs_hooks = True
        self.tmp = type("Tmp", (), {"close": lambda self: None, "last_update": time.monotonic})()

    def init_process(self):
        raise SystemExit(self.status)


def test_exit_notice_comes_after_the_exit_status(mocker, tmp_path):
    arbiter = in_process_arbiter(tmp_path, mode="thread")
    seen = []
    worker = ExitingWorker(1, 0, [], None, 1, arbiter.cfg, arbiter.log)
    queue = mocker.Mock()
    handle = WorkerThread(worker, queue, hook_server=arbiter)
    queue.put_nowait.side_effect = lambda sig: seen.append(
        (sig, handle.finished.is_set(), handle.exit_code)
    )
    handle.start()
    handle.thread.join(5)
    assert seen == [(signal.SIGCHLD, True, 7)]
    assert handle.id == THREAD_ID_BASE + 1


def test_a_lost_exit_notice_still_gets_the_thread_reaped_and_replaced(mocker, tmp_path):
    arbiter = in_process_arbiter(tmp_path, mode="thread")
    mocker.patch.object(arbiter, "worker_class", ExitingWorker)
    mocker.patch.object(ExitingWorker, "status", 1)  # a runtime crash, not a boot error
    supervisor = arbiter.topology().supervisor
    mocker.patch.object(supervisor, "notices")  # the SIGCHLD notice is lost
    child_exit = mocker.patch.object(arbiter.cfg.settings["child_exit"], "value")
    arbiter.num_workers = 1
    arbiter.LISTENERS = []

    first = arbiter.spawn_worker()
    supervisor.handles[first].thread.join(5)
    arbiter.manage_workers()  # one ordinary loop turn, no SIGCHLD

    assert first not in arbiter.WORKERS
    child_exit.assert_called_once()
    assert len(arbiter.WORKERS) == 1  # replaced in the same turn
    for handle in list(supervisor.handles.values()):
        handle.thread.join(5)


def test_a_thread_that_cannot_start_leaves_no_phantom_worker(mocker, tmp_path):
    arbiter = in_process_arbiter(tmp_path, mode="thread")
    mocker.patch.object(arbiter, "worker_class", ExitingWorker)
    no_thread = RuntimeError("can't start new thread")
    mocker.patch.object(threading.Thread, "start", side_effect=no_thread)
    error = mocker.spy(arbiter.log, "error")
    arbiter.LISTENERS = []

    assert arbiter.spawn_worker() is None
    assert arbiter.WORKERS == {} and len(arbiter.topology().supervisor) == 0
    assert "can't start new thread" in str(error.call_args)


def test_a_worker_that_ignores_the_stop_does_not_keep_the_server_alive(gunicorn, topology):
    """A handler stuck in one long C call (time.sleep) cannot see a stop or an exception: the
    master still exits once graceful_timeout has passed, cutting that request off."""
    master = gunicorn.start("--graceful-timeout", "2", topology=topology, workers=1)
    client, outcome = background_request(gunicorn.port, "/csleep?s=60", timeout=70)
    master.wait_log(r"csleep started in \d+")  # the request is in the C call
    master.signal(signal.SIGTERM)
    assert master.wait(timeout=30) == 0
    assert "Shutting down: Master" in master.log
    client.join(10)
    assert outcome and isinstance(outcome[0], OSError | http.client.HTTPException), outcome
