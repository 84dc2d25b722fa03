"""The rules that choose threads or processes (pure functions, no gunicorn)."""

from __future__ import annotations

import pytest

from gunicorn_gilworker.mode import decide, gil_cause, needs_app_import
from gunicorn_gilworker.settings import validate_gil_app, validate_gil_mode


@pytest.mark.parametrize(
    ("requested", "free_threaded", "gil_on", "mode", "forced"),
    [
        ("auto", False, True, "process", False),
        ("auto", True, False, "thread", False),
        ("auto", True, True, "process", True),  # the GIL came back: fall back, loudly
        ("thread", True, False, "thread", False),
        ("thread", False, True, "thread", True),  # threads on a GIL build: allowed, warned
        ("thread", True, True, "thread", True),
        ("process", False, True, "process", False),
        ("process", True, False, "process", True),  # against the build: warned
    ],
)
def test_decide(requested, free_threaded, gil_on, mode, forced):
    decision = decide(requested, free_threaded, gil_on)
    assert (decision.mode, decision.forced) == (mode, forced)
    kind = "threads in one process" if mode == "thread" else "forked processes"
    assert decision.message.startswith(f"gilworker: running workers as {kind} (")


def test_the_fallback_names_its_cause():
    cause = gil_cause(
        [
            "unrelated",
            "The global interpreter lock (GIL) has been enabled to load module "
            "'numpy._core', which has not declared that it can run safely without the GIL.",
        ],
        None,
        None,
    )
    assert cause == "importing the extension module 'numpy._core' re-enabled the GIL"
    assert cause in decide("auto", True, True, cause).reason


@pytest.mark.parametrize(
    ("env", "xoption", "expected"),
    [
        ("1", None, "PYTHON_GIL=1 keeps the GIL on"),
        (None, "1", "-X gil=1 keeps the GIL on"),
        (None, None, None),
        ("0", None, None),
    ],
)
def test_gil_cause_from_the_user(env, xoption, expected):
    assert gil_cause([], env, xoption) == expected


def test_the_app_is_imported_in_the_master_only_when_the_choice_needs_it():
    assert needs_app_import("thread", False) and needs_app_import("auto", True)
    assert not needs_app_import("auto", False) and not needs_app_import("process", True)


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), (" Thread ", "thread"), ("process", "process")]
)
def test_validate_gil_mode(value, expected):
    assert validate_gil_mode(value) == expected


@pytest.mark.parametrize("value", ["threads", "", 1, True])
def test_validate_gil_mode_refuses(value):
    with pytest.raises(ValueError, match=r"^gil_mode must be one of auto, thread, process; got "):
        validate_gil_mode(value)


def test_validate_gil_app():
    assert [validate_gil_app(v) for v in (None, " Per-Loop ", "shared")] == [
        "auto",
        "per-loop",
        "shared",
    ]
    with pytest.raises(ValueError, match=r"^gil_app must be one of auto, shared, per-loop; got "):
        validate_gil_app("perloop")


@pytest.mark.parametrize(
    ("requested", "free_threaded", "gil_on", "topology", "ignored"),
    [
        ("auto", True, False, "processes_of_threads", ""),
        ("thread", False, True, "processes_of_threads", ""),  # honoured on a GIL build too
        ("auto", False, True, "processes", "with the GIL on, threads of one process would"),
        ("auto", True, True, "processes", "with the GIL on, threads of one process would"),
        ("process", True, False, "processes", "--gil-mode process runs one event loop per"),
    ],
)
def test_threads_per_process(requested, free_threaded, gil_on, topology, ignored):
    decision = decide(requested, free_threaded, gil_on, threads=4, workers=2)
    assert decision.topology == topology
    if topology == "processes_of_threads":
        assert decision.threads == 4
        assert decision.message.startswith(
            "gilworker: running 2 worker processes of 4 threads each ("
        )
    else:
        assert decision.threads == 1
        assert f"; --threads 4 is ignored: {ignored}" in decision.message


def test_one_thread_per_process_keeps_the_threads_in_the_master():
    decision = decide("auto", True, False, threads=1, workers=8)
    assert (decision.topology, decision.ignored) == ("threads", "")
    assert decision.message == (
        "gilworker: running workers as threads in one process "
        "(gil_mode auto, free-threaded build, GIL off after importing the app)"
    )
