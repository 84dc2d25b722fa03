"""A Litestar app as its users write it: lifespan handlers that keep loop-bound objects in
app.state, on the one app object the module makes (Litestar keeps both on the app)."""

import asyncio
import json
import os
import threading

from litestar import Litestar, Request, get


def record(event: str, app: Litestar) -> None:
    entry = {"hook": f"app_{event}", "pid": os.getpid(), "app": id(app)}
    entry["thread"] = threading.current_thread().name
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


async def on_startup(app: Litestar) -> None:
    app.state.loop = id(asyncio.get_running_loop())
    app.state.queue = asyncio.Queue()  # used by requests: bound to the loop that first uses it
    record("startup", app)


async def on_shutdown(app: Litestar) -> None:
    await app.state.queue.put("closed")  # another loop's queue would raise here
    record("shutdown", app)


@get("/")
async def index(request: Request) -> dict[str, object]:
    state = request.app.state
    await state.queue.put("request")
    await state.queue.get()
    return {"state_loop": state.loop, "loop": id(asyncio.get_running_loop()), "pid": os.getpid()}


app = Litestar([index], on_startup=[on_startup], on_shutdown=[on_shutdown])
