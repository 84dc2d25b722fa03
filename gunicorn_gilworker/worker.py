"""GilWorker: gunicorn's settings mapped onto a uvicorn Server serving the worker's sockets.

It runs the same way whether it was forked or started as a thread; how it was started shows only
in `gil_mode` and in what it leaves to the master: a thread worker does nothing process-wide
(signals, privileges, environment, random seeding), the master did those once. It offers a
stop/abort interface that the master's thread strategy calls and that, in a process, the signal
handlers call.
"""

from __future__ import annotations

import inspect
import logging
import ssl
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from gunicorn.errors import AppImportError
from gunicorn.sock import ssl_context as gunicorn_ssl_context
from gunicorn.workers.base import Worker
from uvicorn.config import Config
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

from gunicorn_gilworker.accepting import AcceptGate
from gunicorn_gilworker.client_noise import UvicornClientNoise, client_noise
from gunicorn_gilworker.compat import unserved
from gunicorn_gilworker.faults import write_tracebacks_on_crash
from gunicorn_gilworker.mode import gil_enabled
from gunicorn_gilworker.request.coalesce import coalesce_writes
from gunicorn_gilworker.request.contract import with_request_contract
from gunicorn_gilworker.request.drain import Drain
from gunicorn_gilworker.request.forwarded import ForwardedHeaders
from gunicorn_gilworker.request.limits import HeadLimits, guard_head, limit_websocket
from gunicorn_gilworker.request.proxy_protocol import expect_proxy_header
from gunicorn_gilworker.server import WorkerServer
from gunicorn_gilworker.shared_keys import hold_shared_dict_keys
from gunicorn_gilworker.stack import stack_of
from gunicorn_gilworker.supervision import when_aborted

DRAIN_GRACE = 1.0  # seconds an idle keep-alive connection of a stopping worker stays open


class GilWorker(Worker):
    """ASGI worker for gunicorn: `gunicorn -k gilworker app:app`."""

    runs_under_gil_arbiter = True  # registration.py swaps gunicorn's Arbiter for GilArbiter
    gil_mode = "process"  # "thread" when it runs as a thread (of the master or of a process)
    runs_hooks = True  # False for a loop thread of a worker process of threads: its process does

    @property
    def hook_worker(self) -> Worker:
        """The worker gunicorn's request hooks get: this one, or the process hosting its thread."""
        return getattr(self, "host", None) or self

    exit_status = 0  # set by abort(): uvicorn turns an exception raised in a request into a 500

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._route_uvicorn_logs()
        self.config = Config(**self.uvicorn_settings())
        self.server = WorkerServer(self.config)

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
        return f"<GilWorker {self.gil_mode} {self.pid}>"

    def _route_uvicorn_logs(self) -> None:
        # uvicorn's access log stays off: gunicorn's Logger.access writes it (request/contract.py)
        logger = logging.getLogger("uvicorn.error")
        logger.handlers = self.log.error_log.handlers
        logger.setLevel(self.log.error_log.level)
        logger.propagate = False

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
            "limit_max_requests": None if self.max_requests == sys.maxsize else self.max_requests,
            "forwarded_allow_ips": cfg.forwarded_allow_ips,
            "backlog": cfg.backlog,
        }
        return settings  # TLS: gunicorn's own context, set in run()

    def build_protocols(self) -> None:
        """uvicorn's protocols with gunicorn's request limits, and a response's head and body
        sent together. Called in the worker's own thread: on a free-threaded build the thread
        that makes a class owns its methods' reference counts, and a method of a class made in
        another thread sends every lookup of it through the interpreter's locked slow path."""
        limits, config, cfg = self.head_limits, self.config, self.cfg
        server = self.server
        server.noise = noise = client_noise(self.log)  # this process's (a fork makes its own)
        count_uvicorn_client_noise(noise)
        server.drain = drain = Drain(grace=min(cfg.keepalive, DRAIN_GRACE))
        server.gate = gate = AcceptGate(server, cfg.worker_connections, self.log)
        config.http = guard_head(
            coalesce_writes(stack_of(cfg).protocol_class),
            limits,
            cfg.header_timeout,
            drain,
            gate,
            noise,
        )
        if cfg.proxy_protocol != "off":
            config.http = expect_proxy_header(config.http, cfg)
        if AutoWebSocketsProtocol is not None:  # else uvicorn serves no WebSockets ("auto")
            config.ws = limit_websocket(AutoWebSocketsProtocol, limits)

    # -- life cycle ---------------------------------------------------------------------------

    def init_process(self) -> None:
        if self.gil_mode == "process":
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
        if self.gil_mode == "thread":
            when_aborted(self.server.stop_accepting)
            if not gil_enabled():
                # held while this thread serves: shared dicts stay lock-free (shared_keys.py)
                self.pinned_keys = hold_shared_dict_keys()
        config, cfg = self.config, self.cfg
        config.app = self.wsgi
        config.load()  # uvicorn's app chain; gunicorn's layers go around it
        if cfg.is_ssl:
            config.ssl = tls_context(cfg)
        config.loaded_app = with_request_contract(
            ForwardedHeaders(
                config.loaded_app, config.forwarded_allow_ips, cfg.secure_scheme_headers
            ),
            self,
            self.hook_worker,
        )
        # The plain sockets: uvicorn closes what it served on, and gunicorn's wrapper would log
        # the second close (the master closes its own copies itself).
        self.server.run(sockets=[getattr(s, "sock", s) for s in self.sockets])
        if not self.server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if self.exit_status:
            sys.exit(self.exit_status)

    def load_wsgi(self) -> None:
        try:
            super().load_wsgi()
        except AppImportError:
            raise
        except Exception:
            # A forked gunicorn worker would log the traceback, then print its last line
            # again: log it once, and end as gunicorn ends a worker that failed to boot.
            self.log.exception(
                "Exception in worker %s", "thread" if self.gil_mode == "thread" else "process"
            )
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        refuse_wsgi(self.wsgi)

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """gunicorn's start-up check of the worker class: name what will not be served."""
        for line in unserved(cfg):
            log.warning("gilworker: %s", line)

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
        if self.runs_hooks:
            self.cfg.worker_abort(self)
        self.stop(graceful=False)

    # -- signals, in a worker process (the main thread) ---------------------------------------

    def handle_usr1(self, sig: int, frame: Any) -> None:
        super().handle_usr1(sig, frame)
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


def count_uvicorn_client_noise(noise: Any) -> None:
    """uvicorn's per-client warnings, counted by this process's ClientNoise (one filter)."""
    logger = logging.getLogger("uvicorn.error")
    for old in [f for f in logger.filters if isinstance(f, UvicornClientNoise)]:
        logger.removeFilter(old)
    logger.addFilter(UvicornClientNoise(noise))


def tls_context(cfg: Any) -> ssl.SSLContext:
    """gunicorn's TLS context (its settings, its `ssl_context` hook), as for its own workers;
    ALPN never offers h2, which uvicorn's HTTP/1.1 parser would not understand."""
    context = gunicorn_ssl_context(cfg)
    if "h2" in cfg.http_protocols:
        context.set_alpn_protocols(["http/1.1"])
    return context


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
