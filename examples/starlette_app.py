"""A Starlette app as gilworker likes it: loop-bound resources live in lifespan state.

In thread mode the workers share this module but each runs its own event loop, so anything tied
to a loop (a DB pool, an HTTP client) is made in `lifespan` and reaches requests through
`request.state`, never through a module global.
"""

import asyncio
import contextlib
import os
import threading

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute


class Pool:
    """Stands in for a connection pool: it belongs to the loop that created it."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # a loop-bound primitive, as real pools hold

    async def query(self) -> str:
        assert asyncio.get_running_loop() is self.loop, "pool used from another loop"
        async with self.lock:
            return "ok"


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"pool": Pool(), "worker": threading.current_thread().name}


async def home(request):
    return JSONResponse(
        {
            "db": await request.state.pool.query(),
            "worker": request.state.worker,
            "pid": os.getpid(),
        }
    )


async def echo(websocket):
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"{websocket.state.worker}: {text}")


app = Starlette(routes=[Route("/", home), WebSocketRoute("/ws", echo)], lifespan=lifespan)
