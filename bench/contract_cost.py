"""The per-request contract's own cost, in this process: µs per request that RequestContract
adds around an app that answers at once, with a send that does nothing, for each thing it can
have to do (the access line, statsd's packets, the request hooks, --metrics-bind's counts).
bench/run.py's `contract_cost` section runs it on 3.11; on its own:

    python bench/contract_cost.py
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import tempfile
import time
from types import SimpleNamespace

from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd

from gunicorn_gilworker.operations.measures import LoopMeasures
from gunicorn_gilworker.request.contract import with_request_contract

REQUESTS = 20_000
SCOPE = {
    "type": "http",
    "method": "GET",
    "path": "/",
    "raw_path": b"/",
    "query_string": b"",
    "http_version": "1.1",
    "scheme": "http",
    "client": ("127.0.0.1", 50000),
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
}
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
BODY = {"type": "http.response.body", "body": b"hello"}


async def app(scope, receive, send):
    await send(START)
    await send(BODY)


async def send(message):
    pass


async def receive():
    return {"type": "http.request"}


def per_request_us(wrapped) -> float:
    async def run() -> float:
        for _ in range(1000):  # warm-up
            await wrapped(SCOPE, receive, send)
        started = time.perf_counter()
        for _ in range(REQUESTS):
            await wrapped(SCOPE, receive, send)
            if _ % 64 == 0:
                await asyncio.sleep(0)  # a loop turn now and then: the writer's lines leave
        return (time.perf_counter() - started) / REQUESTS * 1e6

    return asyncio.run(run())


def contract_for(logfile: str | None, statsd: str | None, hooks: bool, metrics: bool = False):
    cfg = Config()
    if logfile:
        cfg.set("accesslog", logfile)
    if statsd:
        cfg.set("statsd_host", statsd)
    if hooks:
        cfg.set("pre_request", lambda worker, req: None)
        cfg.set("post_request", lambda worker, req, environ, resp: None)
    log = (Statsd if statsd else Logger)(cfg)
    worker = SimpleNamespace(cfg=cfg, log=log)
    wrapped, _ = with_request_contract(app, worker, worker, LoopMeasures() if metrics else None)
    return wrapped


def main() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a statsd server that never reads
    sink.bind(("127.0.0.1", 0))
    statsd = f"127.0.0.1:{sink.getsockname()[1]}"
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        cases = {
            "nothing per request (the app alone)": (None, None, False),
            "access log": (log.name, None, False),
            "access log and statsd": (log.name, statsd, False),
            "pre_request and post_request hooks": (None, None, True),
            "--metrics-bind's counts alone": (None, None, False, True),
            "access log and --metrics-bind's counts": (log.name, None, False, True),
        }
        bare = per_request_us(app)
        costs = {name: per_request_us(contract_for(*case)) - bare for name, case in cases.items()}
    json.dump(costs, sys.stdout)


if __name__ == "__main__":
    main()
