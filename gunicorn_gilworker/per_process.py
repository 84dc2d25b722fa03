"""One object per process, shared by its worker threads.

Made by whichever worker thread asks first. Without the lock, two threads starting together on a
free-threaded build each made their own (issue 15: two FdBudgets, each counting half the
connections, so neither worker paused before the process ran out of descriptors). A forked
child makes its own, with a fresh lock (a thread of the parent may have held it at the fork).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: T | None = None
        self._pid = 0
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()

    def get(self, make: Callable[[], T]) -> T:
        """This process's object, made with `make` on first use."""
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._value, self._pid = make(), os.getpid()
            return self._value
