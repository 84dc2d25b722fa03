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
from typing import Any

TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 31\r\nconnection: close\r\n\r\n"
    b"Request header fields too large"
)


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
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting:
                self._await_head()  # arms the deadline for a keep-alive connection's next head
                self._head_bytes += len(data)
                if max_head is not None and self._head_bytes > max_head:
                    self._head_done()
                    self.transport.write(TOO_LARGE)
                    self.transport.close()
                    return
            cycle = self.cycle
            super().data_received(data)
            upgraded = self.transport.get_protocol() is not self  # now a WebSocket
            if self.cycle is not cycle or upgraded:  # uvicorn parsed a complete head
                self._head_done()
                self._head_bytes = 0

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

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            status = self.violation(scope)
            if status:
                await self.refuse(scope, send, status)
                return
        await self.app(scope, receive, send)

    def violation(self, scope: dict) -> int | None:
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
        if self.limit_line and target > self.limit_line:
            return 414
        headers = scope.get("headers", [])
        if self.limit_fields and len(headers) > self.limit_fields:
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
