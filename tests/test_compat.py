"""Every gunicorn setting is classified (compat.py), docs/settings.md shows that table (the README
sums it up and links to it), and the settings the table calls honoured or refused behave so on a
real master."""

from __future__ import annotations

import re
import signal
import socket
import ssl
from pathlib import Path

from gunicorn.config import Config
from server import THREADS, make_certificate, refusal, request, trusting, wait_for

from gunicorn_gilworker.compat import SETTINGS, markdown_table

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
SETTINGS_PAGE = ROOT / "docs" / "settings.md"


def test_every_setting_of_the_installed_gunicorn_is_classified():
    import gunicorn_gilworker.settings  # noqa: F401  (gilworker's own are settings too)

    installed = set(Config().settings)
    assert sorted(installed - set(SETTINGS)) == [], "classify these in gunicorn_gilworker/compat.py"
    assert sorted(set(SETTINGS) - installed) == [], "no longer gunicorn settings"


def test_the_settings_page_shows_the_table_and_both_pages_give_its_counts():
    assert markdown_table() in SETTINGS_PAGE.read_text(), (
        "docs/settings.md's table differs: paste `python -m gunicorn_gilworker.compat` into it"
    )
    counts = {kind: sum(k == kind for k, _ in SETTINGS.values()) for kind in ("honoured", "mapped")}
    for page in (README, SETTINGS_PAGE):
        summary = re.search(
            r"(\d+) honoured .*?(\d+) mapped .*?(\d+) not applicable", page.read_text(), re.S
        )
        assert summary, f"{page.name} gives no counts"
        assert (int(summary[1]), int(summary[2])) == (counts["honoured"], counts["mapped"]), page
        assert int(summary[3]) == len(SETTINGS) - sum(counts.values()), page
    assert "(docs/settings.md)" in README.read_text(), "the README links to the table"


def test_uwsgi_protocol_is_refused_in_one_line(gunicorn):
    assert refusal(gunicorn, "--protocol", "uwsgi") == [
        "Error: --protocol uwsgi is not served by gilworker (uvicorn speaks HTTP): point the "
        "front end at it over HTTP (nginx: proxy_pass, not uwsgi_pass)"
    ]


def test_tls_comes_from_gunicorns_context_and_its_hook_and_alpn_follows_http_protocols(
    gunicorn, topology, tmp_path
):
    key, cert = make_certificate(tmp_path)
    conf = tmp_path / "tls_conf.py"
    conf.write_text(
        "import ssl\n"
        "def ssl_context(conf, default_ssl_context_factory):\n"
        "    context = default_ssl_context_factory()\n"
        "    context.minimum_version = ssl.TLSVersion.TLSv1_3\n"
        "    return context\n"
    )
    tls = ["-c", str(conf), "--keyfile", str(key), "--certfile", str(cert)]
    master = gunicorn.start(*tls, "--http-protocols", "h2,h1", topology=topology, workers=1)
    assert "; serving HTTP/1.1 and HTTP/2 (ALPN: h2, http/1.1)" in master.log

    def handshake(
        maximum: ssl.TLSVersion, offered: tuple[str, ...] = ("h2", "http/1.1")
    ) -> tuple[str | None, str | None]:
        context = trusting(cert, list(offered))
        context.maximum_version = maximum
        raw = socket.create_connection(("127.0.0.1", gunicorn.port), timeout=10)
        with raw, context.wrap_socket(raw) as tls:
            return tls.version(), tls.selected_alpn_protocol()

    assert handshake(ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "h2")
    assert handshake(ssl.TLSVersion.TLSv1_3, ("http/1.1",)) == ("TLSv1.3", "http/1.1")
    try:  # the hook's minimum: a TLS 1.2 client is refused
        handshake(ssl.TLSVersion.TLSv1_2)
        raise AssertionError("a TLS 1.2 handshake succeeded despite the ssl_context hook")
    except (ssl.SSLError, ConnectionResetError):
        pass
    # the server's order: h1 first is chosen over h2 where the client offers both
    master.signal(signal.SIGTERM)
    master.wait()
    master = gunicorn.start(*tls, "--http-protocols", "h1,h2", topology=topology, workers=1)
    assert "(ALPN: http/1.1, h2)" in master.log
    assert handshake(ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "http/1.1")
    assert handshake(ssl.TLSVersion.TLSv1_3, ("h2",)) == ("TLSv1.3", "h2")


DIRTY_APP = """
import os
from gunicorn.dirty import DirtyApp, get_dirty_client_async

class Doubler(DirtyApp):
    def double(self, x):
        return {"value": 2 * x, "pid": os.getpid()}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    client = await get_dirty_client_async()
    result = await client.execute_async("dirty_app:Doubler", "double", 21)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": repr(result).encode()})
"""


def test_gunicorns_dirty_arbiter_serves_gilworker_workers(gunicorn, topology, tmp_path):
    (tmp_path / "dirty_app.py").write_text(DIRTY_APP)
    env = gunicorn.env(PYTHONPATH=str(tmp_path))
    master = gunicorn.start(
        "--dirty-app",
        "dirty_app:Doubler",
        "--dirty-workers",
        "1",
        "--asgi-lifespan",
        "off",
        "--graceful-timeout",
        "2",
        app="dirty_app:app",
        env=env,
        topology=topology,
        ready=r"Booting worker",
    )
    wait_for(lambda: "Spawned dirty arbiter" in master.log, 20, "the dirty arbiter")
    answers = {wait_for(lambda: _dirty_answer(gunicorn.port), 20, "an answer") for _ in range(4)}
    assert len(answers) == 1 and "'value': 42" in answers.pop()


def _dirty_answer(port: int) -> str | None:
    try:
        response = request(port, timeout=5)
    except OSError:
        return None
    return response.body.decode() if response.status == 200 else None


def test_the_start_up_line_names_the_protocols_served(gunicorn):
    master = gunicorn.start("--http2-cleartext", "prior-knowledge", topology=THREADS, workers=1)
    assert "; serving HTTP/1.1\n" in master.log  # no h2 in --http-protocols: no h2c either
    master = gunicorn.start(
        "--http-protocols", "h2,h1", "--http2-cleartext", "both", topology=THREADS, workers=1
    )
    assert "; serving HTTP/1.1 and HTTP/2 (h2c: both, from forwarded_allow_ips)" in master.log
