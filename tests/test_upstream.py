"""Each entry of gunicorn_gilworker/upstream.py against the installed gunicorn, uvicorn, CPython.

Each test reads the private name an entry relies on, on the real upstream object, so a release
that moves or renames it fails here, named after the entry (CI's lowest and newest legs run it),
instead of as a feature that silently stops working.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import os
import socket
import sys
import threading

import pytest
from gunicorn.arbiter import Arbiter
from gunicorn.asgi.parser import PythonProtocol
from gunicorn.config import Config
from gunicorn.workers.workertmp import WorkerTmp
from server import in_process_arbiter
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.config import Config as UvicornConfig
from uvicorn.importer import import_from_string
from uvicorn.server import Server, ServerState

from gunicorn_gilworker import upstream


def test_arbiter_stats_is_gunicorns_counter_dict(tmp_path):
    arbiter = in_process_arbiter(tmp_path)
    stats = upstream.arbiter_stats(arbiter)
    assert {"workers_spawned", "workers_killed", "reloads"} <= set(stats)
    assert stats is arbiter._stats


def test_start_control_server_is_where_gunicorn_keeps_its_server():
    source = inspect.getsource(Arbiter._start_control_server)
    assert "self._control_server" in source
    from gunicorn.ctl.server import ControlSocketServer

    assert "handlers" in inspect.getsource(ControlSocketServer.__init__)


def source_of(function) -> str:
    """Its source with every run of white space made one space."""
    return " ".join(inspect.getsource(function).split())


def test_make_worker_follows_spawn_worker():
    # upstream.make_worker repeats spawn_worker's first statements: the same arguments, in order
    source = source_of(Arbiter.spawn_worker)
    assert (
        "self.worker_age += 1 worker = self.worker_class(self.worker_age, self.pid, "
        "self.LISTENERS, self.app, self.timeout / 2.0, self.cfg, self.log) "
        "self.cfg.pre_fork(self, worker)" in source
    )


def test_worker_reaped_is_what_reap_workers_does_last():
    assert "worker.tmp.close() self.cfg.child_exit(self, worker)" in source_of(Arbiter.reap_workers)


def test_code_reloader_is_made_as_a_worker_makes_it():
    from gunicorn.workers.base import Worker

    source = source_of(Worker.init_process)
    assert "reloader_engines[self.cfg.reload_engine]" in source
    assert "(extra_files=self.cfg.reload_extra_files, callback=changed)" in source


def test_set_heartbeat_is_what_notify_writes(tmp_path):
    tmp = WorkerTmp(Config())
    try:
        tmp.notify()
        assert abs(tmp.last_update() - os.fstat(tmp.fileno()).st_mtime) < 1e-3
        upstream.set_heartbeat(tmp, 1234.5)
        assert tmp.last_update() == pytest.approx(1234.5)
    finally:
        tmp.close()


def test_proxy_allow_networks_parses_proxy_allow_from():
    cfg = Config()
    cfg.set("proxy_allow_ips", "10.0.0.0/8")
    networks = upstream.proxy_allow_networks(cfg)
    assert [str(n) for n in networks] == ["10.0.0.0/8"]


def test_proxy_header_reader_leaves_the_http_bytes():
    reader = upstream.ProxyHeaderReader("v1")
    assert reader.feed(b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\nGET / HTTP/1.1\r\n")
    assert reader.info["client_addr"] == "192.0.2.1" and reader.info["client_port"] == 1234
    assert reader.rest() == b"GET / HTTP/1.1\r\n"
    assert isinstance(reader.parser, PythonProtocol)


def test_a_servers_listeners_and_its_protocol_factory():
    async def app(scope, receive, send):
        pass

    async def main():
        config = UvicornConfig(app, lifespan="off", log_config=None)
        config.load()
        server = Server(config)
        server.lifespan = config.lifespan_class(config)  # as uvicorn's serve() makes it
        assert upstream.listening_servers(server) == []
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        await server.startup(sockets=[listener])
        try:
            servers = upstream.listening_servers(server)
            assert len(servers) == 1 and servers[0].sockets
            protocol = upstream.protocol_factory(server)()
            assert isinstance(protocol, config.http_protocol_class)
            assert upstream.server_state(server) is server.server_state
        finally:
            server.should_exit = True
            await server.shutdown(sockets=[listener])

    asyncio.run(main())


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_a_protocols_attributes(http):
    pytest.importorskip(http)
    protocol_class = import_from_string(HTTP_PROTOCOLS[http])

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        config = UvicornConfig(app, lifespan="off", log_config=None)
        config.load()
        state = ServerState()
        protocol = protocol_class(config=config, server_state=state, app_state={})
        transport = FakeTransport()
        protocol.connection_made(transport)
        assert upstream.protocol_loop(protocol) is asyncio.get_running_loop()
        assert upstream.protocol_transport(protocol) is transport
        assert upstream.open_connections(protocol) == 1 == len(upstream.connections(state))
        assert upstream.protocol_client(protocol) == ("127.0.0.1", 5555)
        upstream.set_protocol_client(protocol, ("192.0.2.9", 1))
        assert upstream.protocol_app(protocol) is config.loaded_app
        assert upstream.http_cycle(protocol) is None
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        cycle = upstream.http_cycle(protocol)
        assert cycle is not None and upstream.current_cycle(protocol) is cycle
        assert cycle.scope["client"] == ("192.0.2.9", 1)
        assert not upstream.response_started(cycle)
        assert upstream.cycle_disconnected(cycle.send) is False
        assert upstream.cycle_disconnected(lambda message: None) is False  # not uvicorn's
        upstream.last_response(cycle, lambda send: send)
        assert cycle.keep_alive is False
        for _ in range(20):
            await asyncio.sleep(0)
        assert upstream.response_complete(cycle)
        # what an HTTP/2 connection takes over from it
        served, client, server, scheme, root_path, app_state = upstream.protocol_connection(
            protocol
        )
        assert served is state and client == ("192.0.2.9", 1) and server == ("127.0.0.1", 80)
        assert (scheme, root_path, app_state) == ("http", "", {})

    asyncio.run(main())


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_an_abandoned_cycle_answers_nothing_and_its_upgrade_warning_can_be_quiet(http, caplog):
    pytest.importorskip(http)
    protocol_class = import_from_string(HTTP_PROTOCOLS[http])
    quiet = type("Quiet", (protocol_class,), {})
    upstream.quiet_upgrade_warning(quiet, lambda protocol: True)

    async def app(scope, receive, send):
        upstream.abandon_cycle(protocol)  # the connection switched protocol under it

    async def main():
        nonlocal protocol
        config = UvicornConfig(app, lifespan="off", log_config=None)
        config.load()
        protocol = quiet(config=config, server_state=ServerState(), app_state={})
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        )
        for _ in range(20):
            await asyncio.sleep(0)
        return transport.written

    protocol = None
    with caplog.at_level("WARNING", logger="uvicorn.error"):
        assert asyncio.run(main()) == []  # no 500 for the app that did not answer
    assert "Unsupported upgrade request." not in caplog.text


def test_held_body_counts_the_payloads_an_http2_stream_holds():
    from gunicorn.http2.stream import HTTP2Stream

    class Connection:  # what a stream reads of its connection
        initial_window_size = 65535

        def acknowledge_data(self, stream_id, size):
            pass

    stream = HTTP2Stream(1, connection=Connection())
    stream.receive_headers([(":method", "POST"), (":path", "/")], end_stream=False)
    stream.receive_data(b"ab", end_stream=False)
    stream.receive_data(b"cd", end_stream=True)
    assert upstream.held_body(stream) == 2 and stream.body_complete
    stream.pop_chunk()
    assert upstream.held_body(stream) == 1


class FakeTransport:
    """Enough of an asyncio transport for a uvicorn protocol to be made and answer once."""

    def __init__(self):
        self.written = []

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def write(self, data):
        self.written.append(data)

    def is_closing(self):
        return False

    def close(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def set_protocol(self, protocol):
        pass


def test_cycle_disconnected_reads_what_uvicorns_send_drops_on():
    from uvicorn.protocols.http.h11_impl import RequestResponseCycle

    assert "if self.disconnected:" in source_of(RequestResponseCycle.send)

    class Cycle:
        disconnected = True

        async def send(self, message):
            pass

    assert upstream.cycle_disconnected(Cycle().send) is True


def test_basic_auth_user_is_the_u_atom():
    from gunicorn.glogging import Logger

    log = Logger(Config())
    assert upstream.basic_auth_user(log, "Basic dXNlcjpwYXNz") == "user"  # user:pass
    assert upstream.basic_auth_user(log, "Bearer x") is None


def test_formatter_format_is_what_the_formatter_formats_with():
    import logging

    assert upstream.formatter_format(logging.Formatter("%(message)s")) == "%(message)s"
    assert upstream.formatter_format(None) is None


def test_statsd_socket_is_what_statsd_sends_with():
    from gunicorn.instrument.statsd import Statsd

    cfg = Config()
    cfg.set("statsd_host", "127.0.0.1:9")
    cfg.set("statsd_prefix", "app")
    cfg.set("dogstatsd_tags", "env:x")
    log = Statsd(cfg)
    sock, prefix, tags = upstream.statsd_socket(log)
    assert sock is log.sock and prefix == "app." and tags == "env:x"
    assert "self.sock.send(msg)" in source_of(Statsd._sock_send)
    sock.close()


def test_handle_callback_name():
    loop = asyncio.new_event_loop()
    try:

        def named_callback():
            pass

        handle = loop.call_soon(named_callback)
        assert upstream.handle_callback_name(handle) == "named_callback"
        handle.cancel()
    finally:
        loop.close()


def test_raise_in_thread():
    started, caught = threading.Event(), []

    def spin():
        started.set()
        try:
            for _ in range(10_000_000):
                pass
        except KeyboardInterrupt:
            caught.append(True)

    thread = threading.Thread(target=spin)
    thread.start()
    started.wait(5)
    assert upstream.raise_in_thread(thread.ident, KeyboardInterrupt)
    thread.join(10)
    assert caught == [True]
    assert hasattr(ctypes.pythonapi, "PyThreadState_SetAsyncExc")


def test_gil_state():
    assert isinstance(upstream.gil_enabled(), bool)
    if sys.version_info >= (3, 13):
        assert upstream.gil_enabled() == sys._is_gil_enabled()
    assert upstream.gil_xoption() == sys._xoptions.get("gil")


def test_reaped_statuses_records_what_reap_workers_reaps():
    # gunicorn's reap is a waitpid(-1) loop: what it returns is what gilworker records
    assert "os.waitpid(-1, os.WNOHANG)" in inspect.getsource(Arbiter.reap_workers)
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    import gunicorn.arbiter

    with upstream.reaped_statuses() as reaped:
        gunicorn.arbiter.os.waitpid(pid, 0)
    assert [(p, os.waitstatus_to_exitcode(s)) for p, s in reaped] == [(pid, 3)]
    assert gunicorn.arbiter.os is os  # put back


def test_registered_collectors_lists_a_registrys_collectors():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    counter = Counter("probe", "a probe", registry=registry)
    assert upstream.registered_collectors(registry) == [counter]


def test_multiprocess_mode_and_mmap_files_are_what_the_collector_reads(tmp_path):
    from prometheus_client.multiprocess import MultiProcessCollector

    mmaped_dict, mmap_key = upstream.mmap_files()
    for name in ("gauge_max_7.db", "counter_7.db"):
        values = mmaped_dict(str(tmp_path / name))
        values.write_value(mmap_key("probe_" + name[:5], "probe_" + name[:5], [], [], "h"), 2.0, 0)
        values.close()
    merged = {m.name: m for m in MultiProcessCollector.merge(list(map(str, tmp_path.iterdir())))}
    assert upstream.multiprocess_mode(merged["probe_gauge"]) == "max"
    assert upstream.multiprocess_mode(merged["probe_count"]) == ""
    assert merged["probe_count"].samples[0].value == 2.0
