"""The quick-start demo: a plain ASGI app that says which worker answered and how it runs."""

import json
import os
import sys
import threading


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    body = {
        "hello": "world",
        "pid": os.getpid(),
        "worker": threading.current_thread().name,
        "python": sys.version.split()[0],
        "gil": "on" if gil else "off",
    }
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode() + b"\n"})
