"""gunicorn's request limits and a request-head deadline, on top of uvicorn's protocols.

uvicorn (with httptools) reads request heads of any size and waits for a head for ever: a
slowloris client holds a connection open by sending a header line now and then. gunicorn bounds
both; so does this, without parsing HTTP itself:
- `guard_head(protocol_class, ...)`: the parser stays uvicorn's; the subclass only counts the bytes
  and lines that arrive before a request head is complete (answering 431 past the byte bound) and
  closes a connection whose head is not complete within `header_timeout`. It sees every request
  begin, so it also hands a stopping worker's new requests to its `Drain`.
- `RequestLimits`: an ASGI app in front of uvicorn's that checks the parsed head against
  `limit_request_line` (414), `limit_request_fields` and `limit_request_field_size` (431). The
  guarded protocol hands a request to it only when the head's size or line count could break a
  limit, so the common request pays nothing for the check.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

from gunicorn_gilworker.accepting import AcceptGate
from gunicorn_gilworker.client_noise import ClientNoise
from gunicorn_gilworker.request.drain import Drain

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
    b"Request header fields too large"
)


@dataclass(frozen=True)
class HeadLimits:
    """gunicorn's three request-head limits (0 means unlimited)."""

    line: int
    fields: int
    field_size: int

    def max_bytes(self) -> int | None:
        """The most bytes a head may take and still pass (None: no bound)."""
        if not (self.line and self.fields and self.field_size):
            return None
        return self.line + 2 + self.fields * (self.field_size + 2) + 2

    def safe_bytes(self) -> int:
        """A head no longer than this has no line or field over its limit."""
        return min(self.line or sys.maxsize, self.field_size or sys.maxsize)

    def safe_lines(self) -> int:
        """A head of no more lines than this has no more fields than allowed."""
        return self.fields + 2 if self.fields else sys.maxsize  # + request line, blank line

    def violation(self, scope: dict) -> int | None:
        """414 or 431 if the parsed head breaks a limit, else None."""
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
        if self.line and target > self.line:
            return 414
        headers = scope.get("headers", ())
        if self.fields and len(headers) > self.fields:
            return 431
        if self.field_size and any(
            len(name) + len(value) + 2 > self.field_size for name, value in headers
        ):
            return 431
        return None


class PartialHead:
    """What has arrived of a request head that is not complete yet."""

    __slots__ = ("bytes", "lines", "timer")

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self.timer: asyncio.TimerHandle | None = None


def guard_head(
    protocol_class: type[Any],
    limits: HeadLimits,
    header_timeout: float,
    drain: Drain,
    gate: AcceptGate,
    noise: ClientNoise,
) -> type:
    """`protocol_class` with the head bound, the head deadline and the limit checks; each new
    request told apart while the worker drains (`drain.py`); each connection counted for the
    worker's accepting (`accepting.py`).

    The common read, a whole head within the limits, costs a few comparisons: the state of a head
    spread over several reads lives in `partial`, not on the protocol, since a new attribute on
    uvicorn's protocol slows every attribute access uvicorn makes on it. Each worker builds its own
    class, with its own `partial`: worker threads share nothing here."""
    max_bytes = limits.max_bytes()
    safe_bytes, safe_lines = limits.safe_bytes(), limits.safe_lines()
    # A field takes at least 3 bytes ("x:\n"): fewer bytes than this cannot hold too many fields,
    # so most heads are passed on without counting their lines.
    few_fields_bytes = min(safe_bytes, 3 * (safe_lines - 1))
    # Called directly: on 3.13t a super() lookup takes the interpreter's one type lock, which
    # worker threads contend for (CPython gh-145685, PR 145775).
    feed = protocol_class.data_received
    made, lost = protocol_class.connection_made, protocol_class.connection_lost
    partial: dict[Any, PartialHead] = {}  # this worker's connections waiting for a head's rest

    class GuardedHead(protocol_class):  # type: ignore[misc, valid-type]
        app: Any  # uvicorn's protocol sets it to the app it serves

        def connection_made(self, transport: Any) -> None:
            made(self, transport)
            gate.connection_made(len(self.connections))  # uvicorn's: the server's connections
            if header_timeout:  # the first head gets a deadline too
                self._wait_for_rest(PartialHead())

        def data_received(self, data: bytes) -> None:
            # uvicorn's protocol attributes (no underscore, not documented): `cycle` (the
            # request in progress), `cycle.response_complete`, `app`, `loop`, `transport`
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # A body, or a pipelined head that uvicorn queues: not counted, always checked.
                self._feed_checked(data)
            elif partial and self in partial:
                self._feed_head(data, cycle)  # the rest of a head
            elif len(data) > few_fields_bytes and (
                len(data) > safe_bytes or data.count(b"\n") > safe_lines
            ):
                self._feed_head(data, cycle)  # a large head: counted, bounded, checked
            else:
                feed(self, data)  # a whole head that breaks no limit, in the common case
                if self.cycle is cycle:  # only part of one
                    self._head_incomplete(data, PartialHead())
            if drain.active and self.cycle is not cycle and self.cycle is not None:
                drain.last_request(self.cycle)  # a request on a stopping worker's connection

        def _feed_head(self, data: bytes, cycle: Any) -> None:
            head = partial.get(self) or PartialHead()
            head.bytes += len(data)
            head.lines += data.count(b"\n")
            if max_bytes is not None and head.bytes > max_bytes:
                self._head_done()
                self.transport.write(TOO_LARGE)
                self.transport.close()
                return
            if head.bytes > safe_bytes or head.lines > safe_lines:
                self._feed_checked(data)
            else:
                feed(self, data)
            if self.cycle is not cycle:
                self._head_done()  # uvicorn parsed a complete head
            else:
                self._head_incomplete(b"", head)

        def _head_incomplete(self, data: bytes, head: PartialHead) -> None:
            if self.transport.get_protocol() is not self or self.transport.is_closing():
                self._head_done()  # upgraded to WebSocket, or refused by uvicorn
                return
            head.bytes += len(data)
            head.lines += data.count(b"\n")
            self._wait_for_rest(head)

        def _feed_checked(self, data: bytes) -> None:
            # Any request whose head completes in this read goes through RequestLimits:
            # uvicorn takes `self.app` when a head is complete. (Rare: built when needed.)
            app = self.app
            self.app = RequestLimits(app, limits)
            try:
                feed(self, data)
            finally:
                self.app = app

        def _wait_for_rest(self, head: PartialHead) -> None:
            partial[self] = head
            if header_timeout and head.timer is None:
                head.timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _head_done(self) -> None:
            head = partial.pop(self, None)
            if head is not None and head.timer is not None:
                head.timer.cancel()

        def _head_too_slow(self) -> None:
            partial.pop(self, None)
            if self.transport is not None and not self.transport.is_closing():
                self.logger.debug(
                    "Closing a connection whose request head took over %ss", header_timeout
                )
                noise.count("slow_head")
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            lost(self, exc)
            gate.connection_lost(len(self.connections))

    GuardedHead.__name__ = GuardedHead.__qualname__ = f"Guarded{protocol_class.__name__}"
    return GuardedHead


class RequestLimits:
    """gunicorn's per-field request limits, checked on the parsed ASGI scope."""

    def __init__(self, app: Any, limits: HeadLimits):
        self.app = app
        self.limits = limits

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        # Not a coroutine itself: it hands back the app's (or the refusal's) awaitable.
        if scope["type"] in ("http", "websocket"):
            status = self.limits.violation(scope)
            if status:
                return self.refuse(scope, send, status)
        return self.app(scope, receive, send)

    @staticmethod
    async def refuse(scope: dict, send: Any, status: int) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1009})
            return
        body = b"URI too long" if status == 414 else b"Request header fields too large"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def limit_websocket(protocol_class: Any, limits: HeadLimits) -> type:
    """`protocol_class` checking each handshake's head against the limits (once per connection;
    its head size is bounded by the HTTP protocol that hands the connection over)."""

    init = protocol_class.__init__  # called directly: no super() lookup per connection

    class LimitedWebSocket(protocol_class):  # type: ignore[misc, valid-type]
        app: Any  # uvicorn's protocol sets it to the app it serves

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            self.app = RequestLimits(self.app, limits)

    LimitedWebSocket.__name__ = LimitedWebSocket.__qualname__ = f"Limited{protocol_class.__name__}"
    return LimitedWebSocket
