"""Stopping a worker without dropping what its keep-alive clients send.

uvicorn's graceful shutdown closes every idle keep-alive connection at once. A client that has
just sent its next request on one (a busy client always has) gets the connection closed under
it: the request is lost (wrk counts a read error), on every HUP, max_requests recycling, TTOU
or `gunicornc worker kill`. Closing an idle connection is only safe once the client knows not
to use it, and the one way HTTP/1.1 has to say so is `Connection: close` on a response.

So a stopping worker (after it has stopped accepting):
- answers every request that arrives on an open connection with `Connection: close`, then
  closes that connection; a request in progress too, unless its response head is already out
  (a streamed response): that connection stays alive after it, for its next request or until
  its keep-alive time runs out, as it would have anyway;
- closes a connection idle when the stop began once it has stayed idle for `grace` seconds: a
  client silent that long is not in the middle of sending. Measured with `wrk -c32` and a HUP
  every 0.5 s (bench/replacements.py): a grace of 0 lost 27-44 requests per run, 10 ms none;
  gilworker keeps 1 s (at most `--keep-alive`). gunicorn's graceful_timeout bounds the stop;
- closes WebSockets with 1012 ("service restart"), as uvicorn does.

The `Connection: close` header goes into the response head through the request's `send`: uvicorn's
h11 protocol closes without announcing it, and its httptools protocol before 0.53 too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gunicorn_gilworker.upstream import (
    NO_CYCLE,
    current_cycle,
    http_cycle,
    last_response,
    protocol_transport,
    response_complete,
    response_started,
)

CLOSE = (b"connection", b"close")


class Drain:
    def __init__(self, grace: float) -> None:
        self.active = False
        self.grace = grace

    def begin(self, connections: Iterable[Any], loop: Any) -> None:
        self.active = True
        for connection in list(connections):
            cycle = current_cycle(connection)
            if cycle is NO_CYCLE:  # a WebSocket
                connection.shutdown()
            elif response_complete(cycle):
                loop.call_later(self.grace, close_if_idle, connection)
            elif not response_started(cycle):
                self.last_request(cycle)
            # else: a response under way, head already sent: see the module's docstring

    def last_request(self, cycle: Any) -> None:
        """This request's response is its connection's last: say so, then close."""
        last_response(cycle, announcing_close)


def close_if_idle(connection: Any) -> None:
    transport = protocol_transport(connection)
    if transport.get_protocol() is not connection:
        return  # the connection switched protocol meanwhile (HTTP/2: it closes itself)
    if response_complete(http_cycle(connection)) and not transport.is_closing():
        transport.close()


def announcing_close(send: Callable[[dict], Awaitable[None]]) -> Callable[[dict], Awaitable[None]]:
    async def send_closing(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers", ()) if h[0].lower() != b"connection"]
            message = {**message, "headers": [*headers, CLOSE]}
        await send(message)

    return send_closing
