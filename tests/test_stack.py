"""What serves HTTP in every worker, said at start-up in every topology, and the two warnings of
thread mode: a pure-Python parser, and more event loops than CPUs."""

from __future__ import annotations

import re
import signal
import sys
import threading
import types
from pathlib import Path

import pytest
from gunicorn.errors import ConfigError
from server import (
    APPS,
    FREE_THREADED,
    PROCESSES,
    READY_LINE,
    THREADS,
    refusal,
    request,
    wait_for,
)

from gunicorn_gilworker.interpreter import shared_dict_keys
from gunicorn_gilworker.stack import Stack, check_installed, resolve

H11_WARNING = "httptools is not installed, so the workers parse HTTP with h11"
# `sys.modules[name] = None` is how a missing package looks to import and to find_spec alike;
# set in the conf file, it holds in the master and in every worker forked from it.
WITHOUT_FAST_STACK = 'import sys\nsys.modules["httptools"] = None\nsys.modules["uvloop"] = None\n'
ONE_CPU = "import os\nos.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"


def conf(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def served_by(port: int, count: int = 4) -> set[tuple[str, str]]:
    """(uvicorn protocol module, loop module) of `count` answers."""
    answers = [request(port).json() for _ in range(count)]
    return {(a["http_module"], a["loop_module"].split(".")[0]) for a in answers}


@pytest.mark.parametrize(
    ("args", "stack", "modules"),
    [
        ((), "httptools + uvloop", ("httptools_impl", "uvloop")),
        (("--http-parser", "python"), "h11 + uvloop", ("h11_impl", "uvloop")),
        (
            ("--http-parser", "fast", "--asgi-loop", "asyncio"),
            "httptools + asyncio",
            ("httptools_impl", "asyncio"),
        ),
    ],
    ids=["auto", "python", "fast-asyncio"],
)
def test_start_up_line_names_what_every_worker_serves_with(
    gunicorn, topology, args, stack, modules
):
    master = gunicorn.start(*args, topology=topology)
    assert master.log_count(f"every worker serves HTTP with {re.escape(stack)}\n") == 1
    assert served_by(gunicorn.port) == {modules}
    assert H11_WARNING not in master.log  # h11 asked for by name: no advice to leave it


def test_without_httptools_thread_mode_warns_once_and_process_mode_does_not(
    gunicorn, topology, tmp_path
):
    master = gunicorn.start("-c", conf(tmp_path, "bare.py", WITHOUT_FAST_STACK), topology=topology)
    assert master.log_count("every worker serves HTTP with h11 \\+ asyncio\n") == 1
    assert served_by(gunicorn.port) == {("h11_impl", "asyncio")}
    warnings = [line for line in master.log.splitlines() if H11_WARNING in line]
    if topology.loop_threads:
        assert len(warnings) == 1, master.log
        assert "[WARNING]" in warnings[0]
        assert 'pip install "gunicorn-gilworker[fast]"' in warnings[0]
        assert "the CPU per request of httptools + uvloop" in warnings[0]
    else:
        assert warnings == []


def test_more_event_loops_than_cpus_warns_in_thread_mode_only(gunicorn, topology, tmp_path):
    # The conf file pins the master (and so its workers) to one CPU, as taskset would.
    master = gunicorn.start("-c", conf(tmp_path, "one_cpu.py", ONE_CPU), topology=topology)
    loops = 2 * topology.threads
    line = f"gilworker: {loops} event loops on 1 CPUs"
    if topology.loop_threads:
        assert master.log_count(line) == 1, master.log
        assert "one event loop per CPU serves as much" in master.log
        served = master.log_count(READY_LINE)
        master.signal(signal.SIGHUP)  # the same configuration: nothing new to warn of
        master.wait_log(READY_LINE, count=served + loops)
        assert master.log_count(line) == 1, master.log
    else:
        assert "event loops on" not in master.log


def test_no_warning_with_one_loop_per_cpu(gunicorn, tmp_path):
    master = gunicorn.start(
        "-c", conf(tmp_path, "one_cpu.py", ONE_CPU), topology=THREADS, workers=1
    )
    assert "event loops on" not in master.log, master.log


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--http-parser", "fast"), "--http-parser fast needs httptools"),
        (("--asgi-loop", "uvloop"), "--asgi-loop uvloop needs uvloop"),
    ],
)
def test_a_named_parser_or_loop_that_is_missing_is_refused_in_one_line(gunicorn, args, error):
    env = gunicorn.env()
    conf_file = conf(gunicorn.tmp_path, "bare.py", WITHOUT_FAST_STACK)
    lines = refusal(gunicorn, "-c", conf_file, *PROCESSES.args, *args, env=env)
    assert lines == [
        f'Error: {error}, which is not installed: pip install "gunicorn-gilworker[fast]"'
    ]


# -- the rule, without a server ------------------------------------------------------------


@pytest.mark.parametrize(
    ("parser", "loop", "installed", "expected"),
    [
        ("auto", "auto", {"httptools", "uvloop"}, Stack("httptools", "uvloop")),
        ("auto", "auto", set(), Stack("h11", "asyncio")),
        ("auto", "auto", {"uvloop"}, Stack("h11", "uvloop")),
        ("python", "auto", {"httptools", "uvloop"}, Stack("h11", "uvloop")),
        ("fast", "asyncio", {"httptools", "uvloop"}, Stack("httptools", "asyncio")),
        ("auto", "uvloop", {"httptools", "uvloop"}, Stack("httptools", "uvloop")),
    ],
)
def test_resolve_maps_gunicorns_settings_as_uvicorn_would(parser, loop, installed, expected):
    assert resolve(parser, loop, has=installed.__contains__) == expected


@pytest.mark.parametrize(
    ("parser", "loop", "installed", "looked_up", "error"),
    [
        ("fast", "uvloop", {"httptools", "uvloop"}, ["httptools", "uvloop"], None),
        ("fast", "asyncio", {"httptools"}, ["httptools"], None),
        ("auto", "auto", set(), [], None),  # nothing asked for by name: nothing to look for
        ("python", "asyncio", set(), [], None),
        ("fast", "auto", {"uvloop"}, ["httptools"], "--http-parser fast needs httptools"),
        ("auto", "uvloop", {"httptools"}, ["uvloop"], "--asgi-loop uvloop needs uvloop"),
    ],
    ids=["both-there", "httptools-there", "auto", "python", "no-httptools", "no-uvloop"],
)
def test_check_installed_refuses_only_a_named_package_that_is_missing(
    parser, loop, installed, looked_up, error
):
    class Cfg:
        http_parser, asgi_loop = parser, loop

    asked: list[str] = []

    def has(module: str) -> bool:
        asked.append(module)
        return module in installed

    if error:
        fix = 'which is not installed: pip install "gunicorn-gilworker[fast]"'
        with pytest.raises(ConfigError, match=re.escape(f"{error}, {fix}")):
            check_installed(Cfg(), has=has)
    else:
        assert check_installed(Cfg(), has=has) is None
    assert asked == looked_up  # what was asked for by name is what was looked for


@pytest.mark.skipif(not FREE_THREADED, reason="free-threaded builds: a GIL build has no such count")
@pytest.mark.parametrize("table", ["h11._readers:READERS", "h11._writers:WRITERS"])
@pytest.mark.parametrize("importer", ["master", "first worker thread"])
def test_thread_workers_hold_the_keys_of_h11s_tables(gunicorn, topology, tmp_path, table, importer):
    # h11 looks up (role, state) tuples in tables made by the thread that imported it, with an
    # equal tuple of its own (shared_keys.py): each worker thread holds them. The master imports
    # h11 when the app or conf does (an app that imports httpx); else the first worker thread
    # to build uvicorn's h11 protocol does, and only the other threads' references count.
    master_imports = "import h11\n" if importer == "master" else ""
    conf_file = conf(tmp_path, "bare.py", WITHOUT_FAST_STACK + master_imports)
    gunicorn.start("-c", conf_file, topology=topology)
    module, name = table.split(":")
    answers = [
        request(gunicorn.port, f"/held-keys?module={module}&table={name}").json() for _ in range(4)
    ]
    for answer in answers:
        assert answer["keys"] >= 3
        if topology.loop_threads:
            assert answer["held"] == answer["keys"], answer
            assert all(count > 0 for count in answer["shared_counts"]), answer
        else:  # a worker process's one thread owns them: nothing to hold
            assert answer["held"] == 0


@pytest.mark.skipif(not FREE_THREADED, reason="free-threaded builds: a GIL build has no such count")
def test_holding_the_keys_gives_each_a_shared_reference_count():
    # The mechanism, in this process: a key made by this thread has no shared count (another
    # thread's lookup of an equal key then takes the dict's lock); once another thread holds
    # it, it has one, for as long as that thread holds it.
    sys.path.insert(0, str(APPS))
    from plain_app import shared_refcount

    class Role:
        pass

    module = types.ModuleType("gilworker_test_table")
    module.TABLE = {(Role, state): state for state in range(6)}
    sys.modules[module.__name__] = module
    try:
        before = [shared_refcount(key) for key in module.TABLE]
        released = threading.Event()
        held: list[list[int]] = []

        def worker() -> None:
            keys = shared_dict_keys()
            held.append([shared_refcount(key) for key in module.TABLE])
            released.wait(10)
            del keys

        thread = threading.Thread(target=worker)
        thread.start()
        wait_for(lambda: held, 10, "the thread to hold the keys")
        released.set()
        thread.join(10)
    finally:
        del sys.modules[module.__name__]
    assert before == [0] * 6
    assert all(count > 0 for count in held[0]), held
