"""A Quart app as its users write it: before_serving keeps loop-bound objects on the app."""

import asyncio
import json
import os
import threading

from quart import Quart

app = Quart(__name__)


def record(event: str) -> None:
    entry = {"hook": f"app_{event}", "pid": os.getpid(), "app": id(app)}
    entry["thread"] = threading.current_thread().name
    with open(os.environ["HOOK_LOG"], "a") as log:
        log.write(json.dumps(entry) + "\n")


@app.before_serving
async def startup() -> None:
    app.loop_id = id(asyncio.get_running_loop())
    app.queue = asyncio.Queue()  # used by requests: bound to the loop that first uses it
    record("startup")


@app.after_serving
async def shutdown() -> None:
    await app.queue.put("closed")  # another loop's queue would raise here
    record("shutdown")


@app.route("/")
async def index() -> dict:
    await app.queue.put("request")
    await app.queue.get()
    return {"state_loop": app.loop_id, "loop": id(asyncio.get_running_loop()), "pid": os.getpid()}
