"""pre_request, post_request, the access log and statsd's request metrics, as gunicorn runs them.

gunicorn's workers call `Logger.access(resp, req, environ, request_time)` once per request: it
writes the access log in `--access-logformat`, and gunicorn's statsd logger (`--statsd-host`)
sends `gunicorn.requests`, `gunicorn.request.duration` and `gunicorn.request.status.<code>` from
it. gunicorn 27's own `-k asgi` calls it only while an access log is configured, so its request
metrics vanish without one, and its `post_request` then gets `environ=None, resp=None`.
gilworker sends them whenever statsd is on and always fills `environ` and `resp`.

With gunicorn's own logger classes and handlers, the line and the packets are made by
`access_line.py` (the same bytes, a fraction of the cost); anything that could read what
`Logger.access` is given (a custom `--logger-class`, a logging configuration with its own
handlers for gunicorn.access) gets `Logger.access` (`access_path`).

`RequestContract` wraps each worker's app chain, outermost, so it sees the client address as
the connection gave it (the peer, or the PROXY header's client), as gunicorn's `h` atom means;
uvicorn's proxy-headers handling runs inside it. A worker with nothing to do per request (no
access log, no statsd, gunicorn's default hooks) serves without it. Like `-k asgi`, it runs no
hook and logs no line for a WebSocket connection, and counts as sent only the body bytes
written: none for HEAD, 1xx, 204 and 304, none once the client has gone. uvicorn's own access
log is turned off.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

from gunicorn_gilworker.operations.measures import LoopMeasures
from gunicorn_gilworker.request.access_line import (
    AccessFormat,
    AccessLogWriter,
    Exchange,
    StatsdRequests,
    access_path,
    request_uri,
)
from gunicorn_gilworker.upstream import cycle_disconnected


def pre_request_hook(cfg: Any, log: Any) -> Any:
    """The pre_request hook to call; None where calling it would do nothing: gunicorn's default
    only logs the request at debug level."""
    hook = cfg.pre_request
    if hook is not cfg.settings["pre_request"].default:
        return hook
    error_log = getattr(log, "error_log", None)
    if error_log is not None and not error_log.isEnabledFor(logging.DEBUG):
        return None
    return hook


def post_request_hook(cfg: Any) -> Any:
    """The post_request hook to call; None for gunicorn's default, which does nothing."""
    hook = cfg.post_request
    return None if hook is cfg.settings["post_request"].default else hook


def calls_access(log: Any) -> bool:
    """Whether `log.access()` does anything: an access log is configured, or the logger's class
    has its own `access` (gunicorn's statsd logger, a custom --logger-class)."""
    if getattr(log, "access_log_enabled", True):
        return True
    return getattr(type(log), "access", Logger.access) is not Logger.access


class Request:
    """The request as gunicorn's hooks and access-log atoms read it, in the shape of `-k asgi`'s
    (method, uri, path, query, fragment, version, scheme, raw_path, headers as (UPPER-CASE name,
    value) str pairs), read from the ASGI scope when asked: most requests ask for little."""

    __slots__ = ("_headers", "scope")
    fragment = ""

    def __init__(self, scope: dict) -> None:
        self.scope = scope
        self._headers: list[tuple[str, str]] | None = None

    @property
    def method(self) -> str:
        return self.scope["method"]

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def raw_path(self) -> bytes:
        return self.scope.get("raw_path") or self.scope["path"].encode()

    @property
    def query(self) -> str:
        return self.scope["query_string"].decode("latin-1")

    @property
    def uri(self) -> str:
        return request_uri(self.scope)

    @property
    def version(self) -> tuple[int, int]:
        major, _, minor = self.scope["http_version"].partition(".")
        return int(major), int(minor or 0)

    @property
    def scheme(self) -> str:
        return self.scope["scheme"]

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            self._headers = decoded(self.scope["headers"])
        return self._headers

    def environ(self, client: tuple[str, int] | None) -> dict[str, str]:
        """The WSGI-like environ `-k asgi` gives the access log and post_request."""
        version = self.scope["http_version"]
        environ = {
            "REQUEST_METHOD": self.method,
            "RAW_URI": self.uri,
            "PATH_INFO": self.path,
            "QUERY_STRING": self.query,
            "SERVER_PROTOCOL": f"HTTP/{version}",
            "REMOTE_ADDR": client[0] if client else "-",
        }
        for name, value in self.headers:
            environ["HTTP_" + name.replace("-", "_")] = value
        return environ


def decoded(headers: Any) -> list[tuple[str, str]]:
    """ASGI headers as gunicorn's str pairs, names upper-cased."""
    return [(name.decode("latin-1").upper(), value.decode("latin-1")) for name, value in headers]


class RequestContract:
    """The app, wrapped: the hooks around it, its response followed (status, headers, body bytes
    sent), and the access line, statsd metrics or `Logger.access` once it has answered."""

    def __init__(
        self,
        app: Any,
        worker: Any,
        pre: Any,
        post: Any,
        logger_access: bool,
        line: AccessFormat | None = None,
        writer: AccessLogWriter | None = None,
        statsd: StatsdRequests | None = None,
        measures: LoopMeasures | None = None,
    ) -> None:
        self.app = app
        self.worker = worker  # what the hooks get: the worker, or the process hosting its thread
        self.log = worker.log
        self.pre = pre
        self.post = post
        self.logger_access = logger_access  # call log.access() with the request's views
        self.line = line  # gilworker's line, written by `writer`
        self.writer = writer
        self.statsd = statsd
        self.measures = measures  # --metrics-bind's counts of this worker's loop
        self.views = pre is not None or post is not None or logger_access

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ex = Exchange(scope, scope.get("client"))  # before uvicorn's proxy headers replace it
        request = Request(scope) if self.views else None
        started = time.monotonic()
        measures = self.measures
        if measures is not None:
            measures.in_flight += 1
        if self.pre is not None:
            try:
                self.pre(self.worker, request)
            except Exception:
                self.log.exception("Exception in pre_request hook")
        with_body = True

        async def send_noting(message: dict) -> None:
            nonlocal with_body
            if message["type"] == "http.response.body":
                if with_body and not cycle_disconnected(send):
                    await send(message)
                    ex.sent += len(message.get("body", b""))
                    return
            elif message["type"] == "http.response.start":
                ex.status = status = message["status"]
                ex.raw_headers = message.get("headers") or ()
                with_body = not (
                    scope["method"] == "HEAD" or status < 200 or status in _NO_BODY_STATUSES
                )
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            if ex.status is None:  # uvicorn answers 500 for an app that did not answer
                ex.status = 500
            seconds = time.monotonic() - started
            if measures is not None:
                measures.in_flight -= 1
                measures.answered(scope["method"], ex.status, seconds)
            self.done(ex, request, timedelta(seconds=seconds))

    def done(self, ex: Exchange, request: Request | None, request_time: timedelta) -> None:
        if self.line is not None:
            try:
                self.writer.write(self.line.line(ex, request_time))  # type: ignore[union-attr]
            except Exception:
                self.log.error(traceback.format_exc())  # as Logger.access reports it
        if self.statsd is not None:
            self.statsd.send(ex.status, request_time)  # type: ignore[arg-type]
        if request is None or not (self.logger_access or self.post is not None):
            return  # pre_request alone reads no environ
        environ = request.environ(ex.client)
        if self.logger_access:
            self.log.access(ex, request, environ, request_time)
        if self.post is not None:
            try:
                self.post(self.worker, request, environ, ex)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def close(self) -> None:
        """Write what the last loop turn left: the worker is done serving."""
        if self.writer is not None:
            self.writer.close()
        if self.statsd is not None:
            self.statsd.flush()


# RFC 9110: a response to HEAD, a 1xx, 204 or 304 has no body; -k asgi drops what the app sends
_NO_BODY_STATUSES = frozenset({204, 304})


class Measured:
    """The app, counted for --metrics-bind alone: status and duration of each HTTP request,
    without the contract's views (a worker with an access log, statsd or hooks counts in its
    RequestContract instead)."""

    def __init__(self, app: Any, measures: LoopMeasures) -> None:
        self.app = app
        self.measures = measures

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        measures = self.measures
        measures.in_flight += 1
        started = time.monotonic()
        status = 500  # uvicorn answers 500 for an app that did not answer

        async def send_noting(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            measures.in_flight -= 1
            measures.answered(scope["method"], status, time.monotonic() - started)


def with_request_contract(
    app: Any, worker: Any, hook_worker: Any, measures: LoopMeasures | None = None
) -> tuple[Any, RequestContract | None]:
    """`app` inside a RequestContract, and the contract; `app` alone where the contract has
    nothing to do per request."""
    cfg, log = worker.cfg, worker.log
    pre, post, access = pre_request_hook(cfg, log), post_request_hook(cfg), calls_access(log)
    if pre is None and post is None and not access:
        return (app if measures is None else Measured(app, measures)), None
    if not access:
        contract = RequestContract(
            app, hook_worker, pre, post, logger_access=False, measures=measures
        )
        return contract, contract
    path, why = access_path(log, cfg.access_log_format)
    if path == "Logger.access":
        log.debug("Access log and statsd request metrics through Logger.access: %s", why)
        contract = RequestContract(
            app, hook_worker, pre, post, logger_access=True, measures=measures
        )
        return contract, contract
    line = writer = statsd = None
    if log.access_log_enabled:
        line = AccessFormat(cfg.access_log_format, log)
        writer = AccessLogWriter(log.access_log, lambda: log.access_log_enabled)
    if type(log) is Statsd:
        statsd = StatsdRequests(log)
    log.debug("Access log and statsd request metrics made by gilworker: %s", why)
    contract = RequestContract(
        app,
        hook_worker,
        pre,
        post,
        logger_access=False,
        line=line,
        writer=writer,
        statsd=statsd,
        measures=measures,
    )
    return contract, contract
