"""Which interpreter workarounds are active where the suite runs, and that each is applied there
and only there (gunicorn_gilworker/interpreter.py)."""

from __future__ import annotations

import sys
import threading

from server import FREE_THREADED, in_process_arbiter

from gunicorn_gilworker import interpreter
from gunicorn_gilworker.interpreter import CLASSES_PER_THREAD, SHARED_DICT_KEYS, WORKAROUNDS


def test_the_active_workarounds_of_this_interpreter(record_property):
    active = [w.name for w in WORKAROUNDS if w.active()]
    record_property("active_workarounds", active)
    print(f"\nactive on {sys.version.split()[0]} ({'free-threaded' if FREE_THREADED else 'GIL'}):")
    for name in active or ["none"]:
        print(f"  {name}")
    if not FREE_THREADED:
        assert active == []
    elif sys.version_info[:3] < (3, 14, 4):
        assert active == [CLASSES_PER_THREAD.name, SHARED_DICT_KEYS.name]
    else:
        assert active == [SHARED_DICT_KEYS.name]
    for workaround in WORKAROUNDS:
        assert workaround.issue.startswith("https://github.com/python/cpython/issues/")


def test_each_rule_by_build_and_version():
    assert not CLASSES_PER_THREAD.active(free_threaded=False, version=(3, 13, 5))
    assert CLASSES_PER_THREAD.active(free_threaded=True, version=(3, 13, 5))
    assert CLASSES_PER_THREAD.active(free_threaded=True, version=(3, 14, 3))
    assert not CLASSES_PER_THREAD.active(free_threaded=True, version=(3, 14, 4))
    assert SHARED_DICT_KEYS.active(free_threaded=True, version=(3, 14, 4))
    assert not SHARED_DICT_KEYS.active(free_threaded=False, version=(3, 14, 4))


def built_in(thread_count: int) -> list[type]:
    """The connection class each of `thread_count` threads gets for one uvicorn class."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from gunicorn_gilworker.connection import layered

    made: list[type] = []
    threads = [
        threading.Thread(target=lambda: made.append(layered(H11Protocol)))
        for _ in range(thread_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return [*made, layered(H11Protocol)]


def test_connection_classes_are_per_thread_only_where_needed():
    classes = built_in(2)
    distinct = len({id(c) for c in classes})
    assert distinct == (3 if CLASSES_PER_THREAD.active() else 1)


def test_shared_dict_keys_are_held_only_where_needed():
    keys = interpreter.hold_shared_dict_keys()
    if SHARED_DICT_KEYS.active():
        assert any(type(k) is tuple for k in keys)  # e.g. h11's (role, state) tables
    else:
        assert keys == []


def test_a_thread_worker_builds_its_connection_class_in_its_own_thread(tmp_path):
    from gunicorn_gilworker.worker import GilWorker

    arbiter = in_process_arbiter(tmp_path, mode="thread")
    worker = GilWorker(1, 0, [], arbiter.app, 30, arbiter.cfg, arbiter.log, runs_as="thread")
    worker.wsgi = arbiter.app.wsgi()
    worker.server.run = lambda sockets: None  # build, then serve nothing
    worker.server.started = True
    runner = threading.Thread(target=worker.run)
    runner.start()
    runner.join(10)
    built = worker.config.http.func  # functools.partial(connection class, layer)
    assert built.__name__.startswith("Layered")
    from gunicorn_gilworker.connection import layered

    same_here = layered(built.__mro__[1]) is built
    assert same_here is not CLASSES_PER_THREAD.active()
