"""Serving ASGI apps: HTTP/1.1 keep-alive, streaming, WebSockets, lifespan, every bind form."""

from __future__ import annotations

import http.client
import socket
import sys
import time

import pytest
from server import (
    APPS,
    GUNICORN,
    PROCESSES,
    PROCESSES_OF_THREADS,
    THREADS,
    free_port,
    make_certificate,
    request,
    tcp_sockets,
    trusting,
)
from websockets.sync.client import connect, unix_connect


def test_keep_alive_reuses_one_connection(gunicorn, topology):
    gunicorn.start(topology=topology)
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
    try:
        first = request(conn=conn)
        local = conn.sock.getsockname()
        answers = [request(conn=conn) for _ in range(20)]
        assert conn.sock.getsockname() == local  # the same TCP connection all along
    finally:
        conn.close()
    assert first.status == 200 and all(a.status == 200 for a in answers)
    assert len({a.json()["thread"] for a in answers}) == 1


def test_asgi2_app_is_served(gunicorn, topology):
    gunicorn.start(app="asgi2_app:app", topology=topology)
    resp = request(gunicorn.port, "/two")
    assert (resp.status, resp.body) == (200, b"asgi2 /two")


def test_streaming_response_arrives_in_chunks(gunicorn, topology):
    gunicorn.start(topology=topology)
    resp = request(gunicorn.port, "/stream?n=20&delay=0.005")
    assert resp.status == 200
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert resp.body == b"".join(b"chunk%d\n" % i for i in range(20))


def test_a_head_goes_out_before_a_late_body(gunicorn, topology):
    # gilworker joins a response's head to its body when the app sends both in one step; a
    # head whose body is not ready must still reach the client at once.
    gunicorn.start(topology=topology)
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
    try:
        conn.request("GET", "/head-first?s=3")
        started = time.monotonic()
        resp = conn.getresponse()  # returns once the head is read
        head_after = time.monotonic() - started
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and body == b"late body"
    assert head_after < 1.5  # the body follows 3 s later


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_gunicorns_asgi_loop_setting_picks_the_loop(gunicorn, topology, loop):
    # The loop's transport is the one the response's head and body are joined on: plain,
    # streamed and WebSocket answers on both.
    gunicorn.start("--asgi-loop", loop, topology=topology)
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
    try:
        answers = [request(conn=conn) for _ in range(3)]
        streamed = request(conn=conn, path="/stream?n=4&delay=0")
    finally:
        conn.close()
    assert {a.json()["loop_module"].split(".")[0] for a in answers} == {loop}
    assert streamed.body == b"".join(b"chunk%d\n" % i for i in range(4))
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10).startswith("echo:hi:")


def test_websocket_echo(gunicorn, topology):
    gunicorn.start(topology=topology)
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        for i in range(5):
            ws.send(f"hello{i}")
            reply = ws.recv(timeout=10)
            assert reply.startswith(f"echo:hello{i}:")
    expected = "gilworker-" if topology.loop_threads else "MainThread"
    assert reply.split(":")[2].startswith(expected)


def test_each_worker_has_its_own_lifespan_state_on_its_own_loop(gunicorn, topology):
    master = gunicorn.start(topology=topology, workers=3)
    answers = [request(gunicorn.port).json() for _ in range(30)]
    for a in answers:
        assert a["state_loop"] == a["loop"]  # the state made by this worker's own startup
        assert a["state_thread"] == a["thread"]
    if topology.in_master:
        # one process, one app, three lifespan runs on three loops in three threads
        assert {a["startups"] for a in answers} == {3}
        assert {a["pid"] for a in answers} == {master.pid}
    else:  # one lifespan run per loop thread of each process
        assert {a["startups"] for a in answers} == {topology.threads}
        assert master.pid not in {a["pid"] for a in answers}


def test_starlette_app_with_lifespan_state_streaming_and_websocket(gunicorn, topology):
    gunicorn.start(topology=topology, app="starlette_app:app")
    for _ in range(10):
        body = request(gunicorn.port).json()
        assert body["state_loop"] == body["loop"] and body["state_thread"] == body["thread"]
    assert request(gunicorn.port, "/stream").body == b"part0\npart1\npart2\n"
    with connect(f"ws://127.0.0.1:{gunicorn.port}/ws", open_timeout=10) as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "starlette:hi"


def test_nothing_process_wide_is_done_per_worker(gunicorn, topology):
    master = gunicorn.start("-e", "GILWORKER_TEST_FLAG=on", topology=topology)
    body = request(gunicorn.port).json()
    assert body["env_flag"] == "on"
    if topology.in_master:
        # the master's signal handlers stay in place: no worker thread replaced them
        assert body["sigterm_handler"] == "GilArbiter.signal"
        assert body["pid"] == master.pid
    else:  # the worker process's own, set once by the process (not by its loop threads)
        worker = "ProcessOfThreads" if topology.threads > 1 else "GilWorker"
        assert body["sigterm_handler"] == f"{worker}.handle_exit"


def test_ipv6_and_several_binds(gunicorn, topology):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    v4, v6 = free_port(), free_port()
    gunicorn.start(topology=topology, bind=[f"127.0.0.1:{v4}", f"[::1]:{v6}"])
    assert request(v4).status == 200
    assert request(v6, host="::1").status == 200


def test_unix_socket_bind(gunicorn, topology, tmp_path):
    path = str(tmp_path / "app.sock")
    gunicorn.start(topology=topology, bind=[f"unix:{path}"])
    for _ in range(5):
        assert request(unix=path).status == 200
    with unix_connect(path, "ws://localhost/ws", open_timeout=10) as ws:
        ws.send("u")
        assert ws.recv(timeout=10).startswith("echo:u:")


def listening_sockets(port: int) -> int:
    """Distinct listening TCP sockets on 127.0.0.1:`port` (dups of one socket count once)."""
    return sum(1 for state, _ in tcp_sockets(port).values() if state == "0A")  # 0A: LISTEN


def test_reuse_port(gunicorn, topology):
    gunicorn.start("--reuse-port", topology=topology, workers=2)
    assert all(request(gunicorn.port).status == 200 for _ in range(20))
    # each worker binds its own socket (a worker process of threads: one, for its threads)
    assert listening_sockets(gunicorn.port) == 2
    other = gunicorn.start(topology=topology, workers=2)
    assert request(gunicorn.port).status == 200 and other.proc.poll() is None
    assert listening_sockets(gunicorn.port) == 1  # without it: the master's one socket


SYSTEMD_LAUNCHER = """
import os, socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(128)
os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)  # fileno() may already be 3
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_systemd_socket_activation(gunicorn, topology, tmp_path):
    port = free_port()
    command = [sys.executable, "-c", SYSTEMD_LAUNCHER, str(port), GUNICORN]
    master = gunicorn.start(topology=topology, bind=[], command=command)
    assert request(port).status == 200
    assert f"Listening at: http://127.0.0.1:{port}" in master.log


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
def test_preload_decides_where_process_workers_import_the_app(gunicorn, preload):
    """Where workers are forked processes of one loop, `--preload` is what makes the master
    import the app before it forks; without it each worker process imports it itself."""
    master = gunicorn.start(*(["--preload"] if preload else []), topology=PROCESSES)
    bodies = [request(gunicorn.port).json() for _ in range(10)]
    assert master.pid not in {b["pid"] for b in bodies}
    for body in bodies:
        assert body["imported_in"] == (master.pid if preload else body["pid"])


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "no-preload"])
@pytest.mark.parametrize("topology", [THREADS, PROCESSES_OF_THREADS], ids=str)
def test_where_threads_apply_the_master_imports_the_app_with_or_without_preload(
    gunicorn, topology, preload
):
    """Thread workers need the app imported before the topology is chosen (the import may turn
    a free-threaded build's GIL on), so the master always imports it: `--preload` is accepted
    and changes nothing. A worker process of threads is forked with it, and imports nothing."""
    master = gunicorn.start(*(["--preload"] if preload else []), topology=topology)
    bodies = [request(gunicorn.port).json() for _ in range(10)]
    assert {b["imported_in"] for b in bodies} == {master.pid}
    assert ({b["pid"] for b in bodies} == {master.pid}) is topology.in_master


def test_thread_workers_share_one_import_of_the_app(gunicorn):
    master = gunicorn.start(mode="thread", workers=4)
    bodies = [request(gunicorn.port).json() for _ in range(20)]
    assert {b["imported_in"] for b in bodies} == {master.pid}
    assert {b["startups"] for b in bodies} == {4}


def test_a_custom_base_application_runs_gilworker(gunicorn, topology, tmp_path):
    port = free_port()
    ctl = str(tmp_path / "custom.sock")
    command = [
        sys.executable,
        str(APPS / "custom_app.py"),
        f"127.0.0.1:{port}",
        topology.gil_mode,
        str(topology.threads),
        ctl,
    ]
    master = gunicorn.run(command, loops_per_worker=topology.threads)
    body = request(port).json()
    assert (body["pid"] == master.pid) is topology.in_master
    assert "Using worker: gilworker" in master.log


def test_python_dash_m_gunicorn(gunicorn, topology):
    master = gunicorn.start(topology=topology, command=[sys.executable, "-m", "gunicorn"])
    assert request(gunicorn.port).status == 200
    assert "Using worker: gilworker" in master.log


def test_pythonpath_and_chdir_behave_as_in_process_mode(gunicorn, topology, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "elsewhere_app.py").write_text("from plain_app import app  # noqa: F401\n")
    env = gunicorn.env()
    env["PYTHONPATH"] = ""  # only --pythonpath and --chdir may find the modules
    gunicorn.start(
        "--pythonpath",
        str(lib),
        "--chdir",
        str(APPS),
        app="elsewhere_app:app",
        topology=topology,
        env=env,
    )
    assert request(gunicorn.port).status == 200


def test_tls_with_gunicorns_ssl_settings(gunicorn, topology, tmp_path):
    key, cert = make_certificate(tmp_path)
    gunicorn.start("--keyfile", str(key), "--certfile", str(cert), topology=topology)
    context = trusting(cert)
    conn = http.client.HTTPSConnection("127.0.0.1", gunicorn.port, timeout=10, context=context)
    try:
        response = request(conn=conn)
        assert response.status == 200
        assert conn.sock.version() is not None  # the answer came over TLS
    finally:
        conn.close()
