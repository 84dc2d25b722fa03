"""uvicorn's lifespan protocol with a bound on the app's shutdown.

uvicorn waits for the app's `lifespan.shutdown.complete` for as long as it takes: an app whose
shutdown never finishes (one that waits on another event loop's object, say) holds its worker
until gunicorn's `--graceful-timeout` kills it, and says nothing of why. Past the bound, the
worker logs one line with its id and where the app's lifespan waits, and stops without it.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn

MAX_SHUTDOWN_SECONDS = 5.0
SERVER_PACKAGES = ("gunicorn_gilworker.", "uvicorn.")  # their frames are not where an app waits


def shutdown_bound(graceful_timeout: float) -> float:
    """Seconds the app's lifespan shutdown gets: 5, or half of `--graceful-timeout` if less,
    so that the line comes before gunicorn's kill."""
    return min(MAX_SHUTDOWN_SECONDS, graceful_timeout / 2)


class BoundedLifespan(LifespanOn):
    def __init__(self, config: Config, *, bound: float, worker: str, log: Any) -> None:
        super().__init__(config)
        self.bound = bound
        self.worker = worker  # "Worker thread 10000002", as the worker's lines name it
        self.log = log
        self.task: asyncio.Task | None = None

    async def main(self) -> None:
        self.task = asyncio.current_task()  # the app's lifespan runs in this task
        await super().main()

    async def shutdown(self) -> None:
        waiting = asyncio.ensure_future(super().shutdown())
        done, _ = await asyncio.wait({waiting}, timeout=self.bound)
        if done:
            return waiting.result()
        waiting.cancel()
        # The app's lifespan task is left to the loop's end, which cancels it: uvicorn would
        # log that cancellation as "lifespan unsupported" unless the shutdown counts as failed.
        self.shutdown_failed = True
        self.log.error(
            "%s: the app's lifespan shutdown did not finish within %g s; it waits at %s; "
            "stopping without it",
            self.worker,
            self.bound,
            where_it_waits(self.task),
        )
        return None


def bounded(lifespan_class: Any, *, bound: float, worker: str, log: Any) -> Callable[..., Any]:
    """uvicorn's `Config.lifespan_class`, bounded where it runs the app's lifespan."""
    if lifespan_class is not LifespanOn:  # "off": no lifespan to wait for
        return lifespan_class  # type: ignore[no-any-return]
    return functools.partial(BoundedLifespan, bound=bound, worker=worker, log=log)


def where_it_waits(task: asyncio.Task | None) -> str:
    """The chain of coroutines a task is suspended in, outermost first, as file:line in name,
    leaving out the server's own frames."""
    places = []
    awaited: Any = task.get_coro() if task is not None else None
    while awaited is not None:
        frame = next(
            (
                getattr(awaited, a)
                for a in ("cr_frame", "gi_frame", "ag_frame")
                if hasattr(awaited, a)
            ),
            None,
        )
        if frame is None:
            break
        if not frame.f_globals.get("__name__", "").startswith(SERVER_PACKAGES):
            file = os.path.join(*frame.f_code.co_filename.split(os.sep)[-2:])
            places.append(f"{file}:{frame.f_lineno} in {frame.f_code.co_name}")
        awaited = next(
            (
                getattr(awaited, a)
                for a in ("cr_await", "gi_yieldfrom", "ag_await")
                if hasattr(awaited, a)
            ),
            None,
        )
    return " > ".join(places) or "(no Python frame)"
