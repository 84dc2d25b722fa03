"""gilworker's access line and statsd packets against gunicorn's `Logger.access` / `Statsd.access`.

A real uvicorn server (in this process, on a free port) serves real HTTP/1.1 exchanges through a
RequestContract that, for each request, both calls `Statsd.access()` and makes gilworker's line
and packets from the same request, response and request time: gunicorn's go to one file and one
UDP listener, gilworker's to another file and another listener; they must be the same bytes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvicorn
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.instrument.statsd import Statsd as GunicornStatsd
from server import Statsd, free_port, wait_for

from gunicorn_gilworker.request.access_line import (
    AccessFormat,
    AccessLogWriter,
    StatsdRequests,
    _Clock,
    access_path,
    format_has_bare_conversions,
)
from gunicorn_gilworker.request.contract import RequestContract

EVERY_ATOM = (
    'h=%(h)s l=%(l)s u=%(u)s t=%(t)s r="%(r)s" s=%(s)s b=%(b)s B=%(B)s f="%(f)s" a="%(a)s" '
    "m=%(m)s U=%(U)s q=%(q)s H=%(H)s T=%(T)s D=%(D)s M=%(M)s L=%(L)s p=%(p)s "
    "i=%({x-note}i)s I=%({X-Note}i)s o=%({content-type}o)s O=%({X-Out}o)s "
    "e=%({http_user_agent}e)s ra=%({remote_addr}e)s ru=%({raw_uri}e)s en=%({nothing}e)s "
    "x=%(x)s z=%({what}z)s d=%(D)d pct=100%%"
)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    headers = [(b"content-type", b'text/"plain"'), (b"X-Out", b"1"), (b"x-out", b"\xe9t\xe9")]
    if path == "/not-modified":
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if path == "/stream":  # more_body chunks; ?n=100 runs until the client has gone
        chunks = 100 if scope["query_string"] == b"n=100" else 3
        for i in range(chunks):
            await send({"type": "http.response.body", "body": b"chunk %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.body", "body": b"hello"})


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # no user agent, referer or authorization: "-"
    b'GET /a%20b/"q"?x=1&y="2" HTTP/1.1\r\nHost: x\r\nUser-Agent: ua "quoted"\r\n'
    b"Referer: http://r.test/\r\nAuthorization: Basic dXNlcjpwYXNz\r\n"
    b"X-Note: first\r\nX-Note: second\r\nuser_agent: underscored\r\n\r\n",  # repeated, odd
    b"GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\nX-Note: \xe9\xe8\r\nUser-Agent: \xff\r\n\r\n",
    b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /not-modified HTTP/1.1\r\nHost: x\r\nIf-None-Match: x\r\n\r\n",
    b"POST /?q HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\nAuthorization: Bearer t\r\n\r\nabc",
]


def file_logger(name: str, path: Path) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger


@contextmanager
def serving(contract_app, http: str):
    port = free_port()
    config = uvicorn.Config(
        contract_app, port=port, http=http, lifespan="off", log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 10, "uvicorn serving")
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def exchange(port: int, data: bytes, leave_early: bool = False) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head, _, body = data.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)  # read to the end
        if leave_early:  # the head and a chunk, then gone while the app still streams
            sock.recv(100)
            return
        while sock.recv(65536):
            pass


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_the_line_and_the_packets_are_gunicorns_byte_for_byte(tmp_path, monkeypatch, http):
    pytest.importorskip(http)
    with Statsd() as theirs_udp, Statsd() as ours_udp:
        cfg = Config()
        cfg.set("access_log_format", EVERY_ATOM)
        cfg.set("statsd_prefix", "app")
        cfg.set("dogstatsd_tags", "env:test,tier:a")
        cfg.set("statsd_host", ours_udp.host)
        ours_statsd = StatsdRequests(GunicornStatsd(cfg))  # made first: setup is global
        cfg.set("statsd_host", theirs_udp.host)
        theirs_file, ours_file = tmp_path / "gunicorn.log", tmp_path / "gilworker.log"
        cfg.set("accesslog", str(theirs_file))
        log = GunicornStatsd(cfg)
        # both paths at once: gunicorn's Statsd.access, then gilworker's line and packets
        contract = RequestContract(
            app,
            SimpleNamespace(log=log),
            pre=None,
            post=None,
            logger_access=True,
            line=AccessFormat(EVERY_ATOM, log),
            writer=AccessLogWriter(file_logger(f"test.gilworker.{http}", ours_file)),
            statsd=ours_statsd,
        )
        now = time.strftime("[%d/%b/%Y:%H:%M:%S %z]")  # `t` is tested on its own, below
        monkeypatch.setattr(Logger, "now", lambda self: now)
        monkeypatch.setattr(_Clock, "now", lambda self: now)
        with serving(contract, http) as port:
            for data in REQUESTS:
                exchange(port, data)
            exchange(port, b"GET /stream?n=100 HTTP/1.1\r\nHost: x\r\n\r\n", leave_early=True)
            count = len(REQUESTS) + 1
            wait_for(lambda: theirs_file.read_bytes().count(b"\n") == count, 10, "every line")
        contract.close()
        theirs_packets = theirs_udp.wait(lambda got: len(got) >= 3 * count, 10, "the packets")
        ours_packets = ours_udp.wait(lambda got: len(got) >= 3 * count, 10, "the packets")
    theirs, ours = theirs_file.read_bytes().splitlines(), ours_file.read_bytes().splitlines()
    assert ours == theirs
    assert ours_packets == theirs_packets and len(ours_packets) == 3 * count
    # what the lines hold: each case reached its atoms
    assert b"h=127.0.0.1 l=- u=- t=[" in ours[0] and b" b=5 B=5 " in ours[0]
    assert b"u=user" in ours[1] and b'r="GET /a%20b/\\"q\\"?x=1&y=\\"2\\" HTTP/1.1"' in ours[1]
    assert b"i=second I=second" in ours[1] and b'a="underscored"' in ours[1]
    assert "U=/café".encode() in ours[2] and "i=éè".encode() in ours[2]
    assert "O=été".encode() in ours[2] and b'o=text/\\"plain\\"' in ours[2]
    assert b" s=200 b=24 " in ours[3]  # streamed: 3 chunks of 8 bytes
    assert b"m=HEAD" in ours[4] and b" b=0 " in ours[4]
    assert b" s=304 b=0 " in ours[5]
    assert b"H=HTTP/1.0" in ours[6] and b" u=- " in ours[6]  # a Bearer token names no user
    assert b" s=200 " in ours[7] and int(ours[7].split(b" b=")[1].split(b" ")[0]) < 800  # left
    assert b"en=- x=- z=- d=" in ours[0] and ours[0].endswith(b"pct=100%")
    assert "app.gunicorn.requests:1|c|@1.0|#env:test,tier:a" in ours_packets
    assert "app.gunicorn.request.status.304:1|c|@1.0|#env:test,tier:a" in ours_packets


def test_the_time_atom_is_gunicorns():
    clock, log = _Clock(), Logger(Config())
    for _ in range(100):  # a sample inside one second; the first almost always is
        before = time.time()
        ours, theirs = clock.now(), log.now()
        if int(before) == int(time.time()):
            assert ours == theirs
            return
    raise AssertionError("no sample inside one second")


def test_which_path_the_access_line_takes(tmp_path, monkeypatch):
    # pytest's log capture hangs its handlers on the logger in this process: none of gunicorn's
    monkeypatch.setattr(logging.getLogger("gunicorn.access"), "handlers", [])
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "a.log"))
    log = Logger(cfg)
    assert access_path(log, cfg.access_log_format) == (
        "gilworker",
        "gunicorn's logger with its own handlers",
    )

    class Custom(Logger):
        pass

    assert access_path(Custom(cfg), cfg.access_log_format) == (
        "Logger.access",
        f"the logger class {__name__}.{Custom.__qualname__} may read Logger.access's arguments",
    )
    log = Logger(cfg)
    log.access_log.handlers[0].addFilter(lambda record: True)
    assert access_path(log, cfg.access_log_format)[0] == "Logger.access"
    log = Logger(cfg)
    log.access_log.addHandler(logging.StreamHandler())  # not gunicorn's
    assert "gives gunicorn.access a handler" in access_path(log, cfg.access_log_format)[1]
    assert access_path(Logger(cfg), "%s %(h)s")[0] == "Logger.access"
    assert format_has_bare_conversions("%s") and format_has_bare_conversions("%(h)s %d")
    assert not format_has_bare_conversions('%(h)s %%d %(D)06d "%(r)-10s" %({a}i)s')
