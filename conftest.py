"""Shared fixtures: real gunicorn masters (tests/server.py), in both worker modes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))

from server import FREE_THREADED, TOPOLOGIES, Launcher, Topology


def pytest_report_header() -> str:
    build = "free-threaded" if FREE_THREADED else "GIL"
    return f"gilworker tests on {sys.version.split()[0]} ({build} build)"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report


CALL_FAILED = pytest.StashKey[bool]()
LOG_LINES_SHOWN = 80


@pytest.fixture
def gunicorn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    """Starts masters for the test; kills and reaps every one of them afterwards. A failed
    test's report ends with the last lines of each master's log (what CI keeps of a run)."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()
        if request.node.stash.get(CALL_FAILED, False):
            for number, master in enumerate(launcher.masters):
                lines = master.log.splitlines()[-LOG_LINES_SHOWN:]
                print(f"--- master {number}: the last {len(lines)} lines of its log ---")
                print("\n".join(lines))


@pytest.fixture(params=TOPOLOGIES, ids=str)
def topology(request: pytest.FixtureRequest) -> Topology:
    """Each behaviour in every topology: forked processes, threads of the master, and worker
    processes of threads (`--gil-mode thread --threads 2`)."""
    return request.param


@pytest.fixture(params=["thread", "process"])
def mode(request: pytest.FixtureRequest) -> str:
    """A behaviour of thread mode against process mode, one loop per worker either way."""
    return request.param
