"""gunicorn config for an experiment (bench/cpu_split.py --config): what reference counting of
the objects worker threads share costs on 3.13t.

With EXP_IMMORTAL=1 in the environment (so that bench/switch_pair.py can measure with and
without it in one run), when the first worker of a process starts, every object alive then
(every GC-tracked object, and every untracked one reachable from them: constant tuples, bytes,
ints, str) is made immortal, so no thread counts references to it any more. In thread mode that
is the app, the libraries and the module globals that all worker threads read; in process mode
the same objects, each worker's own.

Free-threaded biased reference counting (PEP 703): a thread counts references to the objects it
made in the object's `ob_ref_local`, and to any other object with an atomic add on its
`ob_ref_shared`, so two worker threads reading one object both write one cache line. CPython's
own remedy is to make such objects immortal (`PyUnstable_SetImmortal`, CPython 3.15, "for
objects which are shared across threads"; https://github.com/python/cpython/pull/144543).

Not for use outside the bench: it writes `ob_ref_local` (offset 12 of 3.13t's object header,
Include/object.h) directly, and immortal objects are never freed.
"""

import ctypes
import gc
import os
import sys
import threading

IMMORTAL = 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT_LOCAL on 3.13t
REF_LOCAL = 12  # offset of ob_ref_local after ob_tid (8), padding (2), ob_mutex, ob_gc_bits
done: list[int] = []
walking = threading.Lock()  # worker threads start together: one walk per process


def post_worker_init(worker):
    if os.environ.get("EXP_IMMORTAL") != "1":
        return
    if sys.version_info[:2] != (3, 13) or sys._is_gil_enabled():
        raise SystemExit("immortal_conf.py knows the object header of free-threaded 3.13 only")
    with walking:
        if not done:
            done.append(make_all_immortal())
            worker.log.info("immortal_conf: %d objects made immortal", done[0])


def make_all_immortal() -> int:
    seen: set[int] = set()
    todo = gc.get_objects()
    made = 0
    while todo:
        reached = []
        for obj in todo:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            ref_local = ctypes.c_uint32.from_address(id(obj) + REF_LOCAL)
            if ref_local.value != IMMORTAL:
                ref_local.value = IMMORTAL
                made += 1
            reached += (r for r in gc.get_referents(obj) if not gc.is_tracked(r))
        todo = reached
    return made
