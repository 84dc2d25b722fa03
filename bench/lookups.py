"""Attribute lookups from two threads on a class another thread made: the evidence for what thread
mode loses on 3.13t (see the README's benchmark notes).

    .venvs/freethreaded/bin/python bench/lookups.py     # and .venvs/gil/bin/python for reference

The classes are made by the main thread, as a master's import of the app and its framework makes
them; two other threads, as two worker threads would, look their attributes up, each on its own
instance (as on a request's objects) or on one shared instance (as on the app's, its router's and
its middleware's). Compare lines within one interpreter (on the GIL build the two threads take
turns, so its times are only a reference). On 3.13t a property read on one shared instance costs
2-3x the same read on a thread's own instance (reference counts both threads update), and a
method of a class made inside a function by another thread about 2x one made by the looking
thread (its lookups take the type cache's locked fallback; gilworker builds its per-worker
classes in each worker's thread for that reason).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

LOOKUPS = 300_000


class Module:
    __slots__ = ("slot",)

    def method(self) -> int:
        return 1

    @property
    def prop(self) -> int:
        return 1

    @staticmethod
    def static() -> int:
        return 1

    @classmethod
    def klass(cls) -> int:
        return 1


def nested_class() -> type:
    class Nested:
        def method(self) -> int:
            return 1

    return Nested


def in_two_threads(make: Callable[[], object], look: Callable[[object, int], None]) -> float:
    """Seconds the slower of two threads takes for LOOKUPS lookups on an object from `make`."""
    times: list[float] = []
    start = threading.Barrier(2)

    def work() -> None:
        obj = make()
        start.wait()
        t0 = time.perf_counter()
        look(obj, LOOKUPS)
        times.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(times)


def module_instance() -> Module:
    obj = Module()
    obj.slot = 1
    return obj


def main() -> None:
    nested_by_main = nested_class()  # made by this (the main) thread, used by the others
    shared = module_instance()  # one instance for both threads, as an app's objects are

    def call_method(o: object, n: int) -> None:
        for _ in range(n):
            o.method()  # type: ignore[attr-defined]

    def get_prop(o: object, n: int) -> None:
        for _ in range(n):
            o.prop  # type: ignore[attr-defined]  # noqa: B018

    def call_static(o: object, n: int) -> None:
        for _ in range(n):
            o.static()  # type: ignore[attr-defined]

    def call_classmethod(o: object, n: int) -> None:
        for _ in range(n):
            o.klass()  # type: ignore[attr-defined]

    def get_slot(o: object, n: int) -> None:
        for _ in range(n):
            o.slot  # type: ignore[attr-defined]  # noqa: B018

    cases: list[tuple[str, Callable[[], object], Callable[[object, int], None]]] = [
        ("method, module-level class", module_instance, call_method),
        ("property", module_instance, get_prop),
        ("staticmethod", module_instance, call_static),
        ("classmethod", module_instance, call_classmethod),
        ("__slots__ attribute", module_instance, get_slot),
        ("method, one instance shared by both threads", lambda: shared, call_method),
        ("property, one instance shared by both threads", lambda: shared, get_prop),
        ("method, class made in a function by the main thread", nested_by_main, call_method),
        (
            "method, class made in a function by the looking thread",
            lambda: nested_class()(),
            call_method,
        ),
    ]
    build = "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL"
    print(f"{sys.version.split()[0]} ({build}), 2 threads x {LOOKUPS:,} lookups, slower thread:")
    for label, make, look in cases:
        print(f"  {label}: {in_two_threads(make, look) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
