"""A response's head and body leave in one write; a held write never waits past the loop's turn.

uvicorn's protocols on asyncio's own loop and a real socket: the loop's transport is Python, so
its `write` can be counted. (The served end to end case is in test_serving.py.)
"""

from __future__ import annotations

import asyncio
import logging
from asyncio.selector_events import _SelectorSocketTransport
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gunicorn_gilworker.accepting import AcceptGate
from gunicorn_gilworker.client_noise import ClientNoise
from gunicorn_gilworker.connection import ConnectionLayer, HeldWrites
from gunicorn_gilworker.request.drain import Drain
from gunicorn_gilworker.request.limits import HeadLimits

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n"
PROTOCOLS = pytest.mark.parametrize("protocol", [HttpToolsProtocol, H11Protocol])


async def hello(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


class NeverPaused:
    def stop_accepting(self) -> None: ...
    def accept_again(self) -> None: ...


def connection_layer(protocol: type) -> ConnectionLayer:
    """gilworker's connection layer around `protocol`, with no limits and no deadline."""
    log = logging.getLogger("test_coalesce")
    return ConnectionLayer(
        protocol,
        limits=HeadLimits(0, 0, 0),
        header_timeout=0,
        drain=Drain(grace=1.0),
        gate=AcceptGate(NeverPaused(), 1000, log),
        noise=ClientNoise(log),
        log=log,
    )


async def serve(protocol: type, app: Any) -> tuple[asyncio.Server, int]:
    http = connection_layer(protocol).protocol_factory
    config = Config(app, http=http, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    server = await asyncio.get_running_loop().create_server(
        lambda: config.http_protocol_class(config=config, server_state=state, app_state={}),
        "127.0.0.1",
        0,
    )
    return server, server.sockets[0].getsockname()[1]


async def read_response(reader: asyncio.StreamReader, body: bytes) -> bytes:
    return await asyncio.wait_for(reader.readuntil(body), timeout=5)


@PROTOCOLS
def test_head_and_body_leave_in_one_write(protocol, mocker):
    writes = mocker.spy(_SelectorSocketTransport, "write")

    async def main() -> list[bytes]:
        server, port = await serve(protocol, hello)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(3):  # keep-alive: each response is held and joined afresh
            writer.write(REQUEST)
            answers.append(await read_response(reader, b"hello"))
        writer.close()
        server.close()
        return answers

    answers = asyncio.run(main())
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhello")
    server_writes = [c.args[1] for c in writes.call_args_list if c.args[1] != REQUEST]
    assert len(server_writes) == 3  # not 6: head and body together
    assert all(w.endswith(b"\r\n\r\nhello") for w in server_writes)


@PROTOCOLS
def test_a_head_whose_body_waits_goes_out_on_the_loops_next_turn(protocol):
    async def main() -> bytes:
        head_seen = asyncio.Event()

        async def head_then_wait(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.wait_for(head_seen.wait(), timeout=5)  # the client must see the head
            await send({"type": "http.response.body", "body": b"late"})

        server, port = await serve(protocol, head_then_wait)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(REQUEST)
        head = await read_response(reader, b"\r\n\r\n")
        head_seen.set()
        rest = await read_response(reader, b"0\r\n\r\n")  # chunked: the last chunk
        writer.close()
        server.close()
        return head + rest

    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"4\r\nlate\r\n" in answer


def test_held_write_goes_out_before_close_and_is_dropped_by_abort(mocker):
    async def main() -> None:
        layer = connection_layer(HttpToolsProtocol)
        transport = mocker.Mock()
        transport.is_closing.return_value = False
        loop = asyncio.get_running_loop()

        def held_class(transport: Any, loop: asyncio.AbstractEventLoop) -> HeldWrites:
            return HeldWrites(transport, layer, loop)

        closing = held_class(transport, loop)
        closing.write(b"head")
        assert transport.write.call_count == 0
        closing.close()
        assert transport.method_calls[-2:] == [mocker.call.write(b"head"), mocker.call.close()]

        aborting = held_class(transport, loop)
        aborting.write(b"head")
        aborting.abort()
        await asyncio.sleep(0)  # the loop's turn: nothing held is left to send
        assert transport.method_calls[-1] == mocker.call.abort()
        assert transport.write.call_count == 1

        upgrading = held_class(transport, loop)
        upgrading.write(b"head")
        upgrading.set_protocol("websocket")  # any other method: the held write first
        assert transport.method_calls[-2:] == [
            mocker.call.write(b"head"),
            mocker.call.set_protocol("websocket"),
        ]

        lost = held_class(transport, loop)
        lost.write(b"head")
        transport.is_closing.return_value = True  # the peer went away meanwhile
        await asyncio.sleep(0)
        assert transport.write.call_count == 2  # not sent to a closed transport

    asyncio.run(main())
