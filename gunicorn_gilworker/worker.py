"""GilWorker: gunicorn's settings mapped onto a uvicorn Server serving the worker's sockets.

It runs the same way whether it was forked or started as a thread; how it was started shows only
in `runs_as` and in what it leaves to the master: a thread worker does nothing process-wide
(signals, privileges, environment, random seeding), the master did those once. It offers a
stop/abort interface that the master's thread strategy calls and that, in a process, the signal
handlers call.
"""

from __future__ import annotations

import functools
import inspect
import signal
import ssl
import sys
from typing import Any, Literal

from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from gunicorn.sock import ssl_context as gunicorn_ssl_context
from gunicorn.workers.base import Worker
from uvicorn.config import Config
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
from uvicorn.server import ServerState

from gunicorn_gilworker.app_per_loop import app_for_loop, own_app_reason
from gunicorn_gilworker.connection import ConnectionLayer, ProxyPolicy
from gunicorn_gilworker.faults import write_tracebacks_on_crash
from gunicorn_gilworker.http2 import HTTP2Policy
from gunicorn_gilworker.http2 import wanted as http2_wanted
from gunicorn_gilworker.interpreter import hold_shared_dict_keys
from gunicorn_gilworker.lifespan import bounded, shutdown_bound
from gunicorn_gilworker.operations.measures import LoopMeasures, process_measures
from gunicorn_gilworker.operations.metric_files import publisher
from gunicorn_gilworker.request.contract import with_request_contract
from gunicorn_gilworker.request.forwarded import ForwardedHeaders
from gunicorn_gilworker.request.limits import HeadLimits, limited_websocket
from gunicorn_gilworker.server import WorkerServer
from gunicorn_gilworker.stack import stack_of
from gunicorn_gilworker.stall_watch import LoopBeat, Serving, stall_watch
from gunicorn_gilworker.supervision import thread_id, when_aborted
from gunicorn_gilworker.upstream import connections, gil_enabled, server_state
from gunicorn_gilworker.uvicorn_logs import count_uvicorn_client_noise, route_uvicorn_log

RunsAs = Literal["thread", "process"]

DRAIN_GRACE = 1.0  # seconds an idle keep-alive connection of a stopping worker stays open


class GilWorker(Worker):
    """ASGI worker for gunicorn: `gunicorn -k gilworker app:app`."""

    runs_under_gil_arbiter = True  # registration.py swaps gunicorn's Arbiter for GilArbiter
    sockets: list[Any]  # gunicorn's listeners (its Worker sets them)
    wsgi: Any  # the app gunicorn loaded (its Worker sets it), or this loop's own
    exit_status = 0  # set by abort(): uvicorn turns an exception raised in a request into a 500

    def __init__(
        self,
        *args: Any,
        runs_as: RunsAs = "process",
        host: Worker | None = None,
        server_state: ServerState | None = None,
    ) -> None:
        """gunicorn's worker arguments, and how this worker runs: `runs_as` "thread" for an
        event-loop thread (of the master, or of `host`, a worker process of threads, which then
        runs the per-worker hooks and counts `max_requests`, in `server_state`)."""
        super().__init__(*args)
        self.runs_as = runs_as
        self.host = host
        self.runs_hooks = host is None
        if runs_as == "thread":
            self.pid = thread_id(self.age)
            # uvicorn closes the sockets it served on: each thread gets its own dup of each.
            self.sockets = [listener.dup() for listener in self.sockets]
        route_uvicorn_log(self.log)
        self.config = Config(**self.uvicorn_settings())
        self.server = WorkerServer(
            self.config,
            server_state,
            worker_connections=self.cfg.worker_connections,
            drain_grace=min(self.cfg.keepalive, DRAIN_GRACE),
            log=self.log,
            serving=self._serving,
        )

    @property
    def gil_mode(self) -> RunsAs:
        """`runs_as`, by the name hooks read it by (README: Thread mode)."""
        return self.runs_as

    @property
    def hook_worker(self) -> Worker:
        """The worker gunicorn's request hooks get: this one, or the process hosting its thread."""
        return self.host or self

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        # gunicorn stops a worker by clearing `alive` (its --reload watcher does, from its own
        # thread): uvicorn never reads it, so clearing it asks the server to stop.
        self._alive = value
        if not value and hasattr(self, "server"):
            self.server.request_exit(force=False)

    def __str__(self) -> str:
        return f"<GilWorker {self.runs_as} {self.pid}>"

    @property
    def head_limits(self) -> HeadLimits:
        cfg = self.cfg
        return HeadLimits(
            cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        )

    def uvicorn_settings(self) -> dict[str, Any]:
        """gunicorn settings -> uvicorn Config arguments, as uvicorn-worker maps them, and more
        (the access log, hooks and forwarded headers are added in `run`)."""
        cfg = self.cfg
        settings: dict[str, Any] = {
            "app": None,  # set to the loaded app in run()
            "log_config": None,
            "access_log": False,  # gunicorn's Logger.access writes it, in gunicorn's format
            "proxy_headers": False,  # ForwardedHeaders (uvicorn's, plus gunicorn's) takes it on
            "ws_max_size": cfg.websocket_max_message_size,
            "loop": cfg.asgi_loop,
            "lifespan": cfg.asgi_lifespan,
            "root_path": cfg.root_path or "",
            "timeout_keep_alive": cfg.keepalive,
            "timeout_notify": self.timeout,
            "callback_notify": self.callback_notify,
            # a worker process of threads counts over its threads (its server_state)
            "limit_max_requests": (
                None if self.max_requests == sys.maxsize or self.host else self.max_requests
            ),
            "forwarded_allow_ips": cfg.forwarded_allow_ips,
            "backlog": cfg.backlog,
        }
        return settings  # TLS: gunicorn's own context, set in run()

    def build_protocols(self) -> None:
        """uvicorn's protocols inside gilworker's connection layer, and its WebSocket protocol
        checking each handshake against gunicorn's head limits. Called in the worker's own
        thread (interpreter.CLASSES_PER_THREAD)."""
        config, cfg, server = self.config, self.cfg, self.server
        count_uvicorn_client_noise(server.noise)
        layer = ConnectionLayer(
            stack_of(cfg).protocol_class,
            limits=self.head_limits,
            header_timeout=cfg.header_timeout,
            drain=server.drain,
            gate=server.gate,
            noise=server.noise,
            log=self.log,
            proxy=ProxyPolicy(cfg) if cfg.proxy_protocol != "off" else None,
            http2=HTTP2Policy(cfg) if http2_wanted(cfg) else None,
        )
        # uvicorn's Config calls `http` and `ws` as its protocol classes: a factory will do
        config.http = layer.protocol_factory  # type: ignore[assignment]
        if AutoWebSocketsProtocol is not None:  # else uvicorn serves no WebSockets ("auto")
            config.ws = functools.partial(  # type: ignore[assignment]
                limited_websocket(AutoWebSocketsProtocol), self.head_limits
            )

    # -- life cycle ---------------------------------------------------------------------------

    def init_process(self) -> None:
        if self.runs_as == "process":
            super().init_process()
            return
        # A thread: the master already set the environment, privileges and seed for the whole
        # process, and signals belong to the main thread. The app is loaded (and shared).
        self.load_wsgi()
        if self.runs_hooks:
            self.cfg.post_worker_init(self)
        self.booted = True
        self.run()

    def init_signals(self) -> None:  # a worker process only: signals belong to the main thread
        super().init_signals()
        write_tracebacks_on_crash(self.log)  # after gunicorn's handlers: it chains to them

    def run(self) -> None:
        self.build_protocols()  # imports uvicorn's protocol module (and h11), so before:
        if self.runs_as == "thread":
            when_aborted(self.server.stop_accepting)
            if not gil_enabled():
                # held while this thread serves: shared dicts stay lock-free (shared_keys.py)
                self.pinned_keys = hold_shared_dict_keys()
        config, cfg = self.config, self.cfg
        config.app = self.wsgi
        config.load()  # uvicorn's app chain; gunicorn's layers go around it
        config.lifespan_class = bounded(
            config.lifespan_class,
            bound=shutdown_bound(cfg.graceful_timeout),
            worker=self.log_name,
            log=self.log,
        )
        if cfg.is_ssl:
            config.ssl = tls_context(cfg)
        measures = self._measures() if cfg.metrics_bind else None
        config.loaded_app, contract = with_request_contract(
            ForwardedHeaders(
                config.loaded_app, config.forwarded_allow_ips, cfg.secure_scheme_headers
            ),
            self,
            self.hook_worker,
            measures,
        )
        if cfg.stall_warning > 0:
            beat = LoopBeat(self.log_name)
            config.loaded_app = Serving(config.loaded_app, beat)
            self.server.watch_stalls(stall_watch(self.log, cfg.stall_warning), beat)
        # The plain sockets: uvicorn closes what it served on, and gunicorn's wrapper would log
        # the second close (the master closes its own copies itself).
        try:
            self.server.run(sockets=[getattr(s, "sock", s) for s in self.sockets])
        finally:
            if contract is not None:
                contract.close()
            if measures is not None:
                self._measures_done(measures)
        if not self.server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if self.exit_status:
            sys.exit(self.exit_status)

    def _measures(self) -> LoopMeasures:
        """This loop's counts for --metrics-bind, published by a worker process (the master
        reads its own threads' when scraped)."""
        server = self.server
        measures = process_measures().loop(lambda: len(connections(server_state(server))))
        server.measures = measures
        publisher(process_measures())
        return measures

    def _measures_done(self, measures: LoopMeasures) -> None:
        process_measures().loop_ended(measures)  # its counts stay in the process's totals
        published = publisher(process_measures())
        if published is not None:
            published.publish()  # the last counts, before the process may exit

    def load_wsgi(self) -> None:
        try:
            super().load_wsgi()
            app: Any = self.wsgi
            refuse_wsgi(app)
            if self.runs_as == "thread" and own_app_reason(self.cfg.gil_app, app):
                self.wsgi = self._own_app(app)
        except AppImportError:
            raise
        except Exception:
            # A forked gunicorn worker would log the traceback, then print its last line
            # again: log it once, and end as gunicorn ends a worker that failed to boot.
            self.log.exception("Exception in worker %s", self.runs_as)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def _own_app(self, shared: Any) -> Any:
        """This event loop's own app object (app_per_loop.py), or the shared one if gunicorn
        was given no `module:name` to make it anew from (a custom Application)."""
        uri = getattr(self.app, "app_uri", None)
        if not uri:
            self.log.warning(
                "gilworker: the app cannot be built per event loop (no module:name): shared"
            )
            return shared
        return app_for_loop(uri)

    @property
    def log_name(self) -> str:
        """How the worker's log lines name it: "Worker thread 10000001", "Worker process 42"."""
        return f"Worker {self.runs_as} {self.pid}"

    def _serving(self) -> None:
        """The worker's one start-up line, once its lifespan startup is done."""
        self.log.info("%s serving", self.log_name)

    async def callback_notify(self) -> None:
        self.notify()

    # -- the stop/abort interface -------------------------------------------------------------

    def stop(self, graceful: bool) -> None:
        """Graceful: finish in-flight requests, close keep-alive. Thread-safe."""
        self._alive = False
        self.server.request_exit(force=not graceful)

    def quit(self) -> None:
        """gunicorn's QUIT/INT: the `worker_int` hook (on the worker's loop), then a fast stop.
        Thread-safe."""
        self._alive = False
        self.server.call_in_loop(self._interrupted)

    def _interrupted(self) -> None:
        if self.runs_hooks:
            self.cfg.worker_int(self)
        self.stop(graceful=False)

    def abort(self) -> None:
        """gunicorn's ABRT (a timeout): the `worker_abort` hook, then exit 1 at once. The caller
        also raises into the stuck code; this makes sure the worker ends even if that exception
        is caught (uvicorn answers 500 for it and would keep serving)."""
        self._alive = False
        self.exit_status = 1
        if self.server.measures is not None:  # stuck: not serving, whether or not it ends
            self.server.measures.serving = False
        if self.runs_hooks:
            self.cfg.worker_abort(self)
        self.stop(graceful=False)

    # -- signals, in a worker process (the main thread) ---------------------------------------

    def handle_usr1(self, sig: int, frame: Any) -> None:
        # On the loop, between two callbacks: this handler runs on the loop's thread, where it
        # could land inside a write of the access log (the handler's lock is re-entrant) and
        # close the file under it.
        self.server.call_in_loop(self._reopen_logs)

    def _reopen_logs(self) -> None:
        super().handle_usr1(signal.SIGUSR1, None)
        write_tracebacks_on_crash(self.log)  # the log's descriptor changed

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop(graceful=True)

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.quit()

    def handle_abort(self, sig: int, frame: Any) -> None:
        # This is the loop's thread: stop accepting before the loop runs again, as a thread
        # does when aborted (supervision.WorkerAbort); uvicorn goes on after the SystemExit.
        self.server.stop_accepting()
        self.abort()
        sys.exit(1)


def tls_context(cfg: Any) -> ssl.SSLContext:
    """gunicorn's TLS context (its settings, its `ssl_context` hook), as for its own workers:
    with h2 in --http-protocols, ALPN offers the protocols in their order (http2.py serves
    the connections that choose h2)."""
    return gunicorn_ssl_context(cfg)


def refuse_wsgi(app: Any) -> None:
    """A WSGI callable (`app(environ, start_response)`, not a coroutine function) would fail on
    every request: refuse it at start-up, as an app load error (exit status 4)."""
    if inspect.isclass(app) or not callable(app):
        return  # an ASGI 2 class, or something uvicorn will reject in its own words
    call = called_function(app)
    if inspect.iscoroutinefunction(call):
        return
    try:
        params = inspect.signature(call).parameters.values()
    except (TypeError, ValueError):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) - (not inspect.isroutine(app)) == 2:  # not counting `self`
        raise AppImportError(
            f"{app!r} looks like a WSGI app (environ, start_response): gilworker serves ASGI "
            "apps. Use gunicorn's threaded worker for WSGI (-k gthread --threads N), or wrap "
            "the app in a WSGI-to-ASGI adapter such as a2wsgi."
        )


def called_function(app: Any) -> Any:
    """What runs when `app` (a function or an instance) is called."""
    return app if inspect.isroutine(app) else type(app).__call__
