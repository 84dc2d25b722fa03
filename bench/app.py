"""The benchmark's app: a Starlette app with one route per workload."""

import asyncio
import json

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

PAYLOAD = json.dumps(
    {"items": [{"id": i, "name": f"item-{i}", "tags": ["a", "b"]} for i in range(20)]}
).encode()  # about 1 KB
CHUNK = b"x" * 65536


async def hello(request):
    return PlainTextResponse("Hello, world!")


async def json_route(request):
    return Response(PAYLOAD, media_type="application/json")


async def cpu(request):
    total = 0
    for i in range(20000):  # pure Python, a few ms
        total += i * i % 7
    return PlainTextResponse(str(total))


async def io(request):
    await asyncio.sleep(0.01)
    return PlainTextResponse("slept")


async def stream(request):
    async def chunks():
        for _ in range(16):  # 1 MB
            yield CHUNK

    return StreamingResponse(chunks(), media_type="application/octet-stream")


app = Starlette(
    routes=[
        Route("/", hello),
        Route("/json", json_route),
        Route("/cpu", cpu),
        Route("/io", io),
        Route("/stream", stream),
    ]
)
