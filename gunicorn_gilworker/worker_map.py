"""The master's map of workers (gunicorn's `Arbiter.WORKERS`), safe to walk from another thread.

gunicorn's control server answers `gunicornc` in a thread of the master and walks
`arbiter.WORKERS` (`show workers`, `show all`) while the main thread adds and removes workers,
so a command can fail with "dictionary changed size during iteration" (gunicorn 27.0.1,
`gunicorn/ctl/handlers.py`; most often on a free-threaded build, where both threads run at
once). Here every walk goes over a copy made in one step: copying a dict runs in C with no
switch point under the GIL, and inside the dict's critical section on a free-threaded build.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class WorkerMap(dict[int, Any]):
    """A dict whose walks see one moment of it; lookups, `in` and `len` are dict's own."""

    def __iter__(self) -> Iterator[int]:
        return iter(list(dict.keys(self)))

    def keys(self) -> list[int]:  # type: ignore[override]
        return list(dict.keys(self))

    def values(self) -> list[Any]:  # type: ignore[override]
        return list(dict.values(self))

    def items(self) -> list[tuple[int, Any]]:  # type: ignore[override]
        return list(dict.items(self))
