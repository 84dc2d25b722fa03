"""Keep-alive clients lose nothing while workers are replaced, in every topology: each request
already sent on an open connection is answered (the last one with Connection: close), whatever
replaces the worker: HUP, gunicornc worker kill, TTIN/TTOU, max_requests recycling."""

from __future__ import annotations

import signal

from server import Load, ctl, wait_for, worker_ids


def test_replacing_workers_under_keep_alive_load_loses_nothing(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=2)
    load = Load(gunicorn.port)
    try:
        wait_for(lambda: load.answered > 200, 20, "the load running")
        for replace in ("hup", "kill", "hup", "kill", "ttin-ttou"):
            before = load.answered
            if replace == "hup":
                master.signal(signal.SIGHUP)
            elif replace == "kill":
                ctl(gunicorn, f"worker kill {worker_ids(gunicorn)[0]}")
            else:
                master.signal(signal.SIGTTIN)
                wait_for(lambda: len(worker_ids(gunicorn)) == 3, 20, "a third worker")
                master.signal(signal.SIGTTOU)
            wait_for(lambda b=before: load.answered > b + 300, 30, f"serving after {replace}")
            wait_for(lambda: len(worker_ids(gunicorn)) == 2, 30, "two workers again")
    finally:
        load.stop()
    print(f"replacements under keep-alive load ({topology}): {load.report()}")
    assert load.errors == [] and load.non_2xx == 0, load.report()
    assert load.closed_by_server > 0  # the stopping workers said Connection: close


def test_max_requests_recycling_under_keep_alive_load_loses_nothing(gunicorn, topology):
    master = gunicorn.start(
        "--max-requests", "150", "--max-requests-jitter", "50", topology=topology, workers=2
    )
    load = Load(gunicorn.port)
    try:
        recycled = r"Maximum request limit|Autorestarting worker"
        wait_for(lambda: master.log_count(recycled) >= 4, 60, "four workers recycled")
    finally:
        load.stop()
    print(f"max_requests recycling under keep-alive load ({topology}): {load.report()}")
    assert load.errors == [] and load.non_2xx == 0, load.report()
