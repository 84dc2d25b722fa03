"""HTTP/2 as gunicorn's `-k asgi` serves it: ALPN over TLS, h2c by prior knowledge and by
Upgrade from trusted peers, on gunicorn's own HTTP/2 stack, in every topology. Clients: httpx
(http2=True) and a plain h2 connection on a socket where a test needs frames of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import ssl
import time
from urllib.parse import urlencode

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx
import hyperframe.frame
import pytest
from server import (
    HOOKS,
    PROCESSES,
    THREADS,
    Statsd,
    make_certificate,
    refusal,
    request,
    trusting,
    wait_for,
    without_ctl_cancellations,
    worker_ids,
)

H2C = ["--http-protocols", "h2,h1", "--forwarded-allow-ips", "127.0.0.1"]
PRIOR_KNOWLEDGE = [*H2C, "--http2-cleartext", "prior-knowledge"]
BOTH = [*H2C, "--http2-cleartext", "both"]
ACCESS = ["--access-logfile", "-", "--access-logformat", 'H=%(H)s r="%(r)s" s=%(s)s b=%(b)s']


class H2Client:
    """One HTTP/2 connection on a socket, frame by frame: h2c with prior knowledge, or h2 by
    ALPN over TLS when given a `tls` context."""

    def __init__(
        self,
        port: int,
        preamble: bytes = b"",
        settings: dict | None = None,
        tls: ssl.SSLContext | None = None,
        receive_buffer: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        if receive_buffer:  # before connecting: the kernel then never grows it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock)
            assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.sock.sendall(preamble + self.conn.data_to_send())
        self.events: list = []
        self.closed = False

    def close(self) -> None:
        self.sock.close()

    def get(self, path: str, headers: list | None = None, end: bool = True) -> int:
        stream = self.conn.get_next_available_stream_id()
        head = [(":method", "GET"), (":path", path), (":scheme", "http")]
        head += [(":authority", "127.0.0.1"), *(headers or [])]
        self.conn.send_headers(stream, head, end_stream=end)
        self.flush()
        return stream

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def read(self) -> None:
        """One read's events (the connection's own answers, SETTINGS ACK and WINDOW_UPDATE,
        go back at once)."""
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return
        self.events += self.conn.receive_data(data)
        try:
            self.flush()
        except (BrokenPipeError, ConnectionResetError):  # the server closed after that
            self.closed = True

    def until(self, done, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not done():
            if self.closed or time.monotonic() > deadline:
                raise TimeoutError(f"{self.events[-5:]}, closed: {self.closed}")
            self.read()
        return done()

    def response(self, stream: int) -> tuple[dict, bytes]:
        """The response on `stream`: its headers and its body."""

        def ended() -> bool:
            return any(
                isinstance(e, h2.events.StreamEnded | h2.events.StreamReset)
                and e.stream_id == stream
                for e in self.events
            )

        self.until(ended)
        headers: dict = {}
        body = b""
        for event in self.events:
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
            elif isinstance(event, h2.events.StreamReset):
                headers = {":reset": str(int(event.error_code))}
        return headers, body

    def upload(self, path: str, bodies: list[bytes], timeout: float = 30.0) -> list[int]:
        """One stream per body, all open at once, each body sent as far as its flow-control
        window allows, the streams taking turns; their ids."""
        streams = {}
        for body in bodies:
            stream = self.conn.get_next_available_stream_id()
            head = [(":method", "POST"), (":path", path), (":scheme", "https")]
            self.conn.send_headers(stream, [*head, (":authority", "127.0.0.1")])
            streams[stream] = body
        self.flush()
        deadline = time.monotonic() + timeout
        while any(body is not None for body in streams.values()):
            assert time.monotonic() < deadline, f"uploads not done: {self.events[-5:]}"
            sent = False
            for stream, body in streams.items():
                if body is None:
                    continue
                room = min(self.conn.local_flow_control_window(stream), 16384, len(body))
                if room > 0:
                    self.conn.send_data(stream, body[:room])
                    body = streams[stream] = body[room:]
                    sent = True
                if not body:
                    self.conn.end_stream(stream)
                    streams[stream] = None
                    sent = True
            self.flush()
            if not sent:
                self.read()  # no window left: wait for the server's WINDOW_UPDATEs
        return list(streams)

    def goaway(self) -> h2.events.ConnectionTerminated:
        """The GOAWAY the server sends before it closes."""

        def terminated():
            found = [e for e in self.events if isinstance(e, h2.events.ConnectionTerminated)]
            return found[0] if found else None

        with contextlib.suppress(h2.exceptions.ProtocolError, OSError):
            self.until(terminated)  # h2 may refuse what follows a GOAWAY; the server may reset
        found = terminated()
        assert found is not None, f"no GOAWAY: {self.events[-5:]}, closed: {self.closed}"
        return found


def h2_get(port: int, path: str) -> tuple[dict, bytes]:
    client = H2Client(port)
    try:
        return client.response(client.get(path))
    finally:
        client.close()


# -- ALPN over TLS ------------------------------------------------------------------------


def test_alpn_h2_serves_100_concurrent_streams_and_http11_on_the_same_port(
    gunicorn, topology, tmp_path
):
    key, cert = make_certificate(tmp_path)
    master = gunicorn.start(
        "--keyfile", str(key), "--certfile", str(cert), "--http-protocols", "h2,h1", *ACCESS,
        topology=topology,
    )  # fmt: skip
    url = f"https://127.0.0.1:{gunicorn.port}"
    trust = trusting(cert)

    # Bodies within the first flow-control window: httpcore (1.0.9) can stall a request body
    # that waited for window credit another stream's read took in (its _wait_for_outgoing_flow
    # reads again without looking: pydantic/httpx2#1133). The uploads below wait for credit.
    async def concurrently() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=1)  # every stream on one connection
        async with httpx.AsyncClient(http2=True, verify=trust, limits=limits) as client:
            return await asyncio.gather(
                *[client.post(f"{url}/echo", content=b"x" * (10 * i)) for i in range(100)]
            )

    responses = asyncio.run(concurrently())
    assert {(r.http_version, r.status_code) for r in responses} == {("HTTP/2", 200)}
    assert [r.json()["size"] for r in responses] == [10 * i for i in range(100)]
    assert {r.json()["http_version"] for r in responses} == {"2"}
    # 100 uploads of 0-99 KB at once, each through its 64 KB window and the connection's
    client = H2Client(gunicorn.port, tls=trusting(cert, ["h2"]))
    try:
        sizes = [1000 * i for i in range(100)]
        streams = client.upload("/echo", [b"u" * size for size in sizes])
        answers = [client.response(stream) for stream in streams]
    finally:
        client.close()
    assert {headers[":status"] for headers, _ in answers} == {"200"}
    assert [json.loads(body)["size"] for _, body in answers] == sizes
    with httpx.Client(verify=trust) as http11:
        plain = http11.get(f"{url}/")
    assert (plain.http_version, plain.json()["http_version"]) == ("HTTP/1.1", "1.1")
    master.wait_log(r'H=HTTP/2 r="POST /echo HTTP/2" s=200', count=200)
    master.wait_log(r'H=HTTP/1\.1 r="GET / HTTP/1\.1" s=200')


@pytest.mark.parametrize("loop", ["asyncio", "auto"])  # asyncio's TLS transport, uvloop's
def test_tls_connections_the_server_closes_leave_the_workers_count(
    gunicorn, topology, loop, tmp_path
):
    """Closed by the server (idle for --keep-alive), a TLS HTTP/2 connection is no longer
    counted: with --worker-connections 1 the next ones are served, one after the other (three:
    a process of two loops would have both full by the third)."""
    key, cert = make_certificate(tmp_path)
    master = gunicorn.start(
        "--keyfile", str(key), "--certfile", str(cert), "--http-protocols", "h2,h1",
        "--keep-alive", "1", "--worker-connections", "1", "--asgi-loop", loop,
        topology=topology, workers=1,
    )  # fmt: skip
    for _ in range(3):
        client = H2Client(gunicorn.port, tls=trusting(cert, ["h2"]))
        try:
            assert client.response(client.get("/"))[0][":status"] == "200"
            assert client.goaway().error_code == h2.errors.ErrorCodes.NO_ERROR
        finally:
            client.close()
    assert "Traceback" not in without_ctl_cancellations(master.log)


# -- cleartext: prior knowledge, Upgrade, and who may ------------------------------------


@pytest.mark.parametrize("parser", ["fast", "python"])  # httptools, h11
def test_h2c_by_prior_knowledge_and_by_upgrade_from_an_allowed_peer(gunicorn, topology, parser):
    gunicorn.start(*BOTH, "--http-parser", parser, topology=topology)
    with httpx.Client(http1=False, http2=True) as client:  # prior knowledge
        response = client.get(f"http://127.0.0.1:{gunicorn.port}/?q=%C3%A9")
    assert response.http_version == "HTTP/2" and response.json()["http_version"] == "2"
    assert response.json()["scheme"] == "http"
    # Upgrade: h2c: the request is stream 1 of the HTTP/2 connection
    head, body = upgraded(gunicorn.port, "/echo", b"")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
    assert (body["size"], body["http_version"]) == (0, "2")
    # one with a body is served as HTTP/1.1 (RFC 9110 7.8 lets a server ignore an Upgrade)
    head, _ = upgraded(gunicorn.port, "/echo", b"y" * 5000)
    assert head.startswith(b"HTTP/1.1 200"), head
    # an HTTP/1.1 client is still served where upgrade is on offer too
    assert request(gunicorn.port, "/").json()["http_version"] == "1.1"


def test_an_upgraded_request_keeps_its_path_under_root_path(gunicorn, topology):
    gunicorn.start(*BOTH, "--root-path", "/api", topology=topology)
    head, body = upgraded(gunicorn.port, "/items", b"")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
    plain = request(gunicorn.port, "/items").json()
    assert (body["path"], body["root_path"]) == (plain["path"], plain["root_path"])
    assert (body["path"], body["http_version"]) == ("/api/items", "2")


def upgraded(port: int, path: str, body: bytes) -> tuple[bytes, dict]:
    """An HTTP/1.1 request with Upgrade: h2c; (the HTTP/1.1 head, stream 1's JSON body)."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = client.initiate_upgrade_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        sock.sendall(
            (
                f"{'POST' if body else 'GET'} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + (f"Content-Length: {len(body)}\r\n" if body else "")
                + "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            ).encode()
            + b"HTTP2-Settings: "
            + settings
            + b"\r\n\r\n"
            + body
        )
        data = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            return head, {}
        sock.sendall(client.data_to_send())
        events = client.receive_data(rest) if rest else []
        answer = b""
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            assert time.monotonic() < deadline, events
            chunk = sock.recv(65536)
            assert chunk, events
            events += client.receive_data(chunk)
            sock.sendall(client.data_to_send())
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                answer += event.data
        # the connection goes on reading: a second stream on it is answered too
        client.send_headers(3, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                (":authority", "127.0.0.1")], end_stream=True)  # fmt: skip
        sock.sendall(client.data_to_send())
        while not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 3 for e in events):
            assert time.monotonic() < deadline, events
            chunk = sock.recv(65536)
            assert chunk, events
            events += client.receive_data(chunk)
            sock.sendall(client.data_to_send())
        return head, json.loads(answer)


def test_a_peer_outside_forwarded_allow_ips_is_served_http11(gunicorn, topology):
    gunicorn.start(
        "--http-protocols", "h2,h1", "--http2-cleartext", "both",
        "--forwarded-allow-ips", "10.9.8.7", topology=topology,
    )  # fmt: skip
    head, _ = upgraded(gunicorn.port, "/echo", b"z")
    assert head.startswith(b"HTTP/1.1 200"), head  # the Upgrade is ignored
    # a preface is not HTTP/1.1: uvicorn answers 400 and closes (a reset, if the rest of the
    # client's frames were still unread)
    refused = (httpx.RemoteProtocolError, httpx.ReadError)
    with pytest.raises(refused), httpx.Client(http1=False, http2=True) as client:
        client.get(f"http://127.0.0.1:{gunicorn.port}/")
    assert request(gunicorn.port, "/").json()["http_version"] == "1.1"


def test_prior_knowledge_alone_refuses_http11_from_a_trusted_peer(gunicorn):
    gunicorn.start(*PRIOR_KNOWLEDGE, topology=THREADS, workers=1)
    response = request(gunicorn.port, "/")
    assert (response.status, response.body) == (400, b"Invalid HTTP/2 connection preface")
    assert h2_get(gunicorn.port, "/")[0][":status"] == "200"


def test_the_proxy_protocol_comes_before_an_h2c_preface(gunicorn, topology):
    master = gunicorn.start(
        *PRIOR_KNOWLEDGE, "--proxy-protocol", "v1", "--proxy-allow-from", "127.0.0.1",
        "--access-logfile", "-", "--access-logformat", "h=%(h)s H=%(H)s", topology=topology,
    )  # fmt: skip
    client = H2Client(gunicorn.port, b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 8000\r\n")
    try:
        headers, body = client.response(client.get("/"))
    finally:
        client.close()
    assert headers[":status"] == "200" and json.loads(body)["client"] == ["203.0.113.9", 4444]
    master.wait_log(r"h=203\.0\.113\.9 H=HTTP/2")


def test_h2_asked_for_without_the_h2_package_is_refused_in_one_line(gunicorn, tmp_path):
    shadow = tmp_path / "no_h2" / "h2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('h2 is not installed')\n")
    env = gunicorn.env(PYTHONPATH=f"{shadow.parent}:{gunicorn.env()['PYTHONPATH']}")
    assert refusal(gunicorn, "--http-protocols", "h2,h1", env=env) == [
        "Error: http_protocols includes h2 but the h2 package is not installed. Install "
        "gunicorn[http2], or drop h2 from http_protocols."
    ]


# -- per stream: the contract, the limits, the stops ---------------------------------------


def test_each_stream_gets_the_hooks_the_access_line_and_statsd(gunicorn, topology):
    with Statsd() as statsd:
        master = gunicorn.start(
            *PRIOR_KNOWLEDGE, *HOOKS, *ACCESS, "--statsd-host", statsd.host, topology=topology
        )
        client = H2Client(gunicorn.port)
        try:
            streams = [client.get(f"/status?code=201&body={i}") for i in range(5)]
            assert [client.response(s)[0][":status"] for s in streams] == ["201"] * 5
        finally:
            client.close()
        statsd.wait(lambda lines: lines.count("gunicorn.request.status.201:1|c|@1.0") >= 5, 10, "5")
    wait_for(lambda: len(gunicorn.hooks("post_request")) == 5, 10, "5 post_request")
    assert sorted(e["uri"] for e in gunicorn.hooks("pre_request")) == sorted(
        f"/status?code=201&body={i}" for i in range(5)
    )
    assert sorted(e["sent"] for e in gunicorn.hooks("post_request")) == [0, 1, 2, 3, 4]
    master.wait_log(r'H=HTTP/2 r="GET /status\?code=201&body=4 HTTP/2" s=201 b=4')


def test_max_requests_counts_streams_and_the_streams_in_flight_finish(gunicorn, topology):
    master = gunicorn.start(*PRIOR_KNOWLEDGE, "--max-requests", "4", topology=topology)
    before = worker_ids(gunicorn)
    client = H2Client(gunicorn.port)
    try:
        streams = [client.get("/sleep?s=0.5") for _ in range(6)]  # one batch: all begin
        assert [client.response(s)[0].get(":status") for s in streams] == ["200"] * 6
        goaway = client.goaway()  # then the worker, past its 4, says GOAWAY and closes
    finally:
        client.close()
    assert goaway.error_code == 0 and goaway.last_stream_id >= streams[-1]
    wait_for(lambda: set(worker_ids(gunicorn)) - set(before), 20, "a worker replaced")
    assert "Traceback" not in without_ctl_cancellations(master.log)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["hup", "term"])
def test_streams_in_flight_through_a_stop_complete_then_goaway(gunicorn, topology, sig):
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        streams = [client.get("/sleep?s=1.5") for _ in range(5)]
        master.wait_log("sleep request started", count=5)
        master.signal(sig)
        assert [client.response(s)[0].get(":status") for s in streams] == ["200"] * 5
        goaway = client.goaway()
    finally:
        client.close()
    assert goaway.error_code == 0 and goaway.last_stream_id == streams[-1]
    if sig == signal.SIGTERM:
        assert master.wait() == 0
    else:  # the new worker serves HTTP/2
        wait_for(lambda: h2_get(gunicorn.port, "/")[0].get(":status") == "200", 20, "served")


def test_streams_in_flight_on_the_worker_ttou_stops_complete_then_goaway(gunicorn, topology):
    """TTOU stops the oldest worker: here the one holding the connection, a newer one beside it."""
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    (oldest,) = worker_ids(gunicorn)
    client = H2Client(gunicorn.port)
    try:
        streams = [client.get("/sleep?s=6") for _ in range(5)]  # in flight through TTIN and TTOU
        master.wait_log("sleep request started", count=5)
        master.signal(signal.SIGTTIN)
        wait_for(lambda: len(worker_ids(gunicorn)) == 2, 20, "a second worker")
        master.signal(signal.SIGTTOU)
        assert [client.response(s)[0].get(":status") for s in streams] == ["200"] * 5
        goaway = client.goaway()
    finally:
        client.close()
    assert goaway.error_code == 0 and goaway.last_stream_id == streams[-1]
    wait_for(lambda: len(ids := worker_ids(gunicorn)) == 1 and oldest not in ids, 20, "one left")
    assert h2_get(gunicorn.port, "/")[0].get(":status") == "200"


def test_a_stream_reset_mid_response_stops_the_apps_sends(gunicorn, topology):
    # ASGI spec 2.4: `send` raises once the client has gone, so a streaming app stops
    master = gunicorn.start(
        *PRIOR_KNOWLEDGE, "--access-logfile", "-", "--access-logformat", "stream s=%(s)s b=%(b)s",
        topology=topology, workers=1,
    )  # fmt: skip
    client = H2Client(gunicorn.port)
    try:
        stream = client.get("/stream?n=5000&delay=0.01")  # 50 s if nothing stops it
        client.until(lambda: any(isinstance(e, h2.events.DataReceived) for e in client.events))
        client.conn.reset_stream(stream, error_code=8)  # CANCEL
        client.flush()
        master.wait_log(r"stream s=200 b=\d+", timeout=10)
    finally:
        client.close()
    sent = int(re.search(r"stream s=200 b=(\d+)", master.log).group(1))
    assert 0 < sent < 5000 * 7
    assert "Exception in ASGI application" not in master.log  # the client's doing, not a bug


def test_expect_100_continue_is_answered_before_the_body(gunicorn, topology):
    gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        stream = client.get("/echo", headers=[("expect", "100-continue")], end=False)

        def informational() -> bool:
            return any(
                isinstance(e, h2.events.InformationalResponseReceived) for e in client.events
            )

        client.until(informational)
        client.conn.send_data(stream, b"after the 100", end_stream=True)
        client.flush()
        headers, body = client.response(stream)
    finally:
        client.close()
    assert headers[":status"] == "200" and json.loads(body)["size"] == 13


def test_a_reset_stream_hears_http_disconnect_and_the_others_go_on(gunicorn, topology):
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        waiting = client.get("/until-disconnect")
        master.wait_log("waiting for a disconnect")
        client.conn.reset_stream(waiting, error_code=8)  # CANCEL
        client.flush()
        master.wait_log("disconnect heard")
        assert client.response(client.get("/"))[0][":status"] == "200"
    finally:
        client.close()


@pytest.mark.parametrize("then", ["reset", "answer"])
def test_a_disconnect_listener_wakes_beside_a_poll_given_up(gunicorn, topology, then):
    """A task waiting in receive() for http.disconnect, while another receive() is given up at
    once (Starlette's is_disconnected()): it wakes when the client resets the stream, and when
    the response is done, as uvicorn wakes it over HTTP/1.1."""
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        stream = client.get(f"/listeners?then={then}")
        if then == "reset":
            master.wait_log("listening in")
            client.conn.reset_stream(stream, error_code=8)  # CANCEL
            client.flush()
        else:
            assert client.response(stream) == ({":status": "200", "content-type": "text/plain"},
                                               b"answered")  # fmt: skip
        master.wait_log("listener heard http.disconnect", timeout=10)
        assert client.response(client.get("/"))[0][":status"] == "200"
    finally:
        client.close()
    assert "Traceback" not in without_ctl_cancellations(master.log)


def test_a_response_that_ends_before_its_body_is_a_500(gunicorn, topology):
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology)
    headers, body = h2_get(gunicorn.port, "/start-only")
    assert headers[":status"] == "500" and body == b"Internal Server Error"
    master.wait_log("ASGI callable returned without completing response")


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-split", "a\r\nset-cookie: evil=1"), ("te", "gzip"), ("bad name", "x"), ("x-nul", "a\0b")],
    ids=["crlf", "te", "space-in-name", "nul"],
)
def test_a_response_field_http2_cannot_carry_is_a_500_and_the_connection_goes_on(
    gunicorn, topology, name, value
):
    """Such a field never reaches the wire (nor h2's HPACK table, which the client would then
    read differently for every later stream): 500, and the connection's next stream is fine."""
    master = gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        query = urlencode({"name": name, "value": value})
        headers, body = client.response(client.get(f"/header?{query}"))
        assert headers[":status"] == "500" and b"evil" not in body
        assert "x-split" not in headers and "te" not in headers
        after = client.response(client.get("/header?name=x-fine&value=yes"))
        assert after == ({":status": "200", "x-fine": "yes"}, b"ok")
        te = client.response(client.get("/header?name=te&value=Trailers"))  # as h2 reads te
        assert te == ({":status": "200", "te": "Trailers"}, b"ok")
    finally:
        client.close()
    master.wait_log("Invalid HTTP header")


def test_a_stream_sent_with_the_clients_goaway_is_served(gunicorn, topology):
    """A client's GOAWAY speaks of the server's streams, not its own: one it opened before is
    answered, not refused."""
    gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        stream = client.conn.get_next_available_stream_id()
        head = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
        client.conn.send_headers(stream, head, end_stream=True)
        goaway = hyperframe.frame.GoAwayFrame(0, last_stream_id=0, error_code=0).serialize()
        client.sock.sendall(client.conn.data_to_send() + goaway)  # in one read
        headers, body = client.response(stream)
    finally:
        client.close()
    assert headers[":status"] == "200" and json.loads(body)["http_version"] == "2"


def test_a_request_body_that_stops_coming_ends_after_timeout(gunicorn, topology):
    """A client silent mid-body: after --timeout (as under -k asgi) the app hears
    http.disconnect and the client RST_STREAM(CANCEL), so it stops sending into a stream nobody
    reads; the connection's other streams go on."""
    master = gunicorn.start(*PRIOR_KNOWLEDGE, "--timeout", "3", topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        stream = client.get("/until-disconnect", end=False)
        client.conn.send_data(stream, b"part of it")
        client.flush()
        master.wait_log("disconnect heard", timeout=15)
        assert client.response(stream)[0] == {":reset": str(int(h2.errors.ErrorCodes.CANCEL))}
        assert client.response(client.get("/"))[0][":status"] == "200"
    finally:
        client.close()


def test_trailers_follow_the_body(gunicorn, topology):
    gunicorn.start(*PRIOR_KNOWLEDGE, topology=topology, workers=1)
    client = H2Client(gunicorn.port)
    try:
        stream = client.get("/trailers?value=caf%C3%A9")
        headers, body = client.response(stream)
        trailers = [e for e in client.events if isinstance(e, h2.events.TrailersReceived)]
        assert (headers[":status"], body) == ("200", b"body")
        assert [dict(t.headers)[b"x-check"] for t in trailers] == ["café".encode()]
        # bytes that are not UTF-8 would change on the way (h2 sends str fields as UTF-8)
        stream = client.get("/trailers?value=caf%C3%A9&encoding=latin-1")
        assert client.response(stream)[0][":reset"] == str(int(h2.errors.ErrorCodes.INTERNAL_ERROR))
        assert client.response(client.get("/"))[0][":status"] == "200"
    finally:
        client.close()


def test_a_streamed_request_body_is_read_with_flow_control(gunicorn, topology):
    # 1 MB through a 64 KB window: the server must give credit back as the app reads
    gunicorn.start(*PRIOR_KNOWLEDGE, "--http2-initial-window-size", "65535", topology=topology)
    client = H2Client(gunicorn.port)
    try:
        stream = client.get("/echo", end=False)
        remaining = b"b" * 1_000_000
        deadline = time.monotonic() + 20
        while remaining:
            assert time.monotonic() < deadline, "no window credit came back"
            window = min(client.conn.local_flow_control_window(stream), 16384)
            if window <= 0:
                client.read()
                continue
            client.conn.send_data(stream, remaining[:window])
            remaining = remaining[window:]
            client.flush()
        client.conn.end_stream(stream)
        client.flush()
        headers, body = client.response(stream)
    finally:
        client.close()
    assert headers[":status"] == "200" and json.loads(body)["size"] == 1_000_000
    assert json.loads(body)["chunks"] > 1  # handed to the app as it came


def test_a_peer_that_does_not_read_holds_up_its_response_not_the_worker(gunicorn, topology):
    """A client that grants a 2 GB window and reads nothing: the response waits for it (the
    transport pauses the stream's sends) and the worker's other connections are served, rather
    than one turn of the loop holding the whole body in memory."""
    size = 16 * 1024 * 1024  # far more than the kernel holds for a 64 KB receive buffer
    master = gunicorn.start(*BOTH, *ACCESS, topology=topology, workers=1)
    wide = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    client = H2Client(gunicorn.port, settings=wide, receive_buffer=65536)
    try:
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        stream = client.get(f"/status?code=200&body={size}")
        client.until(lambda: any(isinstance(e, h2.events.ResponseReceived) for e in client.events))
        assert request(gunicorn.port, "/").status == 200  # the same worker, meanwhile
        master.wait_log(r'r="GET / HTTP/1\.1" s=200')
        assert master.log_count(r'r="GET /status\?code=200&body=\d+ HTTP/2" s=200') == 0
        headers, body = client.response(stream)  # now it reads: all of it comes
    finally:
        client.close()
    assert headers[":status"] == "200" and len(body) == size
    master.wait_log(rf'r="GET /status\?code=200&body={size} HTTP/2" s=200 b={size}')


def test_worker_connections_counts_http2_connections(gunicorn):
    gunicorn.start(*PRIOR_KNOWLEDGE, "--worker-connections", "1", topology=PROCESSES, workers=1)
    first = H2Client(gunicorn.port)
    try:
        assert first.response(first.get("/"))[0][":status"] == "200"
        second = socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10)
        second.sendall(h2_preface())
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):  # not accepted while the first is open
            second.recv(1)
    finally:
        first.close()
    second.settimeout(10)
    assert second.recv(1), "the second connection was served once the first closed"
    second.close()


def h2_preface() -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    return conn.data_to_send()


# -- what a client can do wrong -------------------------------------------------------------


def test_bad_frames_floods_and_big_header_lists_close_only_their_connection(gunicorn, topology):
    master = gunicorn.start(
        *PRIOR_KNOWLEDGE, "--http2-max-header-list-size", "4096", topology=topology
    )
    workers = worker_ids(gunicorn)
    bystander = H2Client(gunicorn.port)
    try:
        assert bystander.response(bystander.get("/"))[0][":status"] == "200"
        # a malformed frame: a DATA frame on stream 0
        bad = H2Client(gunicorn.port)
        bad.sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        assert bad.goaway().error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        bad.close()
        # a rapid reset: streams opened and cancelled faster than gunicorn allows (200 / 10 s)
        flood = H2Client(gunicorn.port, settings={h2.settings.SettingCodes.ENABLE_PUSH: 0})
        for _ in range(250):
            stream = flood.conn.get_next_available_stream_id()
            head = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
            flood.conn.send_headers(stream, head)
            flood.conn.reset_stream(stream, error_code=8)
        with contextlib.suppress(OSError):  # the server may have closed it meanwhile
            flood.flush()
        assert flood.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        flood.close()
        # a control-frame flood: PINGs faster than gunicorn allows (1000 / 10 s)
        pings = H2Client(gunicorn.port)
        for n in range(1100):
            pings.conn.ping(n.to_bytes(8, "big"))
        with contextlib.suppress(OSError):
            pings.flush()
        assert pings.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        pings.close()
        # a header list over --http2-max-header-list-size, once the server's settings apply
        # (acknowledged: a PING's answer comes after the acknowledgement is read)
        big = H2Client(gunicorn.port)
        big.until(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in big.events))
        big.conn.ping(b"settled!")
        big.flush()
        big.until(lambda: any(isinstance(e, h2.events.PingAckReceived) for e in big.events))
        big.get("/", headers=[("x-big", "v" * 8000)])
        assert big.goaway().error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM  # as -k asgi
        big.close()
        # the bystander's connection and every worker go on
        assert bystander.response(bystander.get("/"))[0][":status"] == "200"
    finally:
        bystander.close()
    assert worker_ids(gunicorn) == workers and "Traceback" not in without_ctl_cancellations(
        master.log
    )


def test_an_untrusted_tls_client_offered_h2_is_never_given_h2c(gunicorn, tmp_path):
    """TLS and h2c do not mix: over TLS only ALPN decides, whoever the peer is."""
    key, cert = make_certificate(tmp_path)
    gunicorn.start(
        "--keyfile", str(key), "--certfile", str(cert), "--http-protocols", "h1",
        topology=THREADS, workers=1,
    )  # fmt: skip
    context = trusting(cert, ["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10)
    with raw, context.wrap_socket(raw) as tls:
        assert tls.selected_alpn_protocol() in (None, "http/1.1")


def test_the_access_lines_of_streams_match_gunicorns_asgi_worker(gunicorn, topology):
    args = [*PRIOR_KNOWLEDGE, "--access-logfile", "-", "--access-logformat", CONTRACT_FORMAT]
    reference = gunicorn.start(*args, worker_class="asgi", workers=1, ready=r"Booting worker")
    wait_for(lambda: serves_h2(gunicorn.port), 20, "-k asgi serving HTTP/2")
    probes = len(contract_lines(reference, 1))
    expected = streams_for_access_log(gunicorn.port, reference, probes)
    master = gunicorn.start(*args, topology=topology, workers=1)
    lines = streams_for_access_log(gunicorn.port, master, 0)
    assert sorted(map(untimed, lines)) == sorted(map(untimed, expected))


# Every atom -k asgi fills for a stream, but the timing ones (D; T, M, L, t and p differ)
CONTRACT_FORMAT = (
    'h=%(h)s u=%(u)s r="%(r)s" m=%(m)s U=%(U)s q=%(q)s H=%(H)s s=%(s)s B=%(B)s b=%(b)s '
    'f="%(f)s" a="%(a)s" rid=%({x-request-id}i)s ct=%({content-type}o)s D=%(D)s'
)
STREAMS = [
    ("GET", "/stream?n=2&delay=0"),
    ("GET", "/status?code=404&body=7"),
    ("HEAD", "/status?code=200&body=1000"),
    ("GET", "/status?code=304"),
    ("POST", "/echo"),
]


def streams_for_access_log(port: int, master, before: int) -> list[str]:
    """The access lines of STREAMS, sent on one connection kept open until they are written
    (-k asgi counts a body's bytes once they have left: a client gone at once can make it 0)."""
    headers = {
        "User-Agent": "contract-test/2.0",
        "Referer": "http://example.test/from",
        "X-Request-Id": "abc2",
        "Authorization": "Basic dXNlcjpwYXNz",  # user:pass
    }
    with httpx.Client(http1=False, http2=True, headers=headers) as client:
        for method, path in STREAMS:
            response = client.request(method, f"http://127.0.0.1:{port}{path}", content=b"")
            assert response.http_version == "HTTP/2"
        return contract_lines(master, before + len(STREAMS))[before:]


def contract_lines(master, count: int) -> list[str]:
    master.wait_log(r"h=\S+ u=", count=count)
    return re.findall(r"^h=.*$", master.log, flags=re.M)


def untimed(line: str) -> str:
    return re.sub(r" D=\d+", "", line)


def serves_h2(port: int) -> bool:
    try:
        return h2_get(port, "/")[0].get(":status") == "200"
    except OSError:
        return False
