"""A Starlette app with lifespan state and a WebSocket route."""

import asyncio
import contextlib
import threading

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"loop": id(asyncio.get_running_loop()), "thread": threading.current_thread().name}


async def home(request):
    return JSONResponse(
        {
            "state_loop": request.state.loop,
            "loop": id(asyncio.get_running_loop()),
            "state_thread": request.state.thread,
            "thread": threading.current_thread().name,
        }
    )


async def stream(request):
    async def chunks():
        for i in range(3):
            yield f"part{i}\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def ws(websocket):
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"starlette:{text}")
    await websocket.close()


app = Starlette(
    routes=[Route("/", home), Route("/stream", stream), WebSocketRoute("/ws", ws)],
    lifespan=lifespan,
)
