"""`--stall-warning`: the code that blocks an event loop, named while it blocks.

A blocking call in an `async def` route (`time.sleep`, a synchronous database driver, a long
computation) stalls every request of its event loop; uvicorn says nothing, and asyncio's debug
mode names a callback, not the line, at a cost no production server pays. Each worker's loop
notes the time on each of uvicorn's 0.1 s ticks (`beat`); one watcher thread per process looks
at every loop of the process each 0.1 s. A loop that has not turned for `--stall-warning`
seconds gets one WARNING with the worker's id, the request it is running (method and path) and
its thread's Python stack, which faulthandler reads without touching the stalled thread's
objects; when the loop turns again, one line says how long it was blocked. Past
`FULL_WARNINGS` stalls a minute, each further one is a single line.
"""

from __future__ import annotations

import asyncio
import faulthandler
import re
import tempfile
import threading
import time
from typing import Any

from gunicorn_gilworker.operations.measures import process_measures
from gunicorn_gilworker.per_process import PerProcess

PERIOD = 0.1  # seconds between two looks, as between two of uvicorn's ticks
FULL_WARNINGS = 5  # stalls a minute (per process) logged with their stack
_THREAD = re.compile(r"^(?:Current thread|Thread) 0x([0-9a-f]+)", re.M)


class LoopBeat:
    """One event loop's last turn, and what it runs (`serving`: task -> (method, path))."""

    __slots__ = ("ident", "loop", "serving", "stalled_since", "turned", "worker")

    def __init__(self, worker: str) -> None:
        self.worker = worker  # "Worker thread 10000002", as the worker's own lines name it
        self.loop: asyncio.AbstractEventLoop | None = None  # set once it runs (`started`)
        self.ident = 0  # the loop's thread
        self.turned = time.monotonic()
        self.stalled_since: float | None = None
        self.serving: dict[Any, tuple[str, str]] = {}

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called on the loop's thread, as it begins to serve."""
        self.loop, self.ident, self.turned = loop, threading.get_ident(), time.monotonic()

    def request(self) -> str:
        """The request whose task runs on the loop now, as `GET /path`."""
        try:
            task = asyncio.current_task(self.loop)
        except RuntimeError:
            task = None
        method, path = self.serving.get(task, ("", ""))
        return f"{method} {path}" if method else "no request (the loop's own code)"


class Serving:
    """The outermost app layer where stalls are watched: notes which task runs which request."""

    def __init__(self, app: Any, beat: LoopBeat) -> None:
        self.app = app
        self.serving = beat.serving

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        task = asyncio.current_task()
        self.serving[task] = (scope["method"], scope["path"])
        try:
            await self.app(scope, receive, send)
        finally:
            del self.serving[task]


class StallWatch:
    """The watcher of one process's event loops."""

    def __init__(self, log: Any, seconds: float) -> None:
        self.log = log
        self.seconds = seconds
        self.beats: list[LoopBeat] = []
        self.lock = threading.Lock()
        self.stalls: list[float] = []  # when the stalls of the last minute began
        self.thread: threading.Thread | None = None

    def watch(self, beat: LoopBeat) -> None:
        """Watch a loop that has `started` from now on."""
        with self.lock:
            self.beats.append(beat)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="gilworker-stall-watch", daemon=True
                )
                self.thread.start()

    def forget(self, beat: LoopBeat) -> None:
        with self.lock:
            if beat in self.beats:
                self.beats.remove(beat)

    def _run(self) -> None:
        while True:
            time.sleep(PERIOD)
            try:
                self.check(time.monotonic())
            except Exception:  # the watcher must outlive any one bad look
                self.log.exception("gilworker: the stall watcher failed a look")

    def check(self, now: float) -> None:
        with self.lock:
            beats = list(self.beats)
        for beat in beats:
            turned = beat.turned
            if beat.stalled_since is None and now - turned > self.seconds:
                beat.stalled_since = turned
                self._stalled(beat, now - turned)
            elif beat.stalled_since is not None and turned > beat.stalled_since:
                self.log.warning(
                    "%s: its event loop turned again after %.1f s blocked",
                    beat.worker,
                    turned - beat.stalled_since,
                )
                beat.stalled_since = None

    def _stalled(self, beat: LoopBeat, blocked: float) -> None:
        self.log.debug(  # a statsd counter, as gunicorn's logger sends one from `extra`
            "event loop stalled",
            extra={"metric": "gilworker.loop_stalls", "value": 1, "mtype": "counter"},
        )
        process_measures().count("gilworker_loop_stalls")
        now = time.monotonic()
        self.stalls = [t for t in self.stalls if now - t < 60] + [now]
        what = beat.request()
        if len(self.stalls) > FULL_WARNINGS:
            self.log.warning(
                "%s: its event loop has not turned for %.1f s, running %s (%d stalls in the "
                "last minute: stacks for the first %d)",
                beat.worker,
                blocked,
                what,
                len(self.stalls),
                FULL_WARNINGS,
            )
            return
        self.log.warning(
            "%s: its event loop has not turned for %.1f s, running %s; its thread's stack "
            "(most recent call first):\n%s",
            beat.worker,
            blocked,
            what,
            stack_of_thread(beat.ident),
        )


def stack_of_thread(ident: int) -> str:
    """The Python stack of thread `ident`, as faulthandler writes it."""
    with tempfile.TemporaryFile() as dump:
        faulthandler.dump_traceback(dump, all_threads=True)
        dump.seek(0)
        text = dump.read().decode("utf-8", "replace")
    starts = list(_THREAD.finditer(text))
    for match, following in zip(starts, [*starts[1:], None], strict=True):
        if int(match.group(1), 16) == ident:  # faulthandler names each thread by its ident
            end = following.start() if following else len(text)
            return text[match.end() : end].split("\n", 1)[-1].rstrip()
    return "  (its stack could not be read)"


_watch: PerProcess[StallWatch] = PerProcess()


def stall_watch(log: Any, seconds: float) -> StallWatch:
    """This process's watcher (each forked worker makes its own)."""
    return _watch.get(lambda: StallWatch(log, seconds))
