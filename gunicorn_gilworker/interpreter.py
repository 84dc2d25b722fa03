"""Free-threaded CPython: keep lookups of shared dicts with non-string keys lock-free.

A dict read by several threads is looked up without a lock, except that comparing a stored key
to the key looked up takes a new reference to the stored key, and that fails for a key owned by
another thread (the one that created it) while its shared reference count is 0. The lookup then
takes the dict's lock, and nothing marks the key (only the value), so every lookup does; two
worker threads then queue on that lock (CPython's Objects/dictobject.c: compare_generic_threadsafe
returns DKIX_KEY_CHANGED, _Py_dict_lookup_threadsafe's read_failed path; the same in 3.13 and in
the main branch as stored here, so 3.14t too). Measured on 3.13.5t, two threads looking up a
tuple in a dict of tuples the main thread made: 120 us per lookup, against 154 ns for one
thread; with the stored keys also referenced from the looking threads, 318 ns.

On gilworker's default install this is h11, uvicorn's pure-Python HTTP parser: every event goes
through `io_dict.get((role, state))` on its module-level READERS and WRITERS, whose keys the
master made when it imported h11. Thread mode then spent 22% of its CPU waiting on that lock.

So each worker thread, when it starts, references the keys of every module-level dict whose keys
are not all strings, and holds them while it runs: a reference taken by a thread that does not own
an object goes to its shared count, which then stays above 0. Every thread must: a key owned by a
worker thread (h11 imported by the first worker to start) gets nothing from its owner's reference.
The walk over every module's dicts runs once per process (again if modules were imported since):
its temporaries stay in the walking thread's allocator pages, 0.4-0.5 MB a thread when every
worker thread walked; a thread that copies the list of keys adds 21 KB (2,644 keys with FastAPI).
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

_keys: list[Any] = []  # the last walk's keys
_keys_modules = 0  # len(sys.modules) at that walk
_walking = threading.Lock()


def hold_shared_dict_keys() -> list[Any]:
    """The keys of the module-level dicts of every loaded module, in a new list: the calling
    thread's references, for it to keep while it serves."""
    global _keys, _keys_modules
    with _walking:
        if len(sys.modules) != _keys_modules:
            _keys_modules = len(sys.modules)
            _keys = shared_dict_keys()
        return list(_keys)


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
