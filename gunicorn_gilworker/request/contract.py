"""pre_request, post_request, the access log and statsd's request metrics, as gunicorn runs them.

gunicorn's workers call `Logger.access(resp, req, environ, request_time)` once per request: it
writes the access log in `--access-logformat`, and gunicorn's statsd logger (`--statsd-host`)
sends `gunicorn.requests`, `gunicorn.request.duration` and `gunicorn.request.status.<code>` from
it. gunicorn 27's own `-k asgi` calls it only while an access log is configured, so its request
metrics vanish without one, and its `post_request` then gets `environ=None, resp=None`.
gilworker calls it whenever it does something (an access log, or a logger class with its own
`access`: statsd, a custom `--logger-class`) and always fills `environ` and `resp`.

With gunicorn's own logger classes and no post_request hook, the request, response and environ
given to `Logger.access` carry only what `--access-logformat` names (gunicorn's `atoms()` turns
every header and environ entry into an atom, and `SafeAtoms` copies each): the line is the same,
at three quarters of the cost.

`RequestContract` wraps each worker's app chain, outermost, so it sees the client address as
the connection gave it (the peer, or the PROXY header's client), as gunicorn's `h` atom means;
uvicorn's proxy-headers handling runs inside it. A worker with nothing to do per request (no
access log, no statsd, gunicorn's default hooks) serves without it. Like `-k asgi`, it runs no
hook and logs no line for a WebSocket connection. uvicorn's own access log is turned off.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

# An atom in gunicorn's access format: %(h)s, %({user-agent}i)s, ...
_ATOM = re.compile(r"%\(([^)]+)\)")
# The environ entries gunicorn's `atoms()` reads for each plain atom; it always reads
# REQUEST_METHOD, RAW_URI and SERVER_PROTOCOL (for `r`), which every environ has.
_ATOM_ENVIRON = {
    "h": "REMOTE_ADDR",
    "u": "HTTP_AUTHORIZATION",
    "U": "PATH_INFO",
    "q": "QUERY_STRING",
    "f": "HTTP_REFERER",
    "a": "HTTP_USER_AGENT",
}


@dataclass(frozen=True)
class LoggedFields:
    """What the access format names: environ keys, request and response header names."""

    environ: frozenset[str]
    request_headers: frozenset[bytes]  # lower-case
    response_headers: frozenset[bytes]


def logged_fields(access_log_format: str) -> LoggedFields:
    environ, request_headers, response_headers = set(), set(), set()
    for atom in _ATOM.findall(access_log_format):
        if atom.startswith("{") and atom[-2:-1] == "}":  # {name}i, {name}o, {name}e
            name, kind = atom[1:-2].lower(), atom[-1]
            if kind == "i":
                request_headers.add(name.encode("latin-1"))
            elif kind == "o":
                response_headers.add(name.encode("latin-1"))
            elif kind == "e":
                environ.add(name.upper())
        elif atom in _ATOM_ENVIRON:
            environ.add(_ATOM_ENVIRON[atom])
    return LoggedFields(frozenset(environ), frozenset(request_headers), frozenset(response_headers))


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
        query = self.scope["query_string"]
        path = self.raw_path.decode("latin-1")
        return f"{path}?{query.decode('latin-1')}" if query else path

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

    def environ(
        self, client: tuple[str, int] | None, only: frozenset[str] | None = None
    ) -> dict[str, str]:
        """The WSGI-like environ `-k asgi` gives the access log and post_request; with `only`,
        the header entries are those named there."""
        version = self.scope["http_version"]
        environ = {
            "REQUEST_METHOD": self.method,
            "RAW_URI": self.uri,
            "PATH_INFO": self.path,
            "QUERY_STRING": self.query,
            "SERVER_PROTOCOL": f"HTTP/{version}",
            "REMOTE_ADDR": client[0] if client else "-",
        }
        for name, value in self.headers if only is None else self.named(only):
            environ["HTTP_" + name.replace("-", "_")] = value
        return environ

    def named(self, environ_keys: frozenset[str]) -> list[tuple[str, str]]:
        """The headers that `environ_keys` (HTTP_USER_AGENT, ...) name, decoded."""
        return decoded(
            (name, value)
            for name, value in self.scope["headers"]
            if "HTTP_" + name.decode("latin-1").upper().replace("-", "_") in environ_keys
        )


def decoded(headers: Any) -> list[tuple[str, str]]:
    """ASGI headers as gunicorn's str pairs, names upper-cased."""
    return [(name.decode("latin-1").upper(), value.decode("latin-1")) for name, value in headers]


class Logged:
    """A request or response reduced to what the access format names (`LoggedFields`)."""

    __slots__ = ("headers", "sent", "status")

    def __init__(self, headers: list[tuple[str, str]], status: Any = None, sent: int = 0):
        self.headers, self.status, self.sent = headers, status, sent


class Response:
    """The response as the access log, statsd and post_request read it: status, headers (str
    pairs), bytes of body sent."""

    __slots__ = ("raw_headers", "sent", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.raw_headers: Any = ()
        self.sent = 0

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers
        ]


class RequestContract:
    def __init__(
        self,
        app: Any,
        worker: Any,
        pre: Any,
        post: Any,
        access: bool,
        fields: LoggedFields | None = None,
    ) -> None:
        self.app = app
        self.worker = worker  # what the hooks get: the worker, or the process hosting its thread
        self.log = worker.log
        self.pre = pre
        self.post = post
        self.access = access
        self.fields = fields  # None: the access log gets everything

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")  # before uvicorn's proxy headers replace it
        request = Request(scope)
        response = Response()
        started = time.monotonic()
        if self.pre is not None:
            try:
                self.pre(self.worker, request)
            except Exception:
                self.log.exception("Exception in pre_request hook")

        async def send_noting(message: dict) -> None:
            if message["type"] == "http.response.body":
                response.sent += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                response.status = message["status"]
                response.raw_headers = message.get("headers") or ()
            await send(message)

        try:
            await self.app(scope, receive, send_noting)
        finally:
            if response.status is None:  # uvicorn answers 500 for an app that did not answer
                response.status = 500
            self.done(request, response, client, time.monotonic() - started)

    def done(self, request: Request, response: Response, client: Any, elapsed: float) -> None:
        fields = self.fields
        if fields is not None:  # only the access log, only what its format names
            self.log.access(
                Logged(
                    decoded(h for h in response.raw_headers if h[0] in fields.response_headers),
                    response.status,
                    response.sent,
                ),
                Logged(
                    decoded(h for h in request.scope["headers"] if h[0] in fields.request_headers)
                ),
                request.environ(client, fields.environ),
                timedelta(seconds=elapsed),
            )
            return
        environ = request.environ(client)
        if self.access:
            self.log.access(response, request, environ, timedelta(seconds=elapsed))
        if self.post is not None:
            try:
                self.post(self.worker, request, environ, response)
            except Exception:
                self.log.exception("Exception in post_request hook")


def with_request_contract(app: Any, worker: Any, hook_worker: Any) -> Any:
    """`app` inside a RequestContract, unless the contract has nothing to do per request."""
    cfg, log = worker.cfg, worker.log
    pre, post, access = pre_request_hook(cfg, log), post_request_hook(cfg), calls_access(log)
    if pre is None and post is None and not access:
        return app
    fields = None
    stock = type(log).atoms is Logger.atoms and type(log).access in (Logger.access, Statsd.access)
    if access and post is None and stock:
        fields = logged_fields(cfg.access_log_format)
    return RequestContract(app, hook_worker, pre, post, access, fields)
