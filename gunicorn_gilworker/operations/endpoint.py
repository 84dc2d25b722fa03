"""`--metrics-bind`: /metrics, /livez and /readyz, served by a thread of the master.

A thread of the master answers while every worker is stuck, crashing or restarting, which a
route of the app (or a worker's loop) cannot. /metrics is prometheus_client's own handler
(text format, OpenMetrics when the scraper asks for it, gzip). /livez is 200 while the master's
loop turns (or it is stopping its workers); /readyz is 200 once a worker of the configuration
serves and 503 while none does, or from the moment SIGTERM, SIGINT or SIGQUIT arrives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from gunicorn.util import parse_address

Address = tuple[str, int] | str  # (host, port), or a unix socket's path
Probe = Callable[[], tuple[bool, str]]  # (healthy, why) for /livez or /readyz


def parse_metrics_bind(value: str) -> Address:
    """`host:port` or `unix:path`, as gunicorn reads --bind; ValueError with the reason."""
    if value.startswith("fd://"):
        raise ValueError("--metrics-bind takes host:port or unix:path, not fd://")
    try:
        address = parse_address(value, default_port="9100")
    except RuntimeError as exc:
        raise ValueError(f"--metrics-bind {value!r}: {exc}") from None
    if isinstance(address, tuple) and not 0 <= address[1] <= 65535:
        raise ValueError(f"--metrics-bind {value!r}: port {address[1]} is out of range")
    return address  # type: ignore[no-any-return]


def overlaps(address: Address, binds: list[Any]) -> bool:
    """Whether `address` is one of the app's own --bind addresses."""
    for bind in binds:
        if isinstance(address, str) or isinstance(bind, str):
            if address == bind:
                return True
            continue
        host, port = address
        if port and port == bind[1] and (host in ("", "0.0.0.0", "::") or host == bind[0]):
            return True
        if port and port == bind[1] and bind[0] in ("", "0.0.0.0", "::"):
            return True
    return False


def listening_socket(address: Address) -> socket.socket:
    """A listening socket on `address`; OSError (in use, not permitted) as the kernel says."""
    if isinstance(address, str):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.stat(address).st_mode):
                os.unlink(address)  # a socket left by an earlier run, as gunicorn does
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    else:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            sock.close()
            raise
    sock.listen(64)
    return sock


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, handler: type, log: Any) -> None:
        self.log = log
        self.address_family = sock.family
        super().__init__(sock.getsockname(), handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_name, self.server_port = "gilworker", 0  # as server_bind would set them

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A request that failed (the scraper sees its connection closed): in gunicorn's log,
        where socketserver would print to stderr."""
        self.log.exception("gilworker: the metrics endpoint failed a request")


class OperatorEndpoint:
    """The HTTP server of --metrics-bind, on a socket bound at start-up."""

    def __init__(
        self, sock: socket.socket, registry: Any, live: Probe, ready: Probe, log: Any
    ) -> None:
        from prometheus_client.exposition import MetricsHandler

        class Handler(MetricsHandler):  # type: ignore[misc, valid-type]
            timeout = 10  # seconds: a client that connects and sends nothing holds no thread

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/"):
                    super().do_GET()
                elif path in ("/livez", "/readyz"):
                    healthy, why = (live if path == "/livez" else ready)()
                    self._answer(200 if healthy else 503, why)
                else:
                    self._answer(404, "not found: /metrics, /livez, /readyz")

            def _answer(self, status: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self) -> str:  # a unix socket's peer has no host
                return str(self.client_address[0]) if self.client_address else "unix"

        Handler.registry = registry
        self.server = _Server(sock, Handler, log)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="gilworker-metrics-endpoint", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        address = self.server.socket.getsockname()
        self.server.server_close()
        if isinstance(address, str) and address:  # a unix socket's file
            with contextlib.suppress(OSError):
                os.unlink(address)
