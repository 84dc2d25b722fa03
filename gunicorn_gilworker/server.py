"""uvicorn's Server, made stoppable from another thread and quiet about signals, draining its
connections when it stops (request/drain.py) and pausing its accepting (accepting.py).

The gunicorn worker owns signal handling: uvicorn's own capture would re-raise the signal after
shutdown, killing a worker process before gunicorn's `finally:` runs the `worker_exit` hook, and
signals cannot be caught outside the main thread anyway. A stop request is delivered to the
server's own event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from gunicorn_gilworker.accepting import FD_ERRORS, AcceptGate
from gunicorn_gilworker.client_noise import ClientNoise, client_noise
from gunicorn_gilworker.operations.measures import LoopMeasures, process_measures
from gunicorn_gilworker.request.drain import Drain
from gunicorn_gilworker.stall_watch import LoopBeat, StallWatch
from gunicorn_gilworker.upstream import (
    connections,
    handle_callback_name,
    listening_servers,
    protocol_factory,
    set_server_state,
)
from gunicorn_gilworker.upstream import server_state as server_state_of


class WorkerServer(uvicorn.Server):
    """`server_state`: uvicorn's state of this server, or one that also counts its requests for
    a process of threads; `worker_connections` and `drain_grace` as the worker's settings."""

    loop: asyncio.AbstractEventLoop | None = None

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState | None,
        *,
        worker_connections: int,
        drain_grace: float,
        log: Any,
        serving: Callable[[], None],
    ) -> None:
        super().__init__(config)
        self.serving = serving  # called once its lifespan startup is done
        if server_state is not None:
            set_server_state(self, server_state)
        self.drain = Drain(drain_grace)
        self.gate = AcceptGate(self, worker_connections, log, served_enough=self._served_enough)
        self.log = log
        self.spares: list[socket.socket] = []  # a dup of each listener, to listen again
        self.stalls: tuple[StallWatch, LoopBeat] | None = None  # --stall-warning's watch
        self.measures: LoopMeasures | None = None  # --metrics-bind's counts of this loop

    def _served_enough(self) -> bool:
        """Whether --max-requests is reached (a loop thread of a worker process has no limit of
        its own: the process's RequestBudget stops all its loops at once)."""
        limit = self.config.limit_max_requests
        return limit is not None and server_state_of(self).total_requests >= limit

    def watch_stalls(self, watch: StallWatch, beat: LoopBeat) -> None:
        """Have `watch` warn when this server's loop stops turning, once it serves."""
        self.stalls = (watch, beat)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    @property
    def noise(self) -> ClientNoise:
        """This process's count of client-caused events (a forked worker makes its own)."""
        return client_noise(self.log)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.spares = [listener.dup() for listener in sockets or ()]
        self.gate.start()  # before the first connection
        await super().startup(sockets=sockets)
        if self.started:
            if self.stalls is not None:
                watch, beat = self.stalls
                beat.started(self.loop)
                watch.watch(beat)
            if self.measures is not None:
                self.measures.serving = True
                process_measures().changed.set()  # readiness: publish it now
            self.serving()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A graceful stop drains keep-alive connections first (drain.py): uvicorn's shutdown
        # would close the idle ones at once, under a client that has just sent its request.
        if self.stalls is not None:  # no turns while it drains and closes: not a stall
            watch, beat = self.stalls
            watch.forget(beat)
        if self.measures is not None:
            self.measures.serving = False
            process_measures().changed.set()
        self.gate.stop()
        self._close_spares()
        if not self.force_exit:
            self.stop_accepting()
            open_connections = connections(server_state_of(self))
            self.drain.begin(open_connections, asyncio.get_running_loop())
            while open_connections and not self.force_exit:
                await asyncio.sleep(0.05)
        await super().shutdown(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if self.stalls is not None:
            self.stalls[1].turned = now
        if self.measures is not None:
            self.measures.ticked(now)
        self.gate.tick(now)
        self.noise.flush(now)
        return await super().on_tick(counter)

    # -- accepting (accepting.py decides when) ----------------------------------------------

    def stop_accepting(self) -> None:
        for server in listening_servers(self):
            server.close()

    def _close_spares(self) -> None:
        for spare in self.spares:
            spare.close()
        self.spares = []

    def accept_again(self) -> None:
        if not self.should_exit and self.loop is not None:
            self.loop.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        assert self.loop is not None
        config, servers = self.config, listening_servers(self)
        try:
            for spare in self.spares:
                server = await self.loop.create_server(
                    protocol_factory(self), sock=spare.dup(), ssl=config.ssl, backlog=config.backlog
                )
                servers.append(server)
        except OSError as exc:  # out of descriptors again: stay paused
            if exc.errno in FD_ERRORS:
                self.gate.out_of_descriptors()
            else:
                raise

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's report of an accept that failed for want of descriptors: pause accepting
        (asyncio would log and retry it once per backlog slot, CPython gh-151615), and keep
        quiet about the listener closed under its accept loop meanwhile."""
        exc = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource":
            loop.call_soon(self.gate.out_of_descriptors)  # after asyncio's own handling of it
            return
        # asyncio's accept loop, or its retry of it
        callback = handle_callback_name(context.get("handle"))
        if callback in ("_accept_connection", "_start_serving") and isinstance(
            exc, (OSError, ValueError)
        ):
            return
        loop.default_exception_handler(context)

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
        # the other workers, take the new connections meanwhile. The spare copies too: open,
        # they keep the socket listening after the last server closed it (at a master's stop),
        # and the kernel would take connections that nobody accepts, then reset them.
        self.stop_accepting()
        self._close_spares()
