"""A plain ASGI 3 app (no framework) that reports where it runs, for the tests."""

import asyncio
import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import time
from urllib.parse import parse_qs

IMPORTED_IN_PID = os.getpid()
STARTUPS: list[int] = []  # one entry per lifespan startup in this process
KEPT: list[bytearray] = []  # /leak keeps memory here, as a leaking app would


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
    elif scope["type"] == "websocket":
        await echo(receive, send)
    else:
        await http(scope, receive, send)


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            loop = asyncio.get_running_loop()
            STARTUPS.append(id(loop))
            scope["state"]["loop"] = id(loop)
            scope["state"]["thread"] = threading.current_thread().name
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def http(scope, receive, send):
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    if path == "/stream":
        await start(send, 200, b"text/plain")
        for i in range(int(query.get("n", ["5"])[0])):
            await send({"type": "http.response.body", "body": b"chunk%d\n" % i, "more_body": True})
            await asyncio.sleep(float(query.get("delay", ["0.01"])[0]))
        await send({"type": "http.response.body", "body": b""})
        return
    if (
        path == "/held-keys"
    ):  # the tuple keys of a module's table, and whether this worker holds them
        table = vars(importlib.import_module(query["module"][0]))[query["table"][0]]
        keys = [key for key in table if type(key) is tuple]
        held = {id(key) for key in worker_of_this_thread_pinned_keys()}
        body = {
            "keys": len(keys),
            "held": sum(id(key) in held for key in keys),
            "shared_counts": [shared_refcount(key) for key in keys],
        }
        await start(send, 200, b"application/json")
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
        return
    if path == "/head-first":  # the head now, the body after a pause
        await start(send, 200, b"text/plain")
        await asyncio.sleep(float(query["s"][0]))
        await send({"type": "http.response.body", "body": b"late body"})
        return
    if path == "/status":  # ?code=C&body=N: N bytes of body, announced, whatever C and the method
        size = int(query.get("body", ["0"])[0])
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % size)]
        code = int(query["code"][0])
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": b"x" * size})
        return
    if path == "/echo":  # the request body, read as it streams in: its size and chunk count
        size = chunks = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            chunks += 1
            if not message.get("more_body", False):
                break
        await start(send, 200, b"application/json")
        body = {"size": size, "chunks": chunks, "http_version": scope["http_version"]}
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})
        return
    if path == "/header":  # ?name=N&value=V: a response with that one header field
        field = (query["name"][0].encode("latin-1"), query["value"][0].encode("latin-1"))
        await send({"type": "http.response.start", "status": 200, "headers": [field]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    if path == "/trailers":  # ?value=V&encoding=E: a body, then the trailer x-check: V
        assert "http.response.trailers" in scope.get("extensions", {})
        value = query["value"][0].encode(query.get("encoding", ["utf-8"])[0])
        start_message = {"type": "http.response.start", "status": 200, "trailers": True}
        await send({**start_message, "headers": [(b"trailer", b"x-check")]})
        await send({"type": "http.response.body", "body": b"body"})
        trailer = {"type": "http.response.trailers", "headers": [(b"x-check", value)]}
        await send(trailer)
        return
    if path == "/start-only":  # starts a response and returns without its body
        await start(send, 200, b"text/plain")
        return
    if path == "/listeners":  # a disconnect listener beside the handler, as frameworks run one
        while (await receive()).get("more_body"):
            pass
        listener = asyncio.ensure_future(receive())
        poll = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # both wait now
        poll.cancel()  # a poll given up at once, as Starlette's request.is_disconnected()
        if query.get("then") == ["answer"]:  # it must wake once the response is done
            await start(send, 200, b"text/plain")
            await send({"type": "http.response.body", "body": b"answered"})
        else:  # it must wake when the client goes
            print(f"listening in {os.getpid()}", file=sys.stderr, flush=True)
        message = await asyncio.wait_for(listener, 20)
        print(f"listener heard {message['type']}", file=sys.stderr, flush=True)
        return
    if path == "/until-disconnect":  # answers nothing: waits for the client to go
        print(f"waiting for a disconnect in {os.getpid()}", file=sys.stderr, flush=True)
        while (await receive())["type"] != "http.disconnect":
            pass
        print(f"disconnect heard in {os.getpid()}", file=sys.stderr, flush=True)
        return
    if path == "/crash":  # ends this worker's event loop: the worker dies, as by a bug
        asyncio.get_running_loop().call_soon(crash)
    elif path == "/segfault":  # a real SIGSEGV in C, as a buggy extension would cause
        ctypes.string_at(0)
    elif path == "/exit":  # os._exit from app code: ends the whole process at once
        os._exit(7)
    elif path == "/leak":  # keeps 1 MB (or ?kb=N) for ever; ?touch=1: resident, written to
        size = int(query.get("kb", ["1024"])[0]) * 1024
        KEPT.append(bytearray(b"\x01") * size if "touch" in query else bytearray(size))
    elif path == "/sleep":  # in flight for a while: the log line says it has begun
        print(f"sleep request started in {os.getpid()}", file=sys.stderr, flush=True)
        await asyncio.sleep(float(query["s"][0]))
    elif path == "/csleep":  # one long C call: no stop or exception reaches it before it returns
        print(f"csleep started in {os.getpid()}", file=sys.stderr, flush=True)  # in the log
        time.sleep(float(query["s"][0]))
    elif path == "/block":  # blocks the event loop, in small steps an async exception can stop
        print(f"block started in {os.getpid()}", file=sys.stderr, flush=True)  # in the log
        deadline = time.monotonic() + float(query["s"][0])
        while time.monotonic() < deadline:
            time.sleep(0.005)
    state = scope.get("state", {})
    body = {
        "pid": os.getpid(),
        "imported_in": IMPORTED_IN_PID,
        "thread": threading.current_thread().name,
        "loop": id(asyncio.get_running_loop()),
        "loop_module": type(asyncio.get_running_loop()).__module__,
        "http_module": serving_module(),
        "state_loop": state.get("loop"),
        "state_thread": state.get("thread"),
        "startups": len(STARTUPS),
        "sigterm_handler": getattr(signal.getsignal(signal.SIGTERM), "__qualname__", None),
        "env_flag": os.environ.get("GILWORKER_TEST_FLAG"),
        "client": scope.get("client"),
        "scheme": scope["scheme"],
        "http_version": scope["http_version"],
        "path": scope["path"],
        "root_path": scope.get("root_path", ""),
    }
    await start(send, 200, b"application/json")
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def crash():
    raise SystemExit(1)


async def start(send, status, content_type):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )


async def echo(receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        reply = f"echo:{text}:{threading.current_thread().name}"
        await send({"type": "websocket.send", "text": reply})


def serving_module() -> str | None:
    """The uvicorn HTTP protocol module whose request cycle awaits this app (h11_impl or
    httptools_impl): the calling coroutines' frames lead back to it."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("uvicorn.protocols.http."):
            return name.rsplit(".", 1)[1]
        frame = frame.f_back
    return None


def shared_refcount(obj: object) -> int:
    """A free-threaded object's ob_ref_shared (after ob_tid, flags, mutex, gc bits and the
    local count: offset 16 in 3.13t and 3.14t's PyObject), which other threads' references
    raise. Checked against ob_type, the next field."""
    assert ctypes.c_void_p.from_address(id(obj) + 24).value == id(type(obj))
    return ctypes.c_ssize_t.from_address(id(obj) + 16).value


def worker_of_this_thread_pinned_keys() -> list:
    """The keys the GilWorker of this thread holds: the thread runs its WorkerThread's _run."""
    handle = getattr(getattr(threading.current_thread(), "_target", None), "__self__", None)
    return getattr(getattr(handle, "worker", None), "pinned_keys", [])
