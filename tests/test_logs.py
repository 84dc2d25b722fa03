"""What a person reads in the log at start and stop: one line per worker with its id, in every
topology, and none of uvicorn's per-server lifecycle lines at the default level."""

from __future__ import annotations

import re
import signal

from server import request

UVICORN_LIFECYCLE = (
    "Started server process",
    "Waiting for application startup.",
    "Application startup complete.",
    "Waiting for application shutdown.",
    "Application shutdown complete.",
    "Finished server process",
)


def test_one_start_up_line_per_worker_with_its_id(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=4)
    assert request(gunicorn.port).status == 200
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    log = master.log
    serving = re.findall(r"Worker (thread|process) (\d+) serving", log)
    loops = 4 * topology.threads
    assert len(serving) == loops, log
    kind = "thread" if topology.loop_threads else "process"
    assert {k for k, _ in serving} == {kind}
    if topology.in_master:  # one process: every id is a worker thread's, each once
        assert len({wid for _, wid in serving}) == loops
    for line in UVICORN_LIFECYCLE:
        assert line not in log, line
    assert log.count("Worker exiting") == loops + (4 if topology.threads > 1 else 0)


def test_uvicorns_lifecycle_lines_stay_at_debug_level(gunicorn, topology):
    master = gunicorn.start("--log-level", "debug", topology=topology, workers=1)
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    assert master.log_count(r"\[DEBUG\] Application startup complete\.") == topology.threads
    assert master.log_count(r"\[INFO\] Application startup complete\.") == 0
