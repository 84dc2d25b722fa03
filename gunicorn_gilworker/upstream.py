"""Every private name of gunicorn, uvicorn, asyncio and CPython that gilworker touches.

Each entry says which versions it was read from and why no public seam does. gilworker's other
modules reach these names only through here, and tests/test_upstream.py checks each against the
installed versions (CI's lowest and newest legs run it): when an upstream release moves one, the
failing test names the entry, and the entry names the feature.

Read from gunicorn 27.0.0 and 27.0.1, uvicorn 0.53.0 to 0.55.0, CPython 3.10 to 3.13.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gunicorn.reloader import reloader_engines

# -- gunicorn's Arbiter ---------------------------------------------------------------------


def arbiter_stats(arbiter: Any) -> dict[str, Any]:
    """`Arbiter._stats` (gunicorn 25.1+): the counters `gunicornc show stats` reports. gilworker
    adds its own there (worker crashes, abandoned threads) and counts what gunicorn counts for a
    process (workers spawned and killed) for its threads too."""
    return arbiter._stats  # type: ignore[no-any-return]


@contextlib.contextmanager
def reaped_statuses() -> Iterator[list[tuple[int, int]]]:
    """What `Arbiter.reap_workers()` (gunicorn 27.0) reaps: it calls `os.waitpid(-1, WNOHANG)`
    and keeps no status, and gilworker needs each worker's (a crash is charged to its slot and
    counted by signal). Reading the statuses beforehand (waitid with WNOWAIT) misses a worker
    that exits between that look and gunicorn's reap; this records what gunicorn's own calls
    return while it reaps, and passes them through unchanged. Only gunicorn.arbiter's own `os`
    is swapped: no other code of the process sees it."""
    import gunicorn.arbiter as gunicorn_arbiter

    reaped: list[tuple[int, int]] = []
    gunicorn_arbiter.os = _RecordingOs(reaped)  # type: ignore[assignment]
    try:
        yield reaped
    finally:
        gunicorn_arbiter.os = os


class _RecordingOs:
    """`os` as gunicorn.arbiter sees it while it reaps: waitpid's results are recorded."""

    def __init__(self, reaped: list[tuple[int, int]]) -> None:
        self.reaped = reaped

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        wpid, status = os.waitpid(pid, options)
        if wpid:
            self.reaped.append((wpid, status))
        return wpid, status


def start_control_server(arbiter: Any, start: Callable[[], None], handlers: Any) -> None:
    """`Arbiter._start_control_server()` (gunicorn 25.1+) starts gunicornc's server as
    `_control_server`, whose `handlers` answer its commands: `start` runs gunicorn's own, then
    gilworker's handlers (threads told apart, processes of threads shown with their threads)
    take their place. gunicorn has no setting for a handler class."""
    start()
    server = arbiter._control_server
    if server is not None:
        server.handlers = handlers


def make_worker(arbiter: Any, **extra: Any) -> Any:
    """A worker object made as `Arbiter.spawn_worker()` makes one before it forks (gunicorn
    27.0.1, its first three statements), for a worker that runs as a thread of the master:
    gunicorn has no seam between making a worker and forking it. `extra` goes to the worker
    class (gilworker's own keyword arguments)."""
    arbiter.worker_age += 1
    worker = arbiter.worker_class(
        arbiter.worker_age,
        arbiter.pid,
        arbiter.LISTENERS,
        arbiter.app,
        arbiter.timeout / 2.0,
        arbiter.cfg,
        arbiter.log,
        **extra,
    )
    arbiter.cfg.pre_fork(arbiter, worker)
    return worker


def worker_reaped(arbiter: Any, worker: Any) -> None:
    """What `Arbiter.reap_workers()` does last for a reaped worker process (gunicorn 27.0.1), done
    for a worker thread, which no waitpid reaps."""
    worker.tmp.close()
    arbiter.cfg.child_exit(arbiter, worker)


def registered_collectors(registry: Any) -> list[Any]:
    """`CollectorRegistry._collector_to_names` (prometheus_client 0.20-0.26): the collectors
    registered, which the registry has no public way to list (`collect()` gives metrics)."""
    with registry._lock:
        return list(registry._collector_to_names)


def multiprocess_mode(metric: Any) -> str:
    """`Metric._multiprocess_mode` (prometheus_client 0.20-0.26): the mode of a gauge read by
    `MultiProcessCollector.merge` from a file's name, which folding a dead process's gauges
    into the retired files must keep ("sum", "max", ...). "" for other types."""
    return getattr(metric, "_multiprocess_mode", "") if metric.type == "gauge" else ""


def mmap_files() -> tuple[Any, Callable[..., str]]:
    """`prometheus_client.mmap_dict`'s `MmapedDict` and `mmap_key` (0.20-0.26): the file format
    of its multiprocess mode, written for gilworker's own measures and the retired files so that
    one `MultiProcessCollector` reads them with the app's. Not in its documented API."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    return MmapedDict, mmap_key


def code_reloader(cfg: Any, changed: Callable[[str], None]) -> Any:
    """gunicorn's `--reload` watcher, made as `Worker.init_process()` makes it (gunicorn 27.0.1),
    for the master: where workers share the master's import, the master reloads."""
    engine = reloader_engines[cfg.reload_engine]
    return engine(extra_files=cfg.reload_extra_files, callback=changed)


def set_heartbeat(tmp: Any, at: float) -> None:
    """Set a `WorkerTmp` heartbeat to `at`, as `WorkerTmp.notify()` sets it to now (gunicorn
    27.0.1: the file's times, on the monotonic clock). A process of threads reports its oldest
    thread's heartbeat, not now."""
    os.utime(tmp.fileno(), (at, at))


def proxy_allow_networks(cfg: Any) -> list[Any]:
    """`Config.proxy_allow_networks()` (gunicorn 27, "internal use"): --proxy-allow-from parsed
    into networks, as gunicorn's own PROXY check uses them."""
    return cfg.proxy_allow_networks()  # type: ignore[no-any-return]


class ProxyHeaderReader:
    """gunicorn's PROXY-header step alone (`gunicorn.asgi.parser.PythonProtocol`: its `_buffer`
    and `_parse_proxy_protocol()`, gunicorn 27.0.0-27.0.1), so that the HTTP bytes after the
    header stay for uvicorn's parser: the class has no public way to run only that step."""

    def __init__(self, mode: str) -> None:
        from gunicorn.asgi.parser import PythonProtocol

        self.parser = PythonProtocol(proxy_protocol=mode)

    def feed(self, data: bytes) -> bool:
        """True once the header is complete (raises gunicorn's InvalidProxyLine/-Header)."""
        self.parser._buffer.extend(data)
        return bool(self.parser._parse_proxy_protocol())

    @property
    def info(self) -> dict[str, Any] | None:
        return self.parser.proxy_protocol_info  # type: ignore[no-any-return]

    def rest(self) -> bytes:
        return bytes(self.parser._buffer)


# -- uvicorn's Server and protocols ---------------------------------------------------------


def listening_servers(server: Any) -> list[asyncio.AbstractServer]:
    """`Server.servers` (uvicorn 0.53-0.55): the asyncio servers `startup()` made on the given
    sockets; closing them stops accepting. Empty before startup."""
    return getattr(server, "servers", [])  # type: ignore[no-any-return]


def protocol_factory(server: Any) -> Callable[..., asyncio.Protocol]:
    """What uvicorn's `Server.startup()` passes to `create_server` (its local `create_protocol`,
    uvicorn 0.53-0.55: the protocol class with the server's state and the lifespan's state), made
    again to listen anew after a pause: uvicorn keeps it in no attribute."""
    config = server.config

    def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[no-any-return]
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
            _loop=_loop,
        )

    return create_protocol


def server_state(server: Any) -> Any:
    """`Server.server_state` (uvicorn 0.53-0.55): its connections, tasks and request count."""
    return server.server_state


def set_server_state(server: Any, state: Any) -> None:
    """Give a uvicorn Server, just made, the state its protocols will share: one that counts
    its requests for a worker process of threads."""
    server.server_state = state


def connections(server_state: Any) -> set[Any]:
    """`ServerState.connections` (uvicorn 0.53-0.55): the protocols of the open connections."""
    return server_state.connections  # type: ignore[no-any-return]


def http_cycle(protocol: Any) -> Any:
    """A uvicorn HTTP protocol's `cycle` (uvicorn 0.53-0.55): the request in progress, or None."""
    return protocol.cycle


def current_cycle(protocol: Any) -> Any:
    """`http_cycle` of any protocol: a WebSocket protocol has none (`NO_CYCLE`)."""
    return getattr(protocol, "cycle", NO_CYCLE)


NO_CYCLE = object()


def response_complete(cycle: Any) -> bool:
    """`RequestResponseCycle.response_complete` (uvicorn 0.53-0.55)."""
    return cycle is None or bool(cycle.response_complete)


def response_started(cycle: Any) -> bool:
    """`RequestResponseCycle.response_started` (uvicorn 0.53-0.55)."""
    return bool(cycle.response_started)


def last_response(cycle: Any, wrap_send: Callable[[Any], Any]) -> None:
    """Make this request's response its connection's last: `cycle.keep_alive = False` (uvicorn
    0.53-0.55 then closes after it), and, before its head is out, `cycle.send` wrapped (uvicorn
    reads it from the cycle when it calls the app)."""
    cycle.keep_alive = False
    if not cycle.response_started:
        cycle.send = wrap_send(cycle.send)


def protocol_transport(protocol: Any) -> Any:
    """A uvicorn protocol's `transport` (uvicorn 0.53-0.55), set by its connection_made."""
    return protocol.transport


def protocol_loop(protocol: Any) -> asyncio.AbstractEventLoop:
    """A uvicorn protocol's `loop` (uvicorn 0.53-0.55), set by its __init__."""
    return protocol.loop  # type: ignore[no-any-return]


def open_connections(protocol: Any) -> int:
    """How many connections its server has open: a uvicorn protocol's `connections`, its
    server state's set (uvicorn 0.53-0.55), which its connection_made adds it to."""
    return len(protocol.connections)


def protocol_app(protocol: Any) -> Any:
    """A uvicorn HTTP protocol's `app` (uvicorn 0.53-0.55): the ASGI app it hands the next
    complete request head to; setting it changes that app (`set_protocol_app`)."""
    return protocol.app


def set_protocol_app(protocol: Any, app: Any) -> None:
    protocol.app = app


def protocol_client(protocol: Any) -> Any:
    """A uvicorn protocol's `client` (uvicorn 0.53-0.55): the peer address it puts in each
    request's scope; a PROXY header replaces it (`set_protocol_client`)."""
    return protocol.client


def set_protocol_client(protocol: Any, client: tuple[str, int]) -> None:
    protocol.client = client


def protocol_connection(protocol: Any) -> tuple[Any, Any, Any, str, str, dict]:
    """What a uvicorn HTTP protocol knows of its connection (uvicorn 0.53-0.55), for the HTTP/2
    connection that takes its place (http2.py): its `server_state`, `client` (the
    PROXY header's, if one came), `server`, `scheme`, `root_path` and `app_state` (the
    lifespan's state, copied into each request's scope)."""
    p = protocol
    return p.server_state, p.client, p.server, p.scheme, p.root_path, p.app_state


def abandon_cycle(protocol: Any) -> None:
    """The request in progress gets no HTTP/1.1 response: its connection has switched protocol
    (Upgrade: h2c). `RequestResponseCycle.disconnected` (uvicorn 0.53-0.55) set makes uvicorn
    send nothing for it, not even the 500 for an app that did not answer."""
    protocol.cycle.disconnected = True


def quiet_upgrade_warning(protocol_class: type, quiet: Callable[[Any], bool]) -> None:
    """uvicorn 0.53-0.55 warns "Unsupported upgrade request." (`_unsupported_upgrade_warning`)
    for any Upgrade but WebSocket, h2c included: silent where `quiet(protocol)` (a connection
    whose Upgrade: h2c gilworker answers)."""
    warn = protocol_class._unsupported_upgrade_warning  # type: ignore[attr-defined]

    def warning(self: Any) -> None:
        if not quiet(self):
            warn(self)

    protocol_class._unsupported_upgrade_warning = warning  # type: ignore[attr-defined]


def held_body(stream: Any) -> int:
    """How many DATA payloads an HTTP/2 stream holds unread: `HTTP2Stream._body_chunks`
    (gunicorn 27.0.0-27.0.1; its own ASGI worker reads it so). With `body_complete`, it tells
    whether the request body's last bytes have been handed out."""
    return len(stream._body_chunks)


def cycle_disconnected(send: Any) -> bool:
    """Whether the client of the request `send` answers has gone: `send` is a uvicorn
    `RequestResponseCycle.send` (uvicorn 0.53-0.55), whose cycle's `disconnected` makes it drop
    what it is given, or an HTTP/2 stream's (http2.Stream.disconnected); anything else (a
    wrapped send) counts as connected."""
    return bool(getattr(getattr(send, "__self__", None), "disconnected", False))


# -- gunicorn's logger ----------------------------------------------------------------------


def basic_auth_user(log: Any, authorization: str) -> str | None:
    """The user of a Basic `Authorization` header as gunicorn's `u` atom reads it:
    `Logger._get_user(environ)` (gunicorn 27.0.0-27.0.1), which no public method exposes."""
    return log._get_user({"HTTP_AUTHORIZATION": authorization})  # type: ignore[no-any-return]


def statsd_socket(log: Any) -> tuple[Any, str, str]:
    """A gunicorn `Statsd` logger's socket (None if it could not connect), metric prefix and
    dogstatsd tags: the `sock`, `prefix` and `dogstatsd_tags` its __init__ sets (gunicorn
    27.0.0-27.0.1), which `Statsd.access` sends with."""
    return log.sock, log.prefix, log.dogstatsd_tags or ""


def formatter_format(formatter: Any) -> str | None:
    """The format string of a `logging.Formatter` (its `_fmt`, CPython 3.10-3.14): gunicorn's
    own access handlers format with `%(message)s`, the line alone."""
    return getattr(formatter, "_fmt", None)


# -- asyncio --------------------------------------------------------------------------------


def handle_callback_name(handle: Any) -> str:
    """The name of the function a `Handle` runs (its private `_callback`, CPython 3.10-3.13):
    asyncio's exception context names the handle, not what it ran."""
    return getattr(getattr(handle, "_callback", None), "__name__", "")


# -- CPython --------------------------------------------------------------------------------


def raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """`PyThreadState_SetAsyncExc` (CPython's C API, documented but with no Python binding):
    raise `exc_type` in the thread the next time it runs Python code. True if it was set."""
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    return bool(set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type)) == 1)


def gil_enabled() -> bool:
    """`sys._is_gil_enabled()` (CPython 3.13+): whether the GIL is on now; True before 3.13."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def gil_xoption() -> object:
    """`sys._xoptions.get("gil")`: the `-X gil=` the interpreter was started with."""
    return sys._xoptions.get("gil")
