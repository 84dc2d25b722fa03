"""gunicorn's request-head limits, checked on uvicorn's parsed head.

uvicorn (with httptools) reads request heads of any size: gunicorn bounds them. The connection
layer (`connection.py`) counts the bytes and lines before a head is complete and hands a head
that could break a limit to `RequestLimits`, an ASGI app in front of uvicorn's that checks the
parsed head against `limit_request_line` (414), `limit_request_fields` and
`limit_request_field_size` (431): the common request pays nothing for the check.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from gunicorn_gilworker.interpreter import built_in_each_thread
from gunicorn_gilworker.upstream import protocol_app, set_protocol_app

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


@built_in_each_thread
def limited_websocket(protocol_class: Any) -> type:
    """`protocol_class` (uvicorn's WebSocket protocol) checking each handshake's head against
    the limits given as its first argument (once per connection; the head's size is bounded by
    the connection layer that hands the connection over)."""

    class LimitedWebSocket(protocol_class):  # type: ignore[misc, valid-type]
        def __init__(self, limits: HeadLimits, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            set_protocol_app(self, RequestLimits(protocol_app(self), limits))

    LimitedWebSocket.__name__ = LimitedWebSocket.__qualname__ = f"Limited{protocol_class.__name__}"
    return LimitedWebSocket
