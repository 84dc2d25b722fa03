"""gunicorn's access line and statsd request packets, made without `Logger.access`.

`Logger.access` turns every header and environ entry of a request into an atom, copies them all
into `SafeAtoms` and hands a `LogRecord` with that mapping to the `logging` machinery: 36-45 µs
a request, more than the rest of a hello-world request. Where nothing can depend on that record
(gunicorn's own `Logger` or `Statsd` class, the `gunicorn.access` logger with only the handlers
gunicorn gave it), gilworker makes the same line itself:

- `AccessFormat`: `--access-logformat` compiled once per worker. Each request computes only the
  atoms the format names, with `Logger.atoms`' values and `SafeAtoms`' escaping and `-`, and
  formats the same string with them: the same line, byte for byte.
- `AccessLogWriter`: the lines of one event loop, written once per loop turn through the
  handlers gunicorn set up (its file or stream under the handler's lock, a syslog handler a
  record at a time), so USR1's reopen, log rotation and syslog work as before, and N loops
  sharing one log take its lock once a turn each, not once a request.
- `StatsdRequests`: the three metrics `Statsd.access` sends, with or without an access log,
  those of a loop turn in one datagram (or a few).

`access_path()` says which path a worker takes and why; anything else keeps `Logger.access`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

from gunicorn_gilworker.upstream import basic_auth_user, formatter_format, statsd_socket

AccessPath = Literal["gilworker", "Logger.access"]

# A mapping key of the format: %(h)s, %({user-agent}i)s, ...
_KEY = re.compile(r"%\(([^)]*)\)")
# What is left once every %% and %(key)... is taken out: a bare % means a conversion with no key
_KEYED_OR_LITERAL = re.compile(r"%%|%\([^)]*\)[#0\- +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[a-zA-Z%]")
# The line alone: the formatter gunicorn gives its access handlers (Logger.access_fmt)
_MESSAGE_ONLY = "%(message)s"
# environ entries an `{name}e` atom can read that no header gives (Request.environ's)
_ENVIRON_ATOMS = {
    "request_method": "m",
    "raw_uri": "r_uri",
    "path_info": "U",
    "query_string": "q",
    "server_protocol": "H",
    "remote_addr": "h",
}

# Plain atoms Logger.atoms reads from the environ's HTTP_* entries
_ENVIRON_HEADERS = {"u": "AUTHORIZATION", "f": "REFERER", "a": "USER_AGENT"}


class Exchange:
    """One request and its response as far as the contract followed it; as a response, what
    gunicorn's access log, statsd and post_request read (status, headers as str pairs, sent)."""

    __slots__ = ("client", "raw_headers", "scope", "sent", "status")

    def __init__(self, scope: dict, client: Any) -> None:
        self.scope = scope
        self.client = client  # the peer as the connection gave it: gunicorn's `h`
        self.status: int | None = None
        self.raw_headers: Any = ()  # the response's, as the app sent them
        self.sent = 0  # body bytes written to the client

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in self.raw_headers
        ]


def _escaped(value: str) -> str:
    return value.replace('"', '\\"')  # SafeAtoms' escaping of every str atom


def request_uri(scope: dict) -> str:
    """gunicorn's RAW_URI: the path as the client sent it, and the query."""
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope["query_string"]
    return f"{path}?{query.decode('latin-1')}" if query else path


class _Clock:
    """gunicorn's `t` atom (`Logger.now()`), made once a second: it names whole seconds."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
            self.second = second
        return self.text


Getter = Callable[[Exchange, timedelta], Any]


def _plain_atoms(pid_text: str, clock: _Clock) -> dict[str, Getter]:
    """Logger.atoms' plain atoms, from the exchange (the header ones are read in one pass)."""

    def client(ex: Exchange, rt: timedelta) -> str:
        return _escaped(ex.client[0]) if ex.client else "-"

    def protocol(ex: Exchange) -> str:
        return f"HTTP/{ex.scope['http_version']}"

    def request_line(ex: Exchange, rt: timedelta) -> str:
        return _escaped(f"{ex.scope['method']} {request_uri(ex.scope)} {protocol(ex)}")

    return {
        "h": client,
        "l": lambda ex, rt: "-",
        "t": lambda ex, rt: clock.now(),
        "r": request_line,
        "r_uri": lambda ex, rt: _escaped(request_uri(ex.scope)),  # environ's RAW_URI
        "s": lambda ex, rt: ex.status,
        "m": lambda ex, rt: _escaped(ex.scope["method"]),
        "U": lambda ex, rt: _escaped(ex.scope["path"]),
        "q": lambda ex, rt: _escaped(ex.scope["query_string"].decode("latin-1")),
        "H": lambda ex, rt: protocol(ex),
        "b": lambda ex, rt: str(ex.sent),
        "B": lambda ex, rt: ex.sent,
        "T": lambda ex, rt: rt.seconds,
        "D": lambda ex, rt: rt.seconds * 1000000 + rt.microseconds,
        "M": lambda ex, rt: rt.seconds * 1000 + int(rt.microseconds / 1000),
        "L": lambda ex, rt: f"{rt.seconds}.{rt.microseconds:06d}",
        "p": lambda ex, rt: pid_text,
    }


def _environ_variants(environ_name: str) -> list[bytes]:
    """The header names (lower case, as uvicorn gives them) that become `HTTP_<environ_name>`:
    gunicorn's environ replaces '-' by '_', so each '_' may have been either."""
    names = [""]
    for char in environ_name.lower():
        ends = ("-", "_") if char == "_" else (char,)
        names = [name + end for name in names for end in ends]
        if len(names) > 64:  # a name with more underscores than any header has: its own only
            return [environ_name.lower().encode("latin-1")]
    return [n.encode("latin-1") for n in names]


class AccessFormat:
    """`--access-logformat`, compiled: `line(exchange, request_time)` is the line
    `Logger.access()` would log for the same request and response."""

    def __init__(self, fmt: str, log: Any, pid: int | None = None) -> None:
        # A copy made by this worker's thread: every request reads it, and on a free-threaded
        # build each read of an object another thread made is an atomic count shared by all.
        self.fmt = fmt.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
        self.log = log  # for the `u` atom's decoding of Basic credentials
        plain = _plain_atoms(f"<{os.getpid() if pid is None else pid}>", _Clock())
        self.plain: list[tuple[str, Getter]] = []  # (key in the format, its getter)
        self.missing: dict[str, str] = {}  # keys filled from headers when present, else "-"
        self.request_headers: dict[bytes, list[str]] = {}  # header name -> keys it fills
        self.response_headers: dict[bytes, list[str]] = {}
        self.user_key: str | None = None
        for key in dict.fromkeys(_KEY.findall(fmt)):
            self._add(key, plain)
        # each key once, though several header names may fill it (HTTP_X_Y: x-y and x_y)
        filled = (key for keys in self.request_headers.values() for key in keys)
        self.header_keys = tuple(dict.fromkeys(filled))

    def _add(self, key: str, plain: dict[str, Getter]) -> None:
        if not key.startswith("{"):
            if key in _ENVIRON_HEADERS:  # read from the environ, where x-y and x_y meet
                self.user_key = key if key == "u" else self.user_key
                for header in _environ_variants(_ENVIRON_HEADERS[key]):
                    self._from_request(header, key)
            elif key in plain and key != "r_uri":
                self.plain.append((key, plain[key]))
            else:
                self.missing[key] = "-"
            return
        lowered = key.lower()  # SafeAtoms looks `{...}` atoms up in lower case
        name, kind = lowered[1:-2], lowered[-1:]
        if len(lowered) < 4 or lowered[-2] != "}" or kind not in "ioe":
            self.missing[key] = "-"
        elif kind == "i":
            self._from_request(name.encode("latin-1"), key)
        elif kind == "o":
            self.missing[key] = "-"
            self.response_headers.setdefault(name.encode("latin-1"), []).append(key)
        elif name in _ENVIRON_ATOMS:
            self.plain.append((key, plain[_ENVIRON_ATOMS[name]]))
        elif name.startswith("http_"):
            for header in _environ_variants(name[5:]):
                self._from_request(header, key)
        else:
            self.missing[key] = "-"

    def _from_request(self, header: bytes, key: str) -> None:
        self.missing[key] = "-"
        self.request_headers.setdefault(header, []).append(key)

    def line(self, ex: Exchange, rt: timedelta) -> str:
        values = dict(self.missing)
        for key, getter in self.plain:
            values[key] = getter(ex, rt)
        wanted = self.request_headers
        if wanted:
            for name, value in ex.scope["headers"]:
                keys = wanted.get(name)
                if keys is not None:
                    text = value.decode("latin-1")
                    for key in keys:  # a repeated header: the last one, as in a dict
                        values[key] = text
            user_key = self.user_key
            if user_key is not None and values[user_key] != "-":
                values[user_key] = basic_auth_user(self.log, values[user_key]) or "-"
            for key in self.header_keys:
                values[key] = _escaped(values[key])
        wanted = self.response_headers
        if wanted:
            for name, value in ex.raw_headers:
                keys = wanted.get(name.lower())
                if keys is not None:
                    for key in keys:
                        values[key] = _escaped(value.decode("latin-1"))
        return self.fmt % values


def format_has_bare_conversions(fmt: str) -> bool:
    """Whether the format has a conversion with no atom name (`%s`): `Logger.access` formats
    the whole atom mapping into it, which only `Logger.access` reproduces."""
    return "%" in _KEYED_OR_LITERAL.sub("", fmt)


def access_path(log: Any, fmt: str) -> tuple[AccessPath, str]:
    """Which path a worker's access line (and statsd request packets) takes, and why."""
    if type(log) not in (Logger, Statsd):
        name = f"{type(log).__module__}.{type(log).__qualname__}"
        return "Logger.access", f"the logger class {name} may read Logger.access's arguments"
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return "Logger.access", "a log record factory other than logging's own is set"
    access_log = log.access_log
    if access_log.filters or access_log.propagate:
        return "Logger.access", "the gunicorn.access logger has filters or propagates"
    for handler in access_log.handlers:
        if not getattr(handler, "_gunicorn", False) or handler.filters:
            return "Logger.access", "the logging configuration gives gunicorn.access a handler"
        if type(handler.formatter) is not logging.Formatter:
            return "Logger.access", "a gunicorn.access handler has its own formatter"
    if log.access_log_enabled and format_has_bare_conversions(fmt):
        return "Logger.access", "the access format has a conversion with no atom name"
    return "gilworker", "gunicorn's logger with its own handlers"


class TurnEnd:
    """Calls `callback` once at the end of the running loop's turn, however often asked in it."""

    __slots__ = ("callback", "due")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.due = False

    def ask(self) -> None:
        if self.due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop turns now (its worker has stopped): the caller flushes
            return
        self.due = True
        loop.call_soon(self._run)

    def _run(self) -> None:
        self.due = False
        self.callback()


class AccessLogWriter:
    """The access lines of one event loop, written once per loop turn (`flush`).

    A HUP in the master re-runs gunicorn's log setup, which takes the access log's handlers off
    and puts new ones on: where workers are threads of the master, a turn can find none. Its
    lines wait for the next turn (up to `HANDLERLESS_WAIT`), so none is lost to the reload."""

    HANDLERLESS_WAIT = 1.0  # seconds: longer, and the logger has no handler by configuration

    def __init__(self, logger: logging.Logger, enabled: Callable[[], bool] = lambda: True) -> None:
        self.logger = logger
        self.enabled = enabled  # whether the access log is on (gunicorn's setting, as reloaded)
        self.pending: list[str] = []
        self.turn_end = TurnEnd(self.flush)
        self.handlerless_since: float | None = None

    def write(self, line: str) -> None:
        self.pending.append(line)
        self.turn_end.ask()

    def flush(self) -> bool:
        """Write the pending lines; False if they wait for the log's handlers."""
        lines = self.pending
        if not lines:
            return True
        logger = self.logger
        handlers = list(logger.handlers)  # as they are now: a reload may be changing them
        if not handlers and self.enabled() and self._may_wait():
            self.turn_end.ask()  # the next turn looks again
            return False
        self.pending, self.handlerless_since = [], None
        if logger.disabled or not logger.isEnabledFor(logging.INFO):
            return True
        for handler in handlers:
            if handler.level > logging.INFO:
                continue
            if _writes_the_line_alone(handler):
                self._write(handler, lines)
            else:  # syslog, or anything else: a record per line, as logging would give it
                for line in lines:
                    handler.handle(self._record(line))
        return True

    def _may_wait(self) -> bool:
        now = time.monotonic()
        if self.handlerless_since is None:
            self.handlerless_since = now
        return now - self.handlerless_since < self.HANDLERLESS_WAIT

    def close(self) -> None:
        """The last lines, once the loop has stopped; waits for handlers as a turn would."""
        while not self.flush():  # bounded: flush() stops waiting after HANDLERLESS_WAIT
            time.sleep(0.01)

    def _write(self, handler: Any, lines: list[str]) -> None:
        terminator = handler.terminator
        with handler.lock:
            try:
                handler.stream.write(terminator.join(lines) + terminator)
                handler.stream.flush()
                return
            except Exception:
                pass
            for line in lines:  # one line could not be written: write each, as logging does
                try:
                    handler.stream.write(line + terminator)
                    handler.stream.flush()
                except Exception:
                    handler.handleError(self._record(line))

    def _record(self, line: str) -> logging.LogRecord:
        logger = self.logger
        return logger.makeRecord(logger.name, logging.INFO, "(access log)", 0, line, (), None)


def _writes_the_line_alone(handler: Any) -> bool:
    """gunicorn's own file or stream handler: the line and its terminator, under its lock."""
    return (
        type(handler) in (logging.StreamHandler, logging.FileHandler)
        and getattr(handler, "stream", None) is not None
        and not handler.filters
        and formatter_format(handler.formatter) == _MESSAGE_ONLY
    )


class StatsdRequests:
    """The metrics `Statsd.access` sends for a request, in its order and format, sent once per
    loop turn: a turn's metrics go together, newline-separated, in datagrams of at most
    `DATAGRAM_BYTES` (as statsd, DogStatsD, Telegraf and statsd_exporter read them), where
    `Statsd.access` sends a datagram per metric: three system calls a request."""

    DATAGRAM_BYTES = 1432  # what fits one Ethernet frame's UDP payload with room for options

    def __init__(self, log: Any) -> None:
        self.log = log
        self.sock, prefix, tags = statsd_socket(log)
        self.tail = b"|#" + tags.encode("ascii") if tags else b""
        self.duration = f"{prefix}gunicorn.request.duration:"
        self.prefix = prefix
        self.requests = self._metric(f"{prefix}gunicorn.requests:1|c|@1.0")
        self.statuses: dict[int, bytes] = {}
        self.pending: list[bytes] = []
        self.turn_end = TurnEnd(self.flush)

    def _metric(self, text: str) -> bytes:
        return text.encode("ascii") + self.tail

    def send(self, status: int, rt: timedelta) -> None:
        if self.sock is None:
            return
        status_metric = self.statuses.get(status)
        if status_metric is None:
            status_metric = self.statuses[status] = self._metric(
                f"{self.prefix}gunicorn.request.status.{status}:1|c|@1.0"
            )
        milliseconds = rt.seconds * 1000 + float(rt.microseconds) / 10**3
        self.pending += (
            self._metric(f"{self.duration}{milliseconds}|ms"),
            self.requests,
            status_metric,
        )
        self.turn_end.ask()

    def flush(self) -> None:
        metrics, self.pending = self.pending, []
        datagram = b""
        for metric in metrics:
            if datagram and len(datagram) + 1 + len(metric) > self.DATAGRAM_BYTES:
                self._send(datagram)
                datagram = b""
            datagram = datagram + b"\n" + metric if datagram else metric
        if datagram:
            self._send(datagram)

    def _send(self, datagram: bytes) -> None:
        try:
            self.sock.send(datagram)
        except Exception:
            Logger.warning(self.log, "Error sending message to statsd", exc_info=True)
