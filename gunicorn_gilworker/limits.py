"""gunicorn's request limits and a request-head deadline, on top of uvicorn's protocols.

uvicorn (with httptools) reads request heads of any size and waits for a head for ever: a
slowloris client holds a connection open by sending a header line now and then. gunicorn bounds
both; so does this, without parsing HTTP itself:
- `guard_head(protocol_class, ...)`: the parser stays uvicorn's; the subclass only counts the bytes
  that arrive before a request head is complete (answering 431 past the bound) and closes a
  connection whose head is not complete within `header_timeout`.
- `RequestLimits`: an ASGI middleware that checks the parsed head against `limit_request_line`
  (414), `limit_request_fields` and `limit_request_field_size` (431) before the app sees it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
    b"Request header fields too large"
)


HEAD_BYTES = "gilworker.head_bytes"  # scope key: bytes read with the request head (an upper bound)


def head_size_bound(limit_line: int, limit_fields: int, limit_field_size: int) -> int | None:
    """The most bytes a request head may take under gunicorn's limits (0 means unlimited)."""
    if not (limit_line and limit_fields and limit_field_size):
        return None
    return limit_line + 2 + limit_fields * (limit_field_size + 2) + 2


def guard_head(protocol_class: type, max_head: int | None, header_timeout: float) -> type:
    class GuardedHead(protocol_class):  # type: ignore[misc, valid-type]
        _head_bytes = 0
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def _await_head(self) -> None:
            if header_timeout and self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_too_slow)

        def _head_done(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.logger.warning(
                    "Closing a connection whose request head took over %ss", header_timeout
                )
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            waiting = cycle is None or cycle.response_complete
            if waiting:
                self._head_bytes += len(data)
                if max_head is not None and self._head_bytes > max_head:
                    self._head_done()
                    self.transport.write(TOO_LARGE)
                    self.transport.close()
                    return
            super().data_received(data)
            if not waiting:
                return
            if self.cycle is not cycle or self.transport.get_protocol() is not self:
                self._head_done()  # uvicorn parsed a complete head (or upgraded to WebSocket)
                if self.cycle is not cycle:  # the app has not run yet: tell RequestLimits
                    self.cycle.scope[HEAD_BYTES] = self._head_bytes
                self._head_bytes = 0
            else:
                self._await_head()  # only part of a head: it gets a deadline (no timer per
                # request on the fast path, where each read brings a whole head)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            super().connection_lost(exc)

    GuardedHead.__name__ = GuardedHead.__qualname__ = f"Guarded{protocol_class.__name__}"
    return GuardedHead


class RequestLimits:
    """gunicorn's per-field request limits, checked on the parsed ASGI scope."""

    def __init__(self, app: Any, limit_line: int, limit_fields: int, limit_field_size: int):
        self.app = app
        self.limit_line = limit_line
        self.limit_fields = limit_fields
        self.limit_field_size = limit_field_size
        # A head no longer than this has no line or field over its limit: only the field count
        # needs a look (the guarded protocol records each head's size in the scope).
        self.small_head = min(limit_line or sys.maxsize, limit_field_size or sys.maxsize)

    def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        # Not a coroutine itself: it hands back the app's (or the refusal's) awaitable, so a
        # request pays no extra coroutine frame. uvicorn is told the interface is ASGI 3.
        if scope["type"] in ("http", "websocket"):
            if scope.get(HEAD_BYTES, sys.maxsize) <= self.small_head:
                status = self.too_many_fields(scope)
            else:
                status = self.violation(scope)
            if status:
                return self.refuse(scope, send, status)
        return self.app(scope, receive, send)

    def too_many_fields(self, scope: dict) -> int | None:
        too_many = self.limit_fields and len(scope.get("headers", ())) > self.limit_fields
        return 431 if too_many else None

    def violation(self, scope: dict) -> int | None:
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
        if self.limit_line and target > self.limit_line:
            return 414
        headers = scope.get("headers", [])
        if self.too_many_fields(scope):
            return 431
        if self.limit_field_size and any(
            len(name) + len(value) + 2 > self.limit_field_size for name, value in headers
        ):
            return 431
        return None

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
