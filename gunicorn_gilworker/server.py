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

import uvicorn

from gunicorn_gilworker.accepting import FD_ERRORS, AcceptGate
from gunicorn_gilworker.client_noise import ClientNoise
from gunicorn_gilworker.request.drain import Drain


class WorkerServer(uvicorn.Server):
    loop: asyncio.AbstractEventLoop | None = None
    drain: Drain | None = None  # set by the worker with its protocols
    gate: AcceptGate | None = None  # likewise
    noise: ClientNoise | None = None  # this process's count of client-caused events
    spares: list[socket.socket] = []  # noqa: RUF012  (a dup of each listener, to listen again)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.spares = [listener.dup() for listener in sockets or ()]
        await super().startup(sockets=sockets)
        if self.gate is not None:
            self.gate.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A graceful stop drains keep-alive connections first (drain.py): uvicorn's shutdown
        # would close the idle ones at once, under a client that has just sent its request.
        if self.gate is not None:
            self.gate.stop()
        for spare in self.spares:
            spare.close()
        if not self.force_exit:
            self.stop_accepting()
            if self.drain is not None:
                self.drain.begin(self.server_state.connections, asyncio.get_running_loop())
            while self.server_state.connections and not self.force_exit:
                await asyncio.sleep(0.05)
        await super().shutdown(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if self.gate is not None:
            self.gate.tick(now)
        if self.noise is not None:
            self.noise.flush(now)
        return await super().on_tick(counter)

    # -- accepting (accepting.py decides when) ----------------------------------------------

    def stop_accepting(self) -> None:
        for server in getattr(self, "servers", ()):  # uvicorn's asyncio servers, set in startup
            server.close()

    def accept_again(self) -> None:
        if not self.should_exit and self.loop is not None:
            self.loop.create_task(self._listen_again())

    async def _listen_again(self) -> None:
        assert self.loop is not None
        config = self.config
        try:
            for spare in self.spares:
                server = await self.loop.create_server(
                    self._make_protocol, sock=spare.dup(), ssl=config.ssl, backlog=config.backlog
                )
                self.servers.append(server)
        except OSError as exc:  # out of descriptors again: stay paused
            if self.gate is not None and exc.errno in FD_ERRORS:
                self.gate.out_of_descriptors()
            else:
                raise

    def _make_protocol(self, _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        # As uvicorn's startup makes the protocol for each connection.
        config = self.config
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=_loop,
        )

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's report of an accept that failed for want of descriptors: pause accepting
        (asyncio would log and retry it once per backlog slot, CPython gh-151615), and keep
        quiet about the listener closed under its accept loop meanwhile."""
        gate, exc = self.gate, context.get("exception")
        if gate is not None:
            if context.get("message") == "socket.accept() out of system resource":
                loop.call_soon(gate.out_of_descriptors)  # after asyncio's own handling of it
                return
            # asyncio's private Handle._callback: its accept loop, or its retry of it
            callback = getattr(getattr(context.get("handle"), "_callback", None), "__name__", "")
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
        # the other workers, take the new connections meanwhile.
        self.stop_accepting()
