"""gunicorn's per-request contract under -k gilworker, in every topology: the access log in
gunicorn's format, statsd request metrics, pre_request/post_request, the PROXY protocol,
forwarded headers and WebSocket message limits. `-k asgi`, run on the same conf file, is the
reference."""

from __future__ import annotations

import http.client
import io
import json
import re
import signal
import socket
import struct
import time

import pytest
from server import (
    HOOKS,
    READY_LINE,
    THREAD_ID_BASE,
    THREADS,
    Load,
    Statsd,
    exchange,
    read_until_closed,
    request,
    serves,
    wait_for,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

# Every atom -k asgi fills, but the timing ones (D; T, M, L, t and p differ by nature)
ACCESS_FORMAT = (
    'h=%(h)s l=%(l)s u=%(u)s r="%(r)s" m=%(m)s U=%(U)s q=%(q)s H=%(H)s s=%(s)s B=%(B)s '
    'b=%(b)s f="%(f)s" a="%(a)s" rid=%({x-request-id}i)s ct=%({content-type}o)s '
    "e=%({remote_addr}e)s D=%(D)s"
)
HEADERS = {
    "User-Agent": "contract-test/1.0",
    "Referer": "http://example.test/from",
    "X-Request-Id": "abc1",
    "Authorization": "Basic dXNlcjpwYXNz",  # user:pass
}


def access_lines(master, count: int) -> list[str]:
    master.wait_log(r"h=\S+ l=", count=count)
    return re.findall(r"^h=.*$", master.log, flags=re.M)


# (method, path, status): streamed, late body, and the responses whose body is never sent
EXCHANGES = [
    ("GET", "/stream?n=2&delay=0", 200),
    ("GET", "/head-first?s=0", 200),
    ("HEAD", "/status?code=200&body=1000", 200),
    ("HEAD", "/status?code=405&body=18", 405),
    ("GET", "/status?code=304", 304),
    ("GET", "/status?code=204", 204),
]


def exchange_for_access_log(port: int) -> None:
    for method, path, status in EXCHANGES:
        assert request(port, path, headers=HEADERS, method=method).status == status


def test_the_access_log_matches_gunicorns_asgi_worker(gunicorn, topology):
    args = ["--access-logfile", "-", "--access-logformat", ACCESS_FORMAT]
    reference = gunicorn.start(*args, worker_class="asgi", workers=1, ready=r"Booting worker")
    wait_for(lambda: serves(gunicorn.port), 20, "-k asgi serving")  # logged too: left out
    probes = len(access_lines(reference, 1))
    exchange_for_access_log(gunicorn.port)
    expected = access_lines(reference, probes + len(EXCHANGES))[probes:]
    master = gunicorn.start(*args, topology=topology, workers=1)
    exchange_for_access_log(gunicorn.port)
    lines = access_lines(master, len(EXCHANGES))
    # in the order written: two loops of one process write each at the end of its own turn
    assert sorted(strip_timing(x) for x in lines) == sorted(strip_timing(x) for x in expected)
    assert "uvicorn" not in "\n".join(lines) and '" 200' not in master.log  # uvicorn's line
    assert all(int(re.search(r"D=(\d+)", x).group(1)) > 0 for x in lines)
    sent = dict(re.search(r'r="(\S+ \S+) .* b=(\S+)', x).groups() for x in lines)
    assert sent["GET /stream?n=2&delay=0"] == "14" and sent["GET /head-first?s=0"] == "9"
    # the bytes sent: none for HEAD, 304 and 204, though the app sent some for HEAD
    assert {sent[f"{method} {path}"] for method, path, _ in EXCHANGES[2:]} == {"0"}
    assert any(x.startswith('h=127.0.0.1 l=- u=user r="GET /stream?n=2') for x in lines)


def test_gunicorns_own_logger_takes_gilworkers_line_and_says_so(gunicorn, topology):
    master = gunicorn.start(
        "--access-logfile", "-", "--log-level", "debug", topology=topology, workers=1
    )
    assert request(gunicorn.port, "/stream?n=1").status == 200
    master.wait_log(r'"GET /stream\?n=1 HTTP/1.1" 200 7 "-"')
    assert "Access log and statsd request metrics made by gilworker: gunicorn's logger" in (
        master.log
    )


@pytest.mark.parametrize("how", ["logger_class", "logconfig_dict"])
def test_what_reads_logger_access_arguments_still_gets_them(gunicorn, topology, how):
    if how == "logger_class":
        args = ["--logger-class", "access_loggers.AtomAddingLogger", "--access-logfile", "-"]
        args += ["--access-logformat", "%(custom)s %(s)s"]
        line, why = r"from-atoms:/stream 200", "the logger class access_loggers.AtomAddingLogger"
    else:
        conf = "logconfig_dict = __import__('access_loggers').logconfig_dict\n"
        (gunicorn.tmp_path / "logconfig_conf.py").write_text(conf)
        args = ["-c", str(gunicorn.tmp_path / "logconfig_conf.py"), "--access-logformat", "%(s)s"]
        line, why = r"logconfig 200 args-s=200", "gives gunicorn.access a handler"
    master = gunicorn.start(*args, "--log-level", "debug", topology=topology, workers=1)
    assert request(gunicorn.port, "/stream?n=1").status == 200
    master.wait_log(line)
    said = "Access log and statsd request metrics through Logger.access: "
    assert re.search(re.escape(said) + ".*" + re.escape(why), master.log)


def test_usr1_hup_and_stop_lose_no_access_line_and_double_none(gunicorn, topology):
    access = gunicorn.tmp_path / "access.log"
    rotated = gunicorn.tmp_path / "access.log.1"

    def lines(path) -> int:
        return path.read_bytes().count(b"\n") if path.exists() else 0

    master = gunicorn.start(
        "--access-logfile",
        str(access),
        "--access-logformat",
        "line %(s)s %(U)s",
        topology=topology,
        workers=2,
    )
    load = Load(gunicorn.port, clients=6)
    try:
        wait_for(lambda: lines(access) >= 300, 30, "300 lines")
        access.rename(rotated)  # as logrotate does, then USR1
        master.signal(signal.SIGUSR1)
        wait_for(lambda: lines(access) >= 300, 30, "300 lines in the reopened log")
        served = master.log_count(READY_LINE)
        master.signal(signal.SIGHUP)  # new workers; the old ones finish what they serve
        master.wait_log(READY_LINE, count=served + 2 * topology.threads)
        wait_for(lambda: lines(access) >= 600, 30, "300 more lines")
    finally:
        load.stop()
    master.signal(signal.SIGTERM)
    assert master.wait() == 0
    assert not load.errors and load.answered > 600
    assert lines(rotated) >= 300 and lines(access) >= 600
    assert lines(rotated) + lines(access) == load.answered  # each request's line, once


def strip_timing(line: str) -> str:
    return re.sub(r" D=\d+", "", line)


def test_a_streamed_response_is_logged_when_it_ends_with_its_size(gunicorn, topology):
    master = gunicorn.start(
        "--access-logfile",
        "-",
        "--access-logformat",
        "s=%(s)s b=%(b)s D=%(D)s",
        topology=topology,
        workers=1,
    )
    assert request(gunicorn.port, "/stream?n=5&delay=0.1").status == 200
    master.wait_log(r"s=200 b=35 D=\d+")
    duration = int(re.search(r"s=200 b=35 D=(\d+)", master.log).group(1))
    assert duration >= 400_000  # microseconds: logged after the last chunk, not the head


def test_request_hooks_run_once_per_request_even_without_an_access_log(gunicorn, topology):
    master = gunicorn.start(*HOOKS, topology=topology, workers=1)
    for i in range(5):
        ua = {"User-Agent": "hooks"}
        assert request(gunicorn.port, f"/stream?n=1&i={i}", headers=ua).status == 200
    wait_for(lambda: len(gunicorn.hooks("post_request")) == 5, 10, "5 post_request")
    pre, post = gunicorn.hooks("pre_request"), gunicorn.hooks("post_request")
    assert [e["uri"] for e in pre] == [f"/stream?n=1&i={i}" for i in range(5)]
    # resp and environ are filled without an access log (-k asgi passes None for both then)
    assert {(e["status"], e["sent"], e["remote"], e["ua"]) for e in post} == {
        (200, 7, "127.0.0.1", "hooks")
    }
    # the worker as the other hooks see it: a thread of the master, or the worker process
    worker = pre[0]["worker"]
    if topology.in_master:
        assert worker > THREAD_ID_BASE and pre[0]["worker_class"] == "GilWorker"
    else:
        assert worker == pre[0]["pid"] != master.pid
        assert pre[0]["worker_class"] == (
            "ProcessOfThreads" if topology.threads > 1 else "GilWorker"
        )


def test_a_failing_hook_is_logged_and_the_request_answered(gunicorn, topology):
    master = gunicorn.start(*HOOKS, topology=topology, workers=1)
    assert request(gunicorn.port, "/hook-raises").status == 200
    master.wait_log(r"Exception in pre_request hook")
    assert "a pre_request hook that fails" in master.log
    wait_for(lambda: gunicorn.hooks("post_request"), 10, "post_request")


@pytest.mark.parametrize("access_log", [True, False])
def test_statsd_request_metrics_with_and_without_an_access_log(gunicorn, topology, access_log):
    def metrics(received: list[str], name: str) -> list[str]:
        return [m for m in received if m.startswith(f"gunicorn.{name}:")]

    names = ("requests", "request.status.200", "request.duration")
    with Statsd() as statsd:
        args = ["--statsd-host", statsd.host, "--dogstatsd-tags", "env:test"]
        if access_log:
            args += ["--access-logfile", "-"]
        gunicorn.start(*args, topology=topology, workers=2)
        for _ in range(4):
            assert request(gunicorn.port, "/stream?n=1").status == 200
        received = statsd.wait(
            lambda lines: all(len(metrics(lines, name)) >= 4 for name in names),
            10,
            "the metrics of 4 requests",
        )
    requests, statuses, durations = (metrics(received, name) for name in names)
    assert requests == ["gunicorn.requests:1|c|@1.0|#env:test"] * 4
    assert statuses == ["gunicorn.request.status.200:1|c|@1.0|#env:test"] * 4
    assert len(durations) == 4 and all(
        re.fullmatch(r".*:[\d.]+\|ms\|#env:test", m) for m in durations
    )


def proxy_v1(client: str, port: int) -> bytes:
    return f"PROXY TCP4 {client} 127.0.0.1 {port} 8000\r\n".encode()


def proxy_v2(client: str, port: int) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = (
        socket.inet_aton(client) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", port, 8000)
    )
    return signature + bytes([0x21, 0x11]) + struct.pack(">H", len(addresses)) + addresses


REQUEST = b"GET /?via=proxy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class Recorded:
    """Bytes read off a socket, for http.client to parse as a response."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def body_of(reply: bytes) -> dict:
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    response = http.client.HTTPResponse(Recorded(reply))  # type: ignore[arg-type]
    response.begin()
    return json.loads(response.read())


def test_proxy_protocol_gives_the_app_and_the_log_the_real_client(gunicorn, topology):
    master = gunicorn.start(
        "--proxy-protocol",
        "auto",
        "--access-logfile",
        "-",
        *HOOKS,
        topology=topology,
        workers=1,
    )
    assert body_of(exchange(gunicorn.port, proxy_v1("203.0.113.7", 5555) + REQUEST))["client"] == [
        "203.0.113.7",
        5555,
    ]
    assert body_of(exchange(gunicorn.port, proxy_v2("198.51.100.9", 4444) + REQUEST))["client"] == [
        "198.51.100.9",
        4444,
    ]
    # split over several reads, as a slow proxy may send it
    with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10) as s:
        pieces = (b"PROXY TCP4 192.0.2.1", b" 127.0.0.1 7 8000\r\nGET /?v", REQUEST[7:])
        for piece in pieces:
            s.sendall(piece)
            time.sleep(0.05)  # a deliberately slow proxy: each piece its own read
        assert body_of(read_until_closed(s))["client"] == ["192.0.2.1", 7]
    # without a header: the peer itself
    assert body_of(exchange(gunicorn.port, REQUEST))["client"][0] == "127.0.0.1"
    master.wait_log(r'(?m)^203\.0\.113\.7 - - \[.*\] "GET /\?via=proxy HTTP/1\.1" 200', count=1)
    assert re.search(r"^198\.51\.100\.9 - - ", master.log, flags=re.M)
    remotes = [e["remote"] for e in gunicorn.hooks("post_request")]
    assert remotes[:2] == ["203.0.113.7", "198.51.100.9"]


@pytest.mark.parametrize(
    "args",
    [
        ("--proxy-protocol", "auto"),  # a malformed header
        ("--proxy-protocol", "auto", "--proxy-allow-from", "192.0.2.99"),  # a peer not allowed
        ("--proxy-protocol", "v2"),  # a v1 header where only v2 is spoken: not PROXY, not HTTP
    ],
)
def test_a_bad_or_unallowed_proxy_header_never_reaches_the_app(gunicorn, args):
    gunicorn.start(*args, *HOOKS, topology=THREADS, workers=1)
    header = (
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n"
        if args[-1] == "auto"
        else proxy_v1("203.0.113.7", 1)
    )
    reply = exchange(gunicorn.port, header + REQUEST)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:100]
    assert gunicorn.hooks("pre_request") == []  # the app never saw it
    assert request(gunicorn.port).status == 200  # and the worker serves on


def test_a_websocket_message_over_the_limit_is_closed_with_1009(gunicorn, topology):
    gunicorn.start("--websocket-max-message-size", "1024", topology=topology, workers=1)
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        ws.send("a" * 1000)
        assert ws.recv(timeout=10).startswith("echo:" + "a" * 10)
        ws.send("b" * 2048)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


@pytest.mark.parametrize(
    ("header", "allowed", "scheme"),
    [
        ("X-Forwarded-Proto: https", "127.0.0.1", "https"),  # uvicorn's
        ("X-Forwarded-Ssl: on", "127.0.0.1", "https"),  # gunicorn's secure_scheme_headers
        ("X-Forwarded-Protocol: ssl", "127.0.0.1", "https"),
        ("X-Forwarded-Proto: https", "192.0.2.99", "http"),  # from a peer not trusted
        ("X-Forwarded-Ssl: on", "192.0.2.99", "http"),
    ],
)
def test_the_app_sees_https_behind_a_trusted_proxy(gunicorn, header, allowed, scheme):
    gunicorn.start("--forwarded-allow-ips", allowed, topology=THREADS, workers=1)
    reply = exchange(
        gunicorn.port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header.encode() + b"\r\n\r\n",
    )
    assert body_of(reply)["scheme"] == scheme
