"""Apps of frameworks that keep their lifespan's objects on the app object, with workers as
threads: each event loop gets its own app (--gil-app auto), so each loop's lifespan runs, keeps
and closes its own objects. Litestar needs msgspec, which has no 3.13t wheel: it runs on the GIL
builds, where the thread topologies are forced (--gil-mode thread); Quart runs on both."""

from __future__ import annotations

import signal

import pytest
from server import (
    PROCESSES_OF_THREADS,
    READY_LINE,
    THREADS,
    request,
    wait_for,
    without_ctl_cancellations,
)

THREAD_TOPOLOGIES = [THREADS, PROCESSES_OF_THREADS]
# (app, the class the start-up line names, the framework's package)
FRAMEWORKS = [
    ("litestar_app:app", "litestar.app.Litestar", "litestar"),  # no 3.13t wheel (msgspec)
    ("quart_app:app", "quart.app.Quart", "quart"),
]


@pytest.mark.parametrize(("app", "kind", "package"), FRAMEWORKS, ids=lambda x: x.split(":")[0])
@pytest.mark.parametrize("topology", THREAD_TOPOLOGIES, ids=str)
def test_the_app_starts_serves_and_stops_with_a_lifespan_per_loop(
    gunicorn, topology, app, kind, package
):
    pytest.importorskip(package)
    loops = 2 * topology.threads
    # --graceful-timeout 2: a stop that takes longer is cut, and its handlers missing below
    master = gunicorn.start("--graceful-timeout", "2", app=app, topology=topology, workers=2)
    assert f"each event loop builds its own app ({kind} keeps its" in master.log
    for _ in range(40):  # each answer from a loop that uses its own loop's objects
        body = request(gunicorn.port).json()
        assert body["state_loop"] == body["loop"], body
    served = master.log_count(READY_LINE)
    master.signal(signal.SIGHUP)
    master.wait_log(READY_LINE, count=served + loops)
    shutdowns = lambda: gunicorn.hooks("app_shutdown")  # noqa: E731
    wait_for(lambda: len(shutdowns()) == loops, 10, "the old workers' shutdown handlers")
    for _ in range(20):
        body = request(gunicorn.port).json()
        assert body["state_loop"] == body["loop"], body
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    startups = gunicorn.hooks("app_startup")
    assert len(startups) == 2 * loops  # the first workers and those after the HUP
    assert sorted((e["pid"], e["app"]) for e in shutdowns()) == sorted(
        (e["pid"], e["app"]) for e in startups
    )
    assert len({(e["pid"], e["app"]) for e in startups}) == 2 * loops  # an app object each
    log = without_ctl_cancellations(master.log)
    for bad in ("Traceback", "did not finish", "WORKER TIMEOUT", "shutdown failed", "Error"):
        assert bad not in log, master.log


def test_the_app_can_still_be_shared_on_request(gunicorn):
    pytest.importorskip("quart")
    master = gunicorn.start("--gil-app", "shared", app="quart_app:app", topology=THREADS)
    assert "builds its own app" not in master.log
    assert request(gunicorn.port).status == 200
