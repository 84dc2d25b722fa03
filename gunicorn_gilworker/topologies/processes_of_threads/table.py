"""What a worker process of threads tells the master about its threads.

The table lives in an anonymous shared mapping made before the fork (in the worker object's
constructor, which gunicorn runs in the master): the worker process writes it on every turn of
its loop, the master reads it for `gunicornc show workers`, `show stats` and statsd gauges.
No pipe, no file, no message: each field is one aligned 8-byte word, written whole.
"""

from __future__ import annotations

import mmap
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

_HEADER = struct.Struct("=qqq")  # threads alive, thread crashes so far, GIL on (0/1)
_ROW = struct.Struct("=qqdq")  # thread id, age, last heartbeat (monotonic), requests served


@dataclass(frozen=True)
class ThreadRow:
    id: int
    age: int
    last_heartbeat: float  # time.monotonic() of its last heartbeat; same clock in every process
    requests: int


class ThreadTable:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.memory = mmap.mmap(-1, _HEADER.size + capacity * _ROW.size)  # MAP_SHARED

    def write(self, rows: Iterable[ThreadRow], crashes: int, gil_on: bool) -> None:
        count = 0
        for row in rows:
            if count == self.capacity:
                break
            offset = _HEADER.size + count * _ROW.size
            _ROW.pack_into(self.memory, offset, row.id, row.age, row.last_heartbeat, row.requests)
            count += 1
        _HEADER.pack_into(self.memory, 0, count, crashes, int(gil_on))

    def read(self) -> tuple[list[ThreadRow], int, bool]:
        """The threads, the thread crashes so far, and whether the process has the GIL on."""
        count, crashes, gil_on = _HEADER.unpack_from(self.memory, 0)
        count = max(0, min(count, self.capacity))
        rows = [
            ThreadRow(*_ROW.unpack_from(self.memory, _HEADER.size + i * _ROW.size))
            for i in range(count)
        ]
        return rows, crashes, bool(gil_on)

    def describe(self, now: float | None = None) -> dict[str, object]:
        """The table as gunicornc shows it, heartbeats as seconds ago."""
        now = time.monotonic() if now is None else now
        rows, crashes, gil_on = self.read()
        return {
            "threads": [
                {
                    "id": row.id,
                    "age": row.age,
                    "last_heartbeat": round(max(0.0, now - row.last_heartbeat), 2),
                    "requests": row.requests,
                }
                for row in rows
            ],
            "thread_crashes": crashes,
            "gil_enabled": gil_on,
        }
