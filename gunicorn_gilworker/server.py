"""uvicorn's Server, made stoppable from another thread and quiet about signals.

The gunicorn worker owns signal handling: uvicorn's own capture would re-raise the signal after
shutdown, killing a worker process before gunicorn's `finally:` runs the `worker_exit` hook, and
signals cannot be caught outside the main thread anyway. A stop request is delivered to the
server's own event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterator

import uvicorn

from gunicorn_gilworker.request.drain import Drain


class WorkerServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None
    drain: Drain | None = None  # set by the worker with its protocols

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A graceful stop drains keep-alive connections first (drain.py): uvicorn's shutdown
        # would close the idle ones at once, under a client that has just sent its request.
        if not self.force_exit:
            for server in self.servers:
                server.close()
            if self.drain is not None:
                self.drain.begin(self.server_state.connections, asyncio.get_running_loop())
            while self.server_state.connections and not self.force_exit:
                await asyncio.sleep(0.05)
        await super().shutdown(sockets=sockets)

    def call_in_loop(self, callback: Callable[..., object], *args: object) -> None:
        """Run `callback` on the server's own loop (thread-safe); directly before it runs."""
        if self.loop is None:  # not serving yet: uvicorn checks should_exit after its startup
            callback(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is done
            self.loop.call_soon_threadsafe(callback, *args)

    def request_exit(self, force: bool) -> None:
        """Ask the server to stop: gracefully, or (force) without waiting for connections."""
        self.call_in_loop(self._exit, force)

    def _exit(self, force: bool) -> None:
        self.should_exit = True
        self.force_exit = self.force_exit or force
        # Stop accepting now, not at uvicorn's next tick (up to 0.1 s later): a successor, or
        # the other workers, take the new connections meanwhile.
        for server in getattr(self, "servers", ()):  # uvicorn's asyncio servers, set in startup
            server.close()
