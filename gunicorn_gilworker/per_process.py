"""One object per process, shared by its worker threads.

Made by whichever worker thread asks first, under a lock: two threads starting together on a
free-threaded build would otherwise each make their own (two FdBudgets, each counting half the
connections, so that neither worker pauses before the process runs out of descriptors). A forked
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
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._value = None

    def get(self, make: Callable[[], T]) -> T:
        """This process's object, made with `make` on first use."""
        with self._lock:
            if self._value is None:
                self._value = make()
            return self._value
