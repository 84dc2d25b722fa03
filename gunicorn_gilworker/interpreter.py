"""Workarounds for particular CPython interpreters, each in one place, with its issue.

Each `Workaround` names the CPython issue, the interpreters that need it (free-threaded builds
only: on a GIL build none is active) and the release that fixes it, if one does; `active()`
answers for the running interpreter, and only there is it applied. tests/test_interpreter.py
shows which are active where the suite runs. What was measured about them is in
docs/free-threaded-findings.md.
"""

from __future__ import annotations

import functools
import sys
import sysconfig
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(frozen=True)
class Workaround:
    name: str
    issue: str  # the CPython issue behind it
    fixed_in: tuple[int, int, int] | None  # the first release that does not need it; None: none

    def active(
        self,
        free_threaded: bool = bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        version: tuple[int, int, int] = tuple(sys.version_info[:3]),  # type: ignore[assignment]
    ) -> bool:
        return free_threaded and (self.fixed_in is None or version < self.fixed_in)


# A lookup of a method of a class made at run time by another thread cannot take its reference
# lock-free (its functions are owned by that thread) and falls back to the interpreter's one type
# lock, which every worker thread then queues on per lookup: with 8 workers, 14% and 17% of
# samples waited on it, 4% and 10% with the classes built in each worker's thread. 3.14.4 takes
# that lock off the path (PR 145774).
CLASSES_PER_THREAD = Workaround(
    "classes built in each worker thread",
    "https://github.com/python/cpython/issues/145685",
    fixed_in=(3, 14, 4),
)

# A lookup in a dict that several threads read takes the dict's lock when the stored key is
# owned by another thread whose shared reference count is 0 (the key is not marked, so every
# lookup does): two worker threads then queue on that lock. Seen with h11, whose module-level
# READERS/WRITERS dicts are keyed by tuples the importing thread made (22% of thread mode's CPU).
# Read in Objects/dictobject.c of 3.13 and of the main branch; not reported upstream as far as
# we found (the dict's thread-safety design: https://github.com/python/cpython/issues/112075).
SHARED_DICT_KEYS = Workaround(
    "shared dict keys referenced by each worker thread",
    "https://github.com/python/cpython/issues/112075",
    fixed_in=None,
)

WORKAROUNDS = (CLASSES_PER_THREAD, SHARED_DICT_KEYS)

F = TypeVar("F", bound=Callable[..., Any])


def built_in_each_thread(factory: F) -> F:
    """A class factory whose classes are made once per process, or, where CLASSES_PER_THREAD is
    active, once per thread that asks (each worker thread its own)."""
    if not CLASSES_PER_THREAD.active():
        return functools.cache(factory)  # type: ignore[return-value]
    made = threading.local()

    @functools.wraps(factory)
    def in_this_thread(*args: Any) -> Any:
        cache = made.__dict__.setdefault("cache", {})
        if args not in cache:
            cache[args] = factory(*args)
        return cache[args]

    return in_this_thread  # type: ignore[return-value]


def hold_shared_dict_keys() -> list[Any]:
    """Where SHARED_DICT_KEYS is active: the keys of the module-level dicts of every loaded
    module that are not strings, in a new list, for the calling worker thread to keep while it
    serves (its references go to each key's shared count, which then stays above 0). Every
    thread must: a key owned by a worker thread gets nothing from its owner's reference. The
    walk runs once per process (again if modules were imported since)."""
    global _keys, _keys_modules
    if not SHARED_DICT_KEYS.active():
        return []
    with _walking:
        if len(sys.modules) != _keys_modules:
            _keys_modules = len(sys.modules)
            _keys = shared_dict_keys()
        return list(_keys)


_keys: list[Any] = []  # the last walk's keys
_keys_modules = 0  # len(sys.modules) at that walk
_walking = threading.Lock()


def shared_dict_keys() -> list[Any]:
    """The keys of every module-level dict (of every loaded module) that are not strings."""
    keys: list[Any] = []
    seen: set[int] = set()
    for module in list(sys.modules.values()):
        if not isinstance(module, types.ModuleType):
            continue
        for value in list(vars(module).values()):
            if type(value) is not dict or id(value) in seen:
                continue
            seen.add(id(value))
            try:
                keys.extend(k for k in list(value) if type(k) is not str)
            except RuntimeError:  # changed while read (another thread importing): skip it
                continue
    return keys
