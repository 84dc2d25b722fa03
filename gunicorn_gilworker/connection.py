"""One layer around uvicorn's HTTP protocol: what gunicorn promises per connection.

uvicorn's protocol (httptools or h11) parses and answers; the layer adds, without parsing HTTP
itself:
- the PROXY header (`--proxy-protocol`), read before the first request with gunicorn's own parser
  (as `-k asgi` reads it), its client address given to uvicorn's protocol;
- the request-head limits: the bytes and lines that arrive before a head is complete are counted
  (431 past the byte bound), and a head not complete within `--header-timeout` closes the
  connection (slowloris); a head that could break a per-field limit goes through
  `RequestLimits` (414/431) on its parsed scope, so the common request pays a few comparisons;
- the accept gate (`accepting.py`): every connection counted for the worker's accepting;
- the drain (`request/drain.py`): a request that begins on a stopping worker is its connection's
  last;
- write coalescing: a response's head and body leave in one send (see `HeldWrites`);
- HTTP/2 (http2.py): a connection that chose `h2` by ALPN, or a trusted peer's h2c preface
  (prior knowledge), is handed to an `HTTP2Connection` before uvicorn parses anything; a
  trusted peer's `Upgrade: h2c` request, once uvicorn has parsed it, becomes its stream 1.

`ConnectionLayer` holds one worker's collaborators; `layered(protocol_class)` is the one class
built around a uvicorn protocol class, with each connection's state in one attribute of the
object, `gilworker` (a `ConnectionState`); `ConnectionLayer.protocol_factory` is what uvicorn's
Config takes as its `http`. One attribute, not three: uvicorn's httptools protocol keeps 28 of
its own, and past 30 CPython stops sharing the instance dicts' keys (and 3.13 its inline values),
which slows every attribute access uvicorn makes; slots on the subclass would end the inline
values too.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Callable
from typing import Any

from gunicorn.asgi.parser import InvalidProxyHeader, InvalidProxyLine

from gunicorn_gilworker.accepting import AcceptGate
from gunicorn_gilworker.client_noise import ClientNoise
from gunicorn_gilworker.http2 import (
    PREFACE_TIMEOUT,
    UPGRADE_101,
    HTTP2Connection,
    HTTP2Policy,
    UpgradeToHTTP2,
)
from gunicorn_gilworker.interpreter import built_in_each_thread
from gunicorn_gilworker.request.drain import Drain
from gunicorn_gilworker.request.limits import TOO_LARGE, HeadLimits, RequestLimits
from gunicorn_gilworker.upstream import (
    ProxyHeaderReader,
    abandon_cycle,
    http_cycle,
    open_connections,
    protocol_app,
    protocol_client,
    protocol_connection,
    protocol_loop,
    protocol_transport,
    proxy_allow_networks,
    quiet_upgrade_warning,
    response_complete,
    set_protocol_app,
    set_protocol_client,
)

BAD_PROXY_HEADER = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInvalid PROXY header"
)
NO_PREFACE = (  # --http2-cleartext prior-knowledge alone: a trusted peer must speak HTTP/2
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nInvalid HTTP/2 connection preface"
)


class ProxyPolicy:
    """`--proxy-protocol` and `--proxy-allow-from`, as `-k asgi` applies them: a peer outside the
    allowed networks is served as if the setting were off (its PROXY line is not HTTP: 400); a
    UNIX socket has no address to check and is allowed, as gunicorn documents."""

    def __init__(self, cfg: Any) -> None:
        self.mode = cfg.proxy_protocol
        self.anyone = "*" in cfg.proxy_allow_ips
        self.networks = [] if self.anyone else proxy_allow_networks(cfg)

    def allowed(self, client: Any) -> bool:
        if not client or self.anyone:
            return True
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class ConnectionState:
    """What the layer keeps per connection."""

    __slots__ = ("head", "layer", "preface", "preface_timer", "proxy_header", "upgrade")

    def __init__(self, layer: ConnectionLayer) -> None:
        self.layer = layer
        self.head: PartialHead | None = None  # a head spread over several reads
        self.proxy_header: ProxyHeaderReader | None = None
        self.preface: bytes | None = None  # what came while it may be an h2c preface
        self.preface_timer: asyncio.TimerHandle | None = None
        self.upgrade = False  # its Upgrade: h2c is answered


class PartialHead:
    """What has arrived of a request head that is not complete yet."""

    __slots__ = ("bytes", "lines", "timer")

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self.timer: asyncio.TimerHandle | None = None


class HeldWrites:
    """A connection's transport, holding a write until the next one or the loop's next turn.

    uvicorn writes a response's head when the app sends `http.response.start` and its body on
    `http.response.body`: two sends where one would do, and on loopback or a LAN a send costs
    about what the Python that made the response does. A head and the body the app sends in the
    same step leave together; nothing waits longer than one turn of the loop (a streamed
    response still shows its head at once). Methods that would see or change the order of
    writes send the held one first."""

    __slots__ = ("held", "is_closing", "layer", "loop", "transport")

    def __init__(
        self, transport: asyncio.Transport, layer: ConnectionLayer, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.transport = transport
        self.layer = layer
        self.loop = loop
        self.held: Any = None
        self.is_closing = transport.is_closing  # asked after every response: no detour

    def write(self, data: Any) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(b"".join((held, data)))
        elif data:
            self.held = data
            self.layer.hold(self)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():  # lost meanwhile: nothing to send to
                self.transport.write(held)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self.transport.writelines(chunks)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None  # abort drops what is unsent
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        # The rarer methods (write_eof, set_protocol, get_extra_info, pause_reading, ...).
        self.flush()
        return getattr(self.transport, name)


class TurnWrites(HeldWrites):
    """An HTTP/2 connection's transport: every write of a loop turn leaves in one send. Many
    streams answer in the same turn, each with a HEADERS and a DATA frame written apart by
    gunicorn's HTTP/2 stack; one send for them all is what `HeldWrites` is for HTTP/1.1.

    What is held goes at once from `TURN_BYTES` on: the transport must see a large body to pause
    the protocol, or the stack's `drain()` never waits (from Python 3.12 a drain with nothing to
    wait for does not even yield), and a peer with a wide window could make one turn hold a
    whole response."""

    __slots__ = ("held_bytes",)

    def __init__(
        self, transport: asyncio.Transport, layer: ConnectionLayer, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(transport, layer, loop)
        self.held_bytes = 0

    def write(self, data: Any) -> None:
        held = self.held
        if held is None:
            if not data:
                return
            self.held = held = []
            self.held_bytes = 0
            self.layer.hold(self)
        held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= TURN_BYTES:  # goes now; still the layer's to flush at the turn's end
            self.held, self.held_bytes = [], 0
            self._send(held)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self._send(held)

    def _send(self, held: list) -> None:
        if held and not self.transport.is_closing():
            self.transport.write(b"".join(held))


TURN_BYTES = 64 * 1024  # asyncio's default high-water mark: one more write would pause


class ConnectionLayer:
    """One worker's part in each of its connections (made in the worker's own thread)."""

    def __init__(
        self,
        protocol_class: type,
        *,
        limits: HeadLimits,
        header_timeout: float,
        drain: Drain,
        gate: AcceptGate,
        noise: ClientNoise,
        log: Any,
        proxy: ProxyPolicy | None = None,
        http2: HTTP2Policy | None = None,
    ) -> None:
        self.connection_class = layered(protocol_class)
        self.limits = limits
        self.header_timeout = header_timeout
        self.drain = drain
        self.gate = gate
        self.noise = noise
        self.log = log
        self.proxy = proxy
        self.http2 = http2
        self.max_bytes = limits.max_bytes()
        self.safe_bytes, self.safe_lines = limits.safe_bytes(), limits.safe_lines()
        # A field takes at least 3 bytes ("x:\n"): fewer bytes than this cannot hold too many
        # fields, so most heads are passed on without counting their lines.
        self.few_fields_bytes = min(self.safe_bytes, 3 * (self.safe_lines - 1))
        self.held: list[HeldWrites] = []  # this worker's transports holding a write

    @property
    def protocol_factory(self) -> Callable[..., asyncio.Protocol]:
        """uvicorn's Config `http`: called as uvicorn calls its protocol class."""
        return functools.partial(self.connection_class, self)

    def hold(self, transport: HeldWrites) -> None:
        if not self.held:
            transport.loop.call_soon(self.flush_held)
        self.held.append(transport)

    def flush_held(self) -> None:
        """Once per turn of the loop, for every connection that still holds a write."""
        flushing = self.held.copy()
        self.held.clear()
        for transport in flushing:
            transport.flush()


@built_in_each_thread
def layered(protocol_class: type) -> type:
    """`protocol_class` (uvicorn's) inside gilworker's connection layer."""
    # uvicorn's methods, bound once: the layer calls them on every read and connection
    base: Any = protocol_class
    made, lost, feed = base.connection_made, base.connection_lost, base.data_received

    class Connection(protocol_class):  # type: ignore[misc, valid-type]
        gilworker: ConnectionState

        def __init__(self, layer: ConnectionLayer, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.gilworker = ConnectionState(layer)

        def connection_made(self, transport: Any) -> None:
            state = self.gilworker
            layer = state.layer
            made(self, HeldWrites(transport, layer, protocol_loop(self)))
            if layer.proxy is not None and layer.proxy.allowed(protocol_client(self)):
                state.proxy_header = ProxyHeaderReader(layer.proxy.mode)
            layer.gate.connection_made(open_connections(self))
            if layer.header_timeout:  # the first head gets a deadline too
                self._wait_for_rest(PartialHead())
            http2 = layer.http2
            if http2 is not None:
                if http2.alpn:
                    tls = transport.get_extra_info("ssl_object")
                    if tls is not None and tls.selected_alpn_protocol() == "h2":
                        self._to_http2(b"")
                else:
                    peer = transport.get_extra_info("peername")
                    if http2.prior_knowledge(peer):
                        state.preface = b""  # gunicorn's bound on the whole preface, from now
                        state.preface_timer = protocol_loop(self).call_later(
                            PREFACE_TIMEOUT, self._no_preface
                        )
                    if http2.upgrade(peer):
                        state.upgrade = True
                        set_protocol_app(self, UpgradeToHTTP2(protocol_app(self), self._upgrade))

        def data_received(self, data: bytes) -> None:
            state = self.gilworker
            if state.proxy_header is not None:
                self._read_proxy_header(data)
                return
            if state.preface is not None:
                self._read_preface(data)
                return
            layer = state.layer
            cycle = http_cycle(self)
            if not response_complete(cycle):
                # A body, or a pipelined head that uvicorn queues: not counted, always checked.
                self._feed_checked(data)
            elif state.head is not None:
                self._feed_head(data, cycle)  # the rest of a head
            elif len(data) > layer.few_fields_bytes and (
                len(data) > layer.safe_bytes or data.count(b"\n") > layer.safe_lines
            ):
                self._feed_head(data, cycle)  # a large head: counted, bounded, checked
            else:
                feed(self, data)  # a whole head that breaks no limit, in the common case
                if http_cycle(self) is cycle:  # only part of one
                    self._head_incomplete(data, PartialHead())
            if layer.drain.active:
                now = http_cycle(self)
                if now is not cycle and now is not None:
                    layer.drain.last_request(now)  # a request on a stopping worker's connection

        def _feed_head(self, data: bytes, cycle: Any) -> None:
            state = self.gilworker
            layer = state.layer
            head = state.head or PartialHead()
            head.bytes += len(data)
            head.lines += data.count(b"\n")
            if layer.max_bytes is not None and head.bytes > layer.max_bytes:
                self._head_done()
                self._refuse(TOO_LARGE)
                return
            if head.bytes > layer.safe_bytes or head.lines > layer.safe_lines:
                self._feed_checked(data)
            else:
                feed(self, data)
            if http_cycle(self) is not cycle:
                self._head_done()  # uvicorn parsed a complete head
            else:
                self._head_incomplete(b"", head)

        def _head_incomplete(self, data: bytes, head: PartialHead) -> None:
            transport = protocol_transport(self)
            if transport.get_protocol() is not self or transport.is_closing():
                self._head_done()  # upgraded to WebSocket, or refused by uvicorn
                return
            head.bytes += len(data)
            head.lines += data.count(b"\n")
            self._wait_for_rest(head)

        def _feed_checked(self, data: bytes) -> None:
            # Any request whose head completes in this read goes through RequestLimits:
            # uvicorn takes the protocol's app when a head is complete. (Rare: built when needed.)
            app = protocol_app(self)
            set_protocol_app(self, RequestLimits(app, self.gilworker.layer.limits))
            try:
                feed(self, data)
            finally:
                set_protocol_app(self, app)

        def _wait_for_rest(self, head: PartialHead) -> None:
            state = self.gilworker
            state.head = head
            timeout = state.layer.header_timeout
            if timeout and head.timer is None:
                head.timer = protocol_loop(self).call_later(timeout, self._head_too_slow)

        def _head_done(self) -> None:
            state = self.gilworker
            head, state.head = state.head, None
            if head is not None and head.timer is not None:
                head.timer.cancel()

        def _head_too_slow(self) -> None:
            state = self.gilworker
            state.head = None
            transport = protocol_transport(self)
            if transport is not None and not transport.is_closing():
                layer = state.layer
                layer.log.debug(
                    "Closing a connection whose request head took over %ss", layer.header_timeout
                )
                layer.noise.count("slow_head")
                transport.close()

        def _read_proxy_header(self, data: bytes) -> None:
            state = self.gilworker
            reader = state.proxy_header
            assert reader is not None
            try:
                complete = reader.feed(data)
            except (InvalidProxyLine, InvalidProxyHeader) as exc:
                state.proxy_header = None
                state.layer.log.debug(
                    "Invalid PROXY header from %s: %s", protocol_client(self), exc
                )
                self._refuse(BAD_PROXY_HEADER)
                return
            if not complete:
                return  # gunicorn's parser bounds the header's size
            state.proxy_header = None
            info = reader.info
            if info and info.get("client_addr"):
                set_protocol_client(self, (info["client_addr"], info["client_port"]))
            rest = reader.rest()
            if rest:
                self.data_received(rest)

        def _read_preface(self, data: bytes) -> None:
            """A trusted peer's first bytes: HTTP/2's preface, or HTTP/1.1."""
            state = self.gilworker
            http2 = state.layer.http2
            assert state.preface is not None and http2 is not None
            data = state.preface + data
            seen = http2.preface(data)
            if seen == "partial":
                state.preface = data
                return
            self._preface_done()
            if seen == "match":
                self._to_http2(data)
            elif http2.mismatch_is_error:
                self._refuse(NO_PREFACE)
            else:
                self.data_received(data)

        def _no_preface(self) -> None:
            """Nothing conclusive within gunicorn's bound: refused where the peer must speak
            HTTP/2, else HTTP/1.1 as usual."""
            state = self.gilworker
            state.preface_timer = None
            data = state.preface
            self._preface_done()
            http2 = state.layer.http2
            if data is None or http2 is None:
                return
            if http2.mismatch_is_error:
                self._refuse(NO_PREFACE)
            elif data:
                self.data_received(data)

        def _preface_done(self) -> None:
            state = self.gilworker
            state.preface = None
            if state.preface_timer is not None:
                state.preface_timer.cancel()
                state.preface_timer = None

        def _refuse(self, answer: bytes) -> None:
            """Answer `answer` (an error response, whole) and close."""
            transport = protocol_transport(self)
            if not transport.is_closing():
                transport.write(answer)
                transport.close()

        def _upgrade(self, settings: bytes, request: Any) -> None:
            """An Upgrade: h2c request, parsed: 101, then HTTP/2 with it as stream 1."""
            if protocol_transport(self).is_closing():
                return
            abandon_cycle(self)
            held = protocol_transport(self)
            held.flush()
            held.transport.write(UPGRADE_101)
            self._to_http2(b"", (settings, request, b""))

        def _to_http2(self, data: bytes, upgrade: Any = None) -> None:
            """From now on this connection is an HTTP/2 connection's (http2.py)."""
            self._head_done()
            layer = self.gilworker.layer
            assert layer.http2 is not None
            server_state, client, server, scheme, root_path, app_state = protocol_connection(self)
            app = protocol_app(self)
            if isinstance(app, UpgradeToHTTP2):  # HTTP/1.1's: no Upgrade over HTTP/2
                app = app.app
            connection = HTTP2Connection(
                layer.http2.cfg,
                app,
                app_state,
                server_state,
                client=client,
                server=server,
                scheme=scheme,
                root_path=root_path,
                log=layer.log,
                gate=layer.gate,
                stopping=layer.drain.active,  # the worker began to stop before the switch
            )
            held = protocol_transport(self)
            held.flush()
            turn = TurnWrites(held.transport, layer, protocol_loop(self))
            connection.take_over(turn, self, data, upgrade)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            self._preface_done()
            state = self.gilworker
            state.proxy_header = None
            lost(self, exc)
            state.layer.gate.connection_lost(open_connections(self))

    # an Upgrade: h2c that gilworker answers is no "Unsupported upgrade request."
    quiet_upgrade_warning(Connection, lambda connection: connection.gilworker.upgrade)
    Connection.__name__ = Connection.__qualname__ = f"Layered{protocol_class.__name__}"
    return Connection
