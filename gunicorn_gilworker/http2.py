"""HTTP/2 connections, on gunicorn's own HTTP/2 stack (`gunicorn.http2`, built on the h2 library).

Which connections speak it is gunicorn's rule (`gunicorn.http2.negotiation`): `h2` chosen by ALPN
over TLS (`--http-protocols`, in its order), or cleartext h2c from a peer in
`forwarded_allow_ips`, by prior knowledge (the client's preface) or by `Upgrade: h2c`
(`--http2-cleartext`). The connection layer (connection.py) notices it and hands the transport to
an `HTTP2Connection`; HTTP/1.1 stays on uvicorn's protocol.

gunicorn's `AsyncHTTP2Connection` does the framing, HPACK, flow control, the `http2_*` limits and
the guards against rapid resets and control-frame floods; this module serves its requests: each
stream runs the worker's app chain (RequestContract, ForwardedHeaders, uvicorn's middleware) in a
task of its own, so the access log, statsd, the hooks and the metrics hold per stream as per
HTTP/1.1 request. The connection counts as one of uvicorn's (`server_state.connections`: the
accept gate and `--worker-connections` see it), each stream as one request
(`server_state.total_requests`: `--max-requests`), and its streams' tasks as uvicorn's tasks, so
a graceful stop waits for them. A stopping worker refuses new streams (REFUSED_STREAM, safe for
the client to retry), finishes those in flight, then says GOAWAY and closes, as `-k asgi` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any
from urllib.parse import unquote

from gunicorn.http.message import TOKEN_RE
from gunicorn.http.wsgi import HEADER_VALUE_RE
from gunicorn.http2 import negotiation
from gunicorn.http2.errors import HTTP2Error, HTTP2ErrorCode

from gunicorn_gilworker.request.contract import Request
from gunicorn_gilworker.upstream import connections, held_body

# RFC 9113 8.2.2: connection-specific fields are malformed in HTTP/2 (h2 refuses to send them)
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
NO_BODY_STATUSES = frozenset((204, 304))
FRAMING = CONNECTION_SPECIFIC | {b"content-length"}  # what a 1xx or 204 must not carry
PREFACE_TIMEOUT = negotiation.H2C_PREFACE_TIMEOUT  # seconds for the whole h2c preface
UPGRADE_101 = negotiation.UPGRADE_101
# gunicorn's rules for response fields (its -k asgi checks HTTP/1.1 responses with them): a name is
# a token, a value has no CR, LF or NUL. h2 would put a bad field in the HPACK table before it
# refuses it, and every later stream of the connection would then fail to decode.
FIELD_NAME = re.compile(TOKEN_RE.pattern.encode("latin-1"))
FIELD_VALUE = re.compile(HEADER_VALUE_RE.pattern.encode("latin-1"))
CLOSE_WAIT = 5.0  # seconds a closed connection's last frames may wait for a peer to read them


class ClientDisconnected(OSError):
    """What `send` raises once the client has reset the stream or gone (ASGI spec 2.4)."""


class HTTP2Policy:
    """One worker's HTTP/2 settings: whether a connection may speak it, and how."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.alpn = cfg.is_ssl and "h2" in cfg.http_protocols

    def prior_knowledge(self, peer: Any) -> bool:
        return bool(negotiation.prior_knowledge_allowed(self.cfg, peer))

    def upgrade(self, peer: Any) -> bool:
        return bool(negotiation.upgrade_allowed(self.cfg, peer))

    @property
    def mismatch_is_error(self) -> bool:
        """A trusted peer that sends HTTP/1.1 where only prior knowledge is allowed: 400."""
        return bool(negotiation.mismatch_is_error(self.cfg))

    @staticmethod
    def preface(data: bytes) -> str:
        """negotiation.MATCH, PARTIAL or MISMATCH."""
        return negotiation.preface_match(data)  # type: ignore[no-any-return]


def wanted(cfg: Any) -> bool:
    """Whether any connection of this configuration may speak HTTP/2."""
    return "h2" in cfg.http_protocols and (cfg.is_ssl or cfg.http2_cleartext != "off")


def served_protocols(cfg: Any) -> str:
    """What the start-up line names: "HTTP/1.1", "HTTP/1.1 and HTTP/2 (ALPN)", ..."""
    if not wanted(cfg):
        return "HTTP/1.1"
    if cfg.is_ssl:
        order = [{"h1": "http/1.1", "h2": "h2"}[p] for p in cfg.http_protocols if p != "h3"]
        return f"HTTP/1.1 and HTTP/2 (ALPN: {', '.join(order)})"
    return f"HTTP/1.1 and HTTP/2 (h2c: {cfg.http2_cleartext}, from forwarded_allow_ips)"


class HTTP2Connection(asyncio.StreamReaderProtocol):
    """One HTTP/2 connection: gunicorn's AsyncHTTP2Connection on the transport, its streams
    served by the worker's app."""

    def __init__(
        self,
        cfg: Any,
        app: Any,
        app_state: dict,
        server_state: Any,
        *,
        client: Any,
        server: Any,
        scheme: str,
        root_path: str,
        log: Any,
        gate: Any,
        stopping: bool = False,
    ) -> None:
        self.reader = asyncio.StreamReader(limit=2**16)
        super().__init__(self.reader)
        self.cfg = cfg
        self.app = app
        self.app_state = app_state
        self.server_state = server_state
        self.client = client
        self.server = server
        self.scheme = scheme
        self.root_path = root_path
        self.log = log
        self.gate = gate  # the worker's AcceptGate: counts the open connections
        self.connections = connections(server_state)
        self.h2: Any = None
        self.streams: set[asyncio.Task] = set()
        self.last_stream = 0  # the highest stream served: GOAWAY's last_stream_id
        self.stopping = stopping  # the worker stops: no new streams (it may have begun to)
        self.idle: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None  # _serve: asyncio keeps only a weak reference
        self.link: Any = None  # the transport

    def take_over(
        self, transport: Any, replaces: Any, data: bytes = b"", upgrade: Any = None
    ) -> None:
        """Serve HTTP/2 on `transport` from now on, in place of uvicorn's protocol `replaces`
        (in uvicorn's set of open connections too). `data`: what arrived already; `upgrade`:
        (HTTP2-Settings, the HTTP/1.1 request, its body) of an Upgrade: h2c, its stream 1."""
        self.connections.discard(replaces)
        self.connections.add(self)
        self.link = transport
        transport.set_protocol(self)
        self.connection_made(transport)
        transport.resume_reading()  # h11 pauses reading after a request asking for an Upgrade
        if data:
            self.data_received(data)
        loop = asyncio.get_running_loop()
        writer = asyncio.StreamWriter(transport, self, self.reader, loop)
        self.task = loop.create_task(self._serve(writer, upgrade))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.h2 is not None:
            self.h2.abort_streams_nowait()

    # -- uvicorn's view of a connection (Server.shutdown, drain.py) -------------------------

    def shutdown(self) -> None:
        """The worker stops: no new streams; close once those in flight are done."""
        self.stopping = True
        self._close_soon()

    def _close_soon(self) -> None:
        """Close with GOAWAY if no stream is open when it runs (one may begin meanwhile)."""
        if self.h2 is not None:
            asyncio.get_running_loop().create_task(self._close_if_idle())

    async def _close_if_idle(self) -> None:
        h2 = self.h2
        if self.streams:
            return
        if h2.is_closed:  # by gunicorn's stack, e.g. a peer that stopped reading
            self.link.abort()
            return
        await h2.close(last_stream_id=self.last_stream)  # the receive loop then reads the end

    # -- the connection ----------------------------------------------------------------------

    async def _serve(self, writer: asyncio.StreamWriter, upgrade: Any) -> None:
        from gunicorn.http2.async_connection import AsyncHTTP2Connection

        try:
            h2 = self.h2 = AsyncHTTP2Connection(self.cfg, self.reader, writer, self.client)
            if upgrade is None:
                await h2.initiate_connection()
            else:  # uvicorn counts a request when its response ends: this one's never does
                self._start(await h2.initiate_upgrade(*upgrade))
            self._idle_from_now()
            while not h2.is_closed:
                if (self.stopping or h2.draining) and not self.streams:
                    break
                requests = await h2.receive_data()
                for request in requests:
                    if self.stopping:  # (after a client's GOAWAY gunicorn refuses what is later)
                        await h2.reset_stream(request.stream.stream_id, REFUSED_STREAM)
                        continue
                    self._start(request)
        except asyncio.CancelledError:
            raise
        except HTTP2Error as exc:  # gunicorn's stack has sent its GOAWAY
            self.log.debug("HTTP/2 connection from %s closed: %s", self.client, exc)
        except Exception:
            self.log.exception("HTTP/2 connection from %s failed", self.client)
        finally:
            await self._finish()

    async def _finish(self) -> None:
        h2 = self.h2
        if self.idle is not None:
            self.idle.cancel()
        if h2 is not None and self.streams:  # the peer left: http.disconnect, then a grace
            h2.abort_streams_nowait()
            await asyncio.wait(list(self.streams), timeout=self.cfg.asgi_disconnect_grace_period)
            for task in list(self.streams):
                task.cancel()
            await asyncio.gather(*self.streams, return_exceptions=True)
        try:
            if h2 is not None:
                with contextlib.suppress(Exception):  # GOAWAY, if none went yet
                    await h2.close(last_stream_id=self.last_stream)
            # Not twice: h2.close() may have closed it, and asyncio's TLS transport closed
            # again has no protocol left (get_write_buffer_size raises).
            if not self.link.is_closing():
                self.link.close()
            if _unsent(self.link):  # a peer that does not read its last frames
                asyncio.get_running_loop().call_later(CLOSE_WAIT, self.link.abort)
        finally:
            if self in self.connections:
                self.connections.discard(self)
                self.gate.connection_lost(len(self.connections))

    def _idle_from_now(self) -> None:
        """Closed with GOAWAY after --keep-alive seconds with no stream, as an idle HTTP/1.1
        keep-alive connection is."""
        keepalive = self.cfg.keepalive
        if keepalive and not self.streams and self.idle is None:
            self.idle = asyncio.get_running_loop().call_later(keepalive, self._idle_timeout)

    def _idle_timeout(self) -> None:
        self.idle = None
        self._close_soon()

    def _start(self, request: Any) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
        self.last_stream = max(self.last_stream, request.stream.stream_id)
        task = asyncio.get_running_loop().create_task(Stream(self, request).run())
        self.streams.add(task)
        self.server_state.tasks.add(task)
        task.add_done_callback(self._stream_done)
        self.server_state.total_requests += 1

    def _stream_done(self, task: asyncio.Task) -> None:
        self.streams.discard(task)
        self.server_state.tasks.discard(task)
        if self.streams:
            return
        if self.stopping or self.h2.draining or self.h2.is_closed:
            self._close_soon()
        else:
            self._idle_from_now()


REFUSED_STREAM = HTTP2ErrorCode.REFUSED_STREAM


def _unsent(transport: Any) -> int:
    """Bytes a closed transport still has to send. Python 3.10's TLS transport raises once its
    connection is gone, before our connection_lost is called (its SSL layer, replaced in 3.11:
    https://github.com/python/cpython/issues/88177): nothing is left to send then."""
    try:
        return transport.get_write_buffer_size()
    except AttributeError:
        return 0


class UpgradeToHTTP2:
    """The app of an HTTP/1.1 connection that may switch to h2c by `Upgrade: h2c`
    (`--http2-cleartext upgrade|both`, from a trusted peer): a request that asks for it, as
    gunicorn's rules read it (`negotiation.upgrade_settings`), becomes stream 1 of an HTTP/2
    connection (`switch`); any other goes to the app. A request with a body is served as
    HTTP/1.1, as RFC 9110 7.8 allows: uvicorn's httptools protocol does not read the body of a
    request that asks for an upgrade (Kludex/uvicorn#2722)."""

    def __init__(self, app: Any, switch: Any) -> None:
        self.app = app
        self.switch = switch  # (HTTP2-Settings, the request) -> None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # every request of a trusted proxy passes here: only one with an Upgrade is read further
        if scope["type"] == "http" and any(name == b"upgrade" for name, _ in scope["headers"]):
            request = Request(_as_sent(scope))
            settings = negotiation.upgrade_settings(request)
            if settings is not None and not _has_body(request.headers):
                self.switch(settings, request)
                return
        await self.app(scope, receive, send)


def _as_sent(scope: dict) -> dict:
    """The request's path as the client sent it: uvicorn puts --root-path before it, and the
    stream's scope (Stream.scope) does too."""
    root = scope.get("root_path", "")
    if not root:
        return scope
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return {
        **scope,
        "raw_path": raw_path.removeprefix(root.encode()),
        "path": scope["path"].removeprefix(root),
    }


def _has_body(headers: list[tuple[str, str]]) -> bool:
    for name, value in headers:
        if name == "TRANSFER-ENCODING" or (name == "CONTENT-LENGTH" and value.strip() != "0"):
            return True
    return False


class Stream:
    """One request of an HTTP/2 connection, as ASGI: its scope, `receive` and `send`."""

    __slots__ = (
        "body_done",
        "body_ended",
        "connection",
        "expect_trailers",
        "h2",
        "head",
        "no_body",
        "over",
        "request",
        "response_done",
        "started",
        "stream",
        "stream_id",
        "trailers",
        "watch",
    )

    def __init__(self, connection: HTTP2Connection, request: Any) -> None:
        self.connection = connection
        self.h2 = connection.h2
        self.request = request
        self.stream = request.stream
        self.stream_id = request.stream.stream_id
        self.body_done = False  # the request's body has been handed to the app
        self.started = False
        self.head: list | None = None  # the response head, sent with the first body bytes
        self.no_body = False
        self.expect_trailers = False
        self.trailers: list = []
        self.body_ended = False  # the last body message was sent (trailers may follow)
        self.response_done = False
        # Set when the response is done or the client is gone: every receive() waiting for
        # http.disconnect waits on it (gunicorn's stream wakes one waiter only).
        self.over: asyncio.Event | None = None
        self.watch: asyncio.Task | None = None  # waits for the client to go

    @property
    def nothing_sent(self) -> bool:
        """No part of the response has gone yet: a 500 can still answer (the head waits for
        the first body bytes)."""
        return not self.started or self.head is not None

    @property
    def disconnected(self) -> bool:
        """The client reset the stream or left (RequestContract counts no bytes after)."""
        return bool(self.stream.disconnected)

    def scope(self) -> dict:
        request, connection = self.request, self.connection
        # h2 decoded the fields as UTF-8 (gunicorn's setting): encoding gives the wire's bytes
        root_path = connection.root_path
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "2",
            "server": connection.server,
            "client": connection.client,
            "scheme": connection.scheme,
            "method": request.method,
            "root_path": root_path,
            # as uvicorn's HTTP/1.1 protocols give them: with the root path
            "path": root_path + _unquoted(request.path),
            "raw_path": root_path.encode() + request.path.encode(),
            "query_string": request.query.encode(),
            "headers": [(name.lower().encode(), value.encode()) for name, value in request.headers],
            "state": connection.app_state.copy(),
            "extensions": {"http.response.trailers": {}},
        }

    async def run(self) -> None:
        h2, log = self.h2, self.connection.log
        try:
            await self.connection.app(self.scope(), self.receive, self.send)
            if self.disconnected or self.response_done:
                return
            if self.body_ended:  # trailers announced, never sent: end the stream anyway
                await h2.send_data(self.stream_id, b"", end_stream=True)
            elif self.nothing_sent:  # uvicorn's answer to an app that did not answer
                what = "completing" if self.started else "starting"
                log.error(f"ASGI callable returned without {what} response.")
                await h2.send_error(self.stream_id, 500, "Internal Server Error")
            else:
                log.error("ASGI callable returned without completing response.")
                await h2.reset_stream(self.stream_id, HTTP2ErrorCode.INTERNAL_ERROR)
        except (ClientDisconnected, HTTP2Error) as exc:  # the client left: not the app's fault
            log.debug("HTTP/2 stream %s: %s", self.stream_id, exc)
        except Exception:
            log.exception("Exception in ASGI application")
            if not self.disconnected and not self.response_done:
                with contextlib.suppress(Exception):
                    if self.nothing_sent:
                        await h2.send_error(self.stream_id, 500, "Internal Server Error")
                    else:
                        await h2.reset_stream(self.stream_id, HTTP2ErrorCode.INTERNAL_ERROR)
        finally:
            h2.cleanup_stream(self.stream_id)
            if self.watch is not None:
                self.watch.cancel()

    async def receive(self) -> dict:
        stream = self.stream
        if self.body_done or stream.disconnected:
            if not stream.disconnected and not self.response_done:
                await self._over()
            return {"type": "http.disconnect"}
        if stream.expect_continue and not stream.response_headers_sent:
            stream.expect_continue = False  # the client waits for this before its body
            await self.h2.send_informational(self.stream_id, 100, [])
        read = stream.read_body_chunk()
        if not stream.request_complete and not held_body(stream):  # it may have to wait
            read = asyncio.wait_for(read, self.connection.cfg.timeout or None)
        try:
            chunk = await read
        except asyncio.TimeoutError:  # silent mid-body for --timeout (-k asgi's bound): gone
            await self.h2.reset_stream(self.stream_id, HTTP2ErrorCode.CANCEL)
            return {"type": "http.disconnect"}
        except Exception:  # reset before its body was complete
            return {"type": "http.disconnect"}
        if chunk is None:
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        self.body_done = stream.body_complete and not held_body(stream)
        return {"type": "http.request", "body": chunk, "more_body": not self.body_done}

    async def _over(self) -> None:
        """Until the response is done or the client goes, whoever else waits too."""
        if self.over is None:
            over = self.over = asyncio.Event()
            self.watch = asyncio.get_running_loop().create_task(self.stream.wait_disconnect())
            self.watch.add_done_callback(lambda _: over.set())
        await self.over.wait()

    def _done(self) -> None:
        self.response_done = True
        if self.over is not None:
            self.over.set()

    async def send(self, message: dict) -> None:
        kind = message["type"]
        h2, stream_id = self.h2, self.stream_id
        if self.disconnected:
            raise ClientDisconnected(f"HTTP/2 stream {stream_id} was closed by the client")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("Expected ASGI message 'http.response.body', got 'start'")
            status = message["status"]
            framing = FRAMING if status < 200 or status == 204 else CONNECTION_SPECIFIC
            head = [(b":status", str(status).encode())]
            for name, value in _checked(message.get("headers", ())):  # raises before starting
                if name not in framing:
                    head.append((name, value))
            self.started = True
            self.head = head
            self.no_body = (
                self.request.method == "HEAD" or status < 200 or status in NO_BODY_STATUSES
            )
            self.expect_trailers = bool(message.get("trailers", False))
        elif kind == "http.response.body":
            if not self.started or self.body_ended:
                raise RuntimeError(f"Unexpected ASGI message {kind!r}")
            body = b"" if self.no_body else message.get("body", b"")
            more = message.get("more_body", False)
            end = not more and not self.expect_trailers
            if self.head is not None:  # the head goes with the first body bytes
                head, self.head = self.head, None
                if not await h2.send_response_headers(stream_id, head, end_stream=end and not body):
                    raise ClientDisconnected(f"HTTP/2 stream {stream_id} is closed")
                if end and not body:
                    self.body_ended = True
                    self._done()
                    return
            if (body or end) and not await h2.send_data(stream_id, body, end_stream=end):
                raise ClientDisconnected(f"HTTP/2 stream {stream_id} is closed")
            if not more:
                self.body_ended = True
                if not self.expect_trailers:
                    self._done()
        elif kind == "http.response.trailers":
            if not self.expect_trailers or not self.body_ended or self.response_done:
                raise RuntimeError("Unexpected ASGI message 'http.response.trailers'")
            self.trailers += _checked(message.get("headers", ()))
            if not message.get("more_trailers", False):
                self._done()
                await h2.send_trailers(stream_id, _text(self.trailers))
        elif kind == "http.response.informational" and self.head is None and not self.started:
            fields = _text(_checked(message["headers"]))
            await h2.send_informational(stream_id, message["status"], fields)
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}")


def _checked(headers: Any) -> list[tuple[bytes, bytes]]:
    """An app's response fields, lower-cased; RuntimeError (as uvicorn's) for one that HTTP/2
    cannot carry."""
    fields = []
    for name, value in headers:
        name, value = bytes(name).lower(), bytes(value)
        if not FIELD_NAME.fullmatch(name):
            raise RuntimeError(f"Invalid HTTP header name: {name!r}")
        if not FIELD_VALUE.fullmatch(value) or (
            name == b"te" and value.strip().lower() != b"trailers"
        ):
            raise RuntimeError(f"Invalid HTTP header value for {name!r}")  # the value may be secret
        fields.append((name, value))
    return fields


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Fields as the str pairs gunicorn's trailers and 1xx take (h2 sends them as UTF-8: other
    bytes would change on the way)."""
    try:
        return [(name.decode(), value.decode()) for name, value in headers]
    except UnicodeDecodeError:
        raise RuntimeError("HTTP/2 trailers and 1xx fields must be UTF-8 here") from None


def _unquoted(path: str) -> str:
    return unquote(path) if "%" in path else path
