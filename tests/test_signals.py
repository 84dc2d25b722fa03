"""The master's signals, exit codes and gunicornc, in both modes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time

import pytest
from server import (
    THREAD_ID_BASE,
    background_request,
    ctl,
    request,
    stats,
    wait_for,
    without_ctl_cancellations,
    worker_ids,
    workers,
)


def test_sigterm_finishes_in_flight_requests_and_exits_zero(gunicorn, topology):
    master = gunicorn.start(topology=topology)
    client, results = background_request(gunicorn.port, "/sleep?s=1.5", timeout=20)
    master.wait_log(r"sleep request started")  # in flight (it takes 1.5 s)
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    client.join(20)
    assert results[0].status == 200


def test_after_sigterm_new_connections_are_refused_while_a_request_finishes(gunicorn, topology):
    # A load balancer retries a refused connection; one accepted and then reset fails a user.
    master = gunicorn.start(topology=topology, workers=1)
    client, results = background_request(gunicorn.port, "/sleep?s=5", timeout=20)
    master.wait_log(r"sleep request started")  # in flight for 5 s
    master.signal(signal.SIGTERM)
    termed = time.monotonic()
    probes = []
    for at in (0.1, 0.5, 1.0, 2.0, 3.0, 4.0):  # seconds after TERM, as a client would come
        time.sleep(max(0.0, termed + at - time.monotonic()))  # the probe's time, not a wait
        try:
            with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=2) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                probes.append(f"accepted at +{at}s")
        except ConnectionRefusedError:
            probes.append("refused")
    client.join(20)
    assert results[0].status == 200  # the in-flight request finished
    assert probes == ["refused"] * 6
    assert master.wait() == 0


def test_a_lifespan_shutdown_that_never_ends_is_named_and_the_stop_goes_on(gunicorn, topology):
    # the app's shutdown gets half of --graceful-timeout (at most 5 s): 2 s here
    master = gunicorn.start(
        "--graceful-timeout", "4", app="hanging_shutdown:app", topology=topology, workers=1
    )
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    said = re.findall(r"Worker (?:thread|process) \d+: the app's lifespan shutdown .*", master.log)
    assert len(said) == topology.threads, master.log
    assert all(
        re.search(
            r"did not finish within 2 s; it waits at apps/hanging_shutdown.py:\d+ in app > "
            r"apps/hanging_shutdown.py:\d+ in wait_for_ever > .*; stopping without it$",
            line,
        )
        for line in said
    ), said
    assert "WORKER TIMEOUT" not in master.log and "Traceback" not in without_ctl_cancellations(
        master.log
    )


@pytest.mark.parametrize(
    ("app", "status", "reason", "message"),
    [
        ("failing_lifespan:app", 3, "Worker failed to boot.", None),
        ("raising_import:app", 3, "Worker failed to boot.", "configuration missing at import time"),
        ("plain_app:missing", 4, "App failed to load.", None),
    ],
)
def test_boot_and_app_load_errors_halt_the_master(gunicorn, topology, app, status, reason, message):
    master = gunicorn.start(topology=topology, app=app, ready=None)
    assert master.wait() == status
    assert f"Reason: {reason}" in master.log
    assert "Shutting down: Master" in master.log
    if message:  # in the traceback, not printed again on a line of its own
        assert f"RuntimeError: {message}" in master.log
        assert message not in master.log.splitlines(), master.log


def test_gunicornc_shows_and_kills_workers_without_signalling_a_process(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    shown = workers(gunicorn)
    ids = [w["pid"] for w in shown]
    assert len(ids) == 2 and {w["mode"] for w in shown} == {topology.worker_kind}
    assert [w["age"] for w in shown] == [1, 2]
    assert all(0 <= w["last_heartbeat"] < 60 for w in shown)  # gunicorn's heartbeat
    if topology.threads > 1:  # each worker process with its threads
        for worker in shown:
            threads = worker["threads"]
            assert [t["age"] for t in threads] == [1, 2]
            assert all(t["id"] > THREAD_ID_BASE and 0 <= t["last_heartbeat"] < 60 for t in threads)
    else:
        assert all("threads" not in w for w in shown)
    shown_stats = stats(gunicorn)
    assert shown_stats["topology"] == topology.name
    assert shown_stats["event_loops"] == 2 * topology.threads
    if topology.in_master:
        for wid in ids:
            assert wid > THREAD_ID_BASE
            with pytest.raises(ProcessLookupError):  # no process can ever have this id
                os.kill(wid, 0)
    else:
        assert sorted(ids) == sorted(master.children())

    killed = json.loads(ctl(gunicorn, f"worker kill {ids[0]}"))
    assert killed == {"success": True, "killed": ids[0]}

    def replaced() -> bool:
        now = worker_ids(gunicorn)
        return len(now) == 2 and ids[0] not in now

    wait_for(replaced, 20, "the killed worker to be replaced")
    assert master.proc.poll() is None  # the master itself was not signalled
    assert request(gunicorn.port).status == 200


def test_gunicornc_worker_add_and_remove(gunicorn, topology):
    gunicorn.start(topology=topology, workers=1)
    assert json.loads(ctl(gunicorn, "worker add 2"))["total"] == 3
    wait_for(lambda: json.loads(ctl(gunicorn, "show workers"))["count"] == 3, 20, "3 workers")
    assert json.loads(ctl(gunicorn, "worker remove 1"))["total"] == 2
    wait_for(lambda: json.loads(ctl(gunicorn, "show workers"))["count"] == 2, 20, "2 workers")
    assert request(gunicorn.port).status == 200


def test_hup_replaces_the_workers_and_keeps_serving(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    before = set(worker_ids(gunicorn))
    master.signal(signal.SIGHUP)

    def all_new() -> bool:
        now = set(worker_ids(gunicorn))
        return len(now) == 2 and not (now & before)

    wait_for(all_new, 30, "new workers after HUP")
    assert request(gunicorn.port).status == 200
    master.signal(signal.SIGTERM)
    assert master.wait() == 0


def test_usr1_and_winch_leave_the_workers_serving(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    master.signal(signal.SIGUSR1)
    master.signal(signal.SIGWINCH)
    master.wait_log("Handling signal: usr1")
    assert all(request(gunicorn.port).status == 200 for _ in range(5))
    assert json.loads(ctl(gunicorn, "show workers"))["count"] == 2


def test_a_wsgi_app_is_refused_at_start_up(gunicorn, topology):
    master = gunicorn.start(topology=topology, app="wsgi_app:app", ready=None)
    assert master.wait() == 4
    assert "looks like a WSGI app (environ, start_response): gilworker serves ASGI apps" in (
        master.log
    )
    assert "-k gthread" in master.log and "Reason: App failed to load." in master.log
