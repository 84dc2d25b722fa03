"""--metrics-bind: Prometheus metrics, /livez and /readyz from the master, in every topology,
read with prometheus_client's own parsers; --shutdown-delay; bad addresses refused."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from server import (
    FREE_THREADED,
    GUNICORN,
    Load,
    UnixHTTPConnection,
    background_request,
    free_port,
    refusal,
    request,
    wait_for,
)

DIRECTORY_LINE = r"prometheus_client's multiprocess directory: (\S+)"


def get(port: int | str, path: str, accept: str = "") -> tuple[int, str, str]:
    """(status, content type, body) of GET `path` on the metrics address (a port or a path)."""
    if isinstance(port, str):
        conn: http.client.HTTPConnection = UnixHTTPConnection(port, timeout=10)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def scrape(port: int | str) -> dict[str, dict[tuple, float]]:
    """Every sample of /metrics: sample name -> {sorted labels: value}."""
    status, _, text = get(port, "/metrics")
    assert status == 200, text
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def total(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if wanted <= set(k))


def start(gunicorn, topology, *args: str, workers: int = 2, **kwargs):
    port = free_port()
    master = gunicorn.start(
        "--metrics-bind", f"127.0.0.1:{port}", *args, topology=topology, workers=workers, **kwargs
    )
    return master, port


MIX = [("GET", 200, 150), ("GET", 404, 75), ("POST", 500, 45), ("PUT", 200, 20), ("PURGE", 200, 10)]


def test_requests_are_counted_by_method_and_status(gunicorn, topology):
    _, port = start(gunicorn, topology)
    loops = 2 * topology.threads
    wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "ready")
    for method, code, count in MIX:
        conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
        for _ in range(count):
            conn.request(method, f"/status?code={code}")
            assert conn.getresponse().read() == b""
        conn.close()

    def counted() -> dict | None:
        samples = scrape(port)
        # a worker process publishes its files one after another: a scrape between two of
        # them reads the counter before the histogram, so wait for both
        done = total(samples, "gilworker_request_duration_seconds_count") == 300
        done = done and total(samples, "gilworker_requests_total") == 300
        # a loop's lag is measured from its second tick of 0.1 s on
        done = done and total(samples, "gilworker_event_loop_lag_seconds_count") > 0
        return samples if done else None

    samples = wait_for(counted, 10, "300 requests counted")
    for method, code, count in MIX:
        method = "OTHER" if method == "PURGE" else method
        got = total(samples, "gilworker_requests_total", method=method, status=str(code))
        assert got == count, (method, code, samples["gilworker_requests_total"])
    assert total(samples, "gilworker_requests_total") == 300
    assert total(samples, "gilworker_request_duration_seconds_bucket", le="+Inf") == 300
    assert total(samples, "gilworker_requests_in_flight") == 0
    assert total(samples, "gilworker_event_loops_serving") == loops
    assert total(samples, "gilworker_event_loops") == loops
    kind = "thread" if topology.in_master else "process"
    assert total(samples, "gilworker_workers", kind=kind) == 2
    assert total(samples, "gilworker_gil_enabled") in (0, 1)
    (build,) = samples["gilworker_build_info"]
    assert dict(build)["free_threaded"] in ("true", "false")
    if not topology.in_master:  # each worker process by its slot, read from /proc
        memory = samples["gilworker_worker_resident_memory_bytes"]
        assert sorted(dict(k)["slot"] for k in memory) == ["0", "1"]
        assert all(v > 1_000_000 for v in memory.values())
        assert len(samples["gilworker_worker_cpu_seconds_total"]) == 2
    # OpenMetrics when the scraper asks for it (Prometheus does)
    status, content_type, text = get(port, "/metrics", accept="application/openmetrics-text")
    assert status == 200 and content_type.startswith("application/openmetrics-text"), content_type
    families = {f.name: f for f in om_parse(text)}
    assert sum(s.value for s in families["gilworker_requests"].samples) == 300
    assert get(port, "/livez")[0] == 200
    assert get(port, "/nothing")[0] == 404


def test_scrapes_never_fail_and_counters_never_go_back_through_hup_and_recycling(
    gunicorn, topology
):
    master, port = start(gunicorn, topology, "--max-requests", "100")
    seen: list[float] = []
    failures: list[str] = []
    running = True

    def scraper() -> None:
        while running and len(seen) < 2000:
            try:
                seen.append(total(scrape(port), "gilworker_requests_total"))
            except Exception as exc:  # a failed scrape is what this test is about
                failures.append(repr(exc))
            time.sleep(0.02)

    def exits(cause: str) -> float:
        return total(scrape(port), "gilworker_worker_exits_total", cause=cause)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    load = Load(gunicorn.port, "/status?code=200", clients=4, keep_alive=True)
    try:
        wait_for(lambda: load.answered > 300, 30, "requests before the HUP")
        # right after a replacement boots: a worker far from its --max-requests gets the HUP
        # (one at its limit as the HUP lands ends as recycled, and may be the only old one)
        booted = master.log_count(r"Booting worker")
        wait_for(lambda: master.log_count(r"Booting worker") > booted, 30, "a worker replaced")
        master.signal(signal.SIGHUP)
        master.wait_log(r"Handling signal: hup")
        wait_for(
            lambda: load.answered > 900 and len(seen) > 20 and exits("max_requests") >= 2,
            60,
            "requests, scrapes and recycles through the HUP",
        )
    finally:
        load.stop()
    # the HUP's old workers are counted once they have drained and ended
    wait_for(lambda: exits("hup") >= 1, 30, "the HUP's old workers counted")
    answered = load.answered
    wait_for(lambda: total(scrape(port), "gilworker_requests_total") >= answered, 10, "counted")
    running = False
    thread.join(30)
    assert not failures, failures[:3]
    assert len(seen) > 10
    assert all(b >= a for a, b in itertools.pairwise(seen)), "a counter went back"
    final = scrape(port)
    assert answered <= total(final, "gilworker_requests_total") <= load.sent
    # the HUP's (an old worker at its --max-requests as the HUP lands counts as recycled)
    assert total(final, "gilworker_worker_exits_total", cause="hup") >= 1, final
    assert total(final, "gilworker_worker_exits_total", cause="max_requests") >= 2, final


def test_the_apps_own_counter_is_exact_across_recycles_and_the_directory_stays_bounded(
    gunicorn, topology
):
    master, port = start(
        gunicorn, topology, "--max-requests", "20", app="metrics_app:app", workers=3
    )
    directory = re.search(DIRECTORY_LINE, master.log)
    files: list[int] = []
    for i in range(600):
        assert request(gunicorn.port, "/status?code=200").status == 200
        if directory and i % 100 == 99:
            files.append(len(os.listdir(directory.group(1))))

    def counted() -> dict | None:
        samples = scrape(port)
        seen[:] = [
            total(samples, "probe_requests_total"),
            total(samples, "gilworker_requests_total"),
            total(samples, "gilworker_worker_exits_total", cause="max_requests"),
        ]
        return samples if seen[0] >= 600 and seen[1] >= 600 and seen[2] >= 12 else None

    seen: list[float] = []
    try:
        samples = wait_for(counted, 10, "600 requests and a dozen recycles counted")
    except TimeoutError as exc:
        exits = scrape(port).get("gilworker_worker_exits_total")
        raise AssertionError(f"{exc}: app, gilworker, recycles: {seen}; {exits}") from None
    assert total(samples, "probe_requests_total", path="/status") == 600
    assert total(samples, "gilworker_requests_total") == 600
    assert total(samples, "gilworker_worker_exits_total", cause="max_requests") >= 12
    if topology.in_master:  # one process: the app's metrics are in the default registry
        assert directory is None
        return
    assert directory, master.log
    # per live process: the app's counter file and gilworker's three; the master's three and
    # one retired file per type, however many processes have been recycled
    assert max(files) <= 3 * 4 + 3 + 3, files


def test_readiness_fails_at_sigterm_while_the_shutdown_delay_keeps_serving(gunicorn, topology):
    master, port = start(gunicorn, topology, "--shutdown-delay", "2")
    wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "ready")
    assert get(port, "/livez") == (200, "text/plain; charset=utf-8", "ok\n")
    master.signal(signal.SIGTERM)
    _, _, why = wait_for(
        lambda: (answer := get(port, "/readyz"))[0] == 503 and answer, 5, "not ready"
    )
    assert why == "stopping (SIGTERM)\n"
    master.wait_log(r"SIGTERM: not ready from now on; serving for 2.0s more")
    # the workers keep serving during the delay: requests answered, the master still up
    answered = 0
    for _ in range(20):
        assert request(gunicorn.port, "/status?code=200").status == 200
        answered += 1
        assert master.proc.poll() is None
    # a request in flight as the graceful stop begins completes
    client, results = background_request(gunicorn.port, "/sleep?s=1.5", timeout=20)
    master.wait_log(r"sleep request started")
    assert master.wait(30) == 0
    client.join(20)
    assert results and results[0].status == 200, results
    assert answered == 20


def test_a_stall_is_counted(gunicorn, topology):
    master, port = start(gunicorn, topology, "--stall-warning", "0.5", workers=1)
    client, _ = background_request(gunicorn.port, "/csleep?s=1.5", timeout=20)
    master.wait_log(r"its event loop turned again")
    client.join(20)
    wait_for(lambda: total(scrape(port), "gilworker_loop_stalls_total") == 1, 10, "one stall")


def test_a_unix_socket_address(gunicorn, tmp_path):
    path = str(tmp_path / "metrics.sock")
    gunicorn.start("--metrics-bind", f"unix:{path}", workers=1)
    assert get(path, "/livez")[0] == 200
    wait_for(lambda: get(path, "/readyz")[0] == 200, 10, "ready")
    assert total(scrape(path), "gilworker_event_loops") == 1


@pytest.mark.parametrize(
    "value, error",
    [
        ("127.0.0.1:notaport", "'notaport' is not a valid port number"),
        ("127.0.0.1:99999", "port 99999 is out of range"),
        ("fd://3", "takes host:port or unix:path, not fd://"),
    ],
)
def test_bad_addresses_are_refused_in_one_line(gunicorn, value, error):
    (line,) = refusal(gunicorn, "--metrics-bind", value)
    assert error in line, line


def run(gunicorn, *argv: str) -> subprocess.CompletedProcess:
    """`ARGV -k gilworker plain_app:app`, which must refuse to start."""
    return subprocess.run(
        [*argv, "-k", "gilworker", "plain_app:app"],
        env=gunicorn.env(),
        cwd=gunicorn.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_busy_port_or_the_apps_own_port_is_refused_in_one_line(gunicorn, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    app_port = free_port()
    try:
        for address, error in [
            (f"127.0.0.1:{port}", "Address already in use"),
            (f"127.0.0.1:{app_port}", "is one of the app's --bind addresses"),
        ]:
            done = run(gunicorn, GUNICORN, "-b", f"127.0.0.1:{app_port}", "--metrics-bind", address)
            assert done.returncode == 1, done.stderr
            errors = [line for line in done.stderr.splitlines() if "[ERROR]" in line]
            assert len(errors) == 1 and error in errors[0], done.stderr
            assert "Traceback" not in done.stderr and "Booting worker" not in done.stderr
    finally:
        busy.close()


def test_without_prometheus_client_the_extra_is_named(gunicorn, tmp_path):
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; "  # find_spec then finds nothing
        "from gunicorn.app.wsgiapp import run; sys.argv[0] = 'gunicorn'; run()"
    )
    done = run(gunicorn, sys.executable, "-c", hide, "--metrics-bind", "127.0.0.1:9")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: --metrics-bind needs prometheus_client: pip install 'gunicorn-gilworker[metrics]'"
    ], done.stderr


@pytest.mark.parametrize("given_by", ["environment", "--env"])
def test_the_directory_is_the_users_when_set_and_is_wiped_at_start(
    gunicorn, topology, tmp_path, given_by
):
    if topology.in_master:
        pytest.skip("threads of one process: prometheus_client's default registry")
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_99999.db").write_bytes(b"stale")  # a file of an earlier run
    if given_by == "environment":
        env, args = gunicorn.env(PROMETHEUS_MULTIPROC_DIR=str(directory)), ()
    else:  # gunicorn's own --env, which gunicorn applies after the master's set-up
        env, args = None, ("-e", f"PROMETHEUS_MULTIPROC_DIR={directory}")
    master, port = start(gunicorn, topology, *args, app="metrics_app:app", env=env)
    assert re.search(DIRECTORY_LINE, master.log).group(1) == str(directory)
    assert not (directory / "counter_99999.db").exists()
    for _ in range(10):
        assert request(gunicorn.port, "/").status == 200
    wait_for(lambda: total(scrape(port), "probe_requests_total") == 10, 10, "counted")
    master.signal(signal.SIGTERM)
    assert master.wait(30) == 0
    assert directory.is_dir()  # the user's: kept


def test_a_crash_is_counted_with_its_signal(gunicorn, topology):
    master, port = start(gunicorn, topology, workers=1)
    # a worker thread of the master crashes by an exception; a process by a real SIGSEGV
    path, sig = ("/crash", "") if topology.in_master else ("/segfault", "SIGSEGV")
    with contextlib.suppress(OSError, http.client.HTTPException):  # a segfault answers nothing
        request(gunicorn.port, path)
    master.wait_log(r"Worker (?:thread|process) \d+ serving", count=2 * topology.threads)

    def counted() -> dict | None:
        samples = scrape(port)
        return samples if total(samples, "gilworker_worker_exits_total") else None

    samples = wait_for(counted, 10, "the exit counted")
    assert total(samples, "gilworker_worker_exits_total", cause="crash", signal=sig) == 1


def test_a_dead_processs_files_are_folded_by_type_and_gauge_mode(tmp_path):
    """Directory.retire on files as prometheus_client writes them for two processes: counters,
    histograms and sum/max/min gauges keep the dead one's values; live and `all` gauges drop."""
    from prometheus_client.multiprocess import MultiProcessCollector

    from gunicorn_gilworker.operations.metric_files import Directory
    from gunicorn_gilworker.upstream import mmap_files

    mmaped_dict, mmap_key = mmap_files()
    files = {
        "counter": ("c", "c_total", {}, 1.0),
        "histogram": ("h", "h_bucket", {"le": "1.0"}, 1.0),
        "gauge_sum": ("gs", "gs", {}, 1.0),
        "gauge_max": ("gm", "gm", {}, 1.0),
        "gauge_livesum": ("gl", "gl", {}, 1.0),
        "gauge_all": ("ga", "ga", {}, 1.0),
    }
    for pid, scale in ((100, 1), (200, 5)):
        for kind, (metric, sample, labels, value) in files.items():
            values = mmaped_dict(str(tmp_path / f"{kind}_{pid}.db"))
            key = mmap_key(metric, sample, list(labels), list(labels.values()), "doc")
            values.write_value(key, value * scale, 0.0)
            values.close()

    def read() -> dict[str, float]:
        merged = MultiProcessCollector.merge([str(p) for p in tmp_path.glob("*.db")])
        return {s.name: s.value for m in merged for s in m.samples if "le" not in s.labels}

    before = read()
    directory = Directory(str(tmp_path), private=False)
    directory.retire(200)
    after = read()
    directory.close()
    assert not list(tmp_path.glob("*_200.db"))
    for name in ("c_total", "h_count", "h_sum", "gs", "gm"):
        assert after.get(name, 0) == before.get(name, 0), (name, before, after)
    assert after["gl"] == 1.0 and before["gl"] == 6.0  # the live gauge leaves with its process
    assert len(list(tmp_path.iterdir())) == len(files) + 4  # pid 100's, and 4 retired files


@pytest.mark.parametrize("preload", [False, True])
def test_a_hup_imports_an_instrumented_app_again(gunicorn, topology, preload):
    """Module-level prometheus_client metrics registered again by the HUP's import of the app
    (threads of the master import it in the master) must not stop the new workers."""
    args = ["--preload"] if preload else []
    master, port = start(gunicorn, topology, *args, app="metrics_app:app")
    for _ in range(5):
        assert request(gunicorn.port, "/").status == 200
    master.signal(signal.SIGHUP)
    loops = 2 * topology.threads
    master.wait_log(r"Worker (?:thread|process) \d+ serving", count=2 * loops)
    for _ in range(5):
        assert request(gunicorn.port, "/").status == 200
    assert "Duplicated timeseries" not in master.log
    wait_for(lambda: total(scrape(port), "gilworker_requests_total") == 10, 10, "10 counted")
    assert total(scrape(port), "probe_requests_total") >= 5  # the app's, anew in one process


@pytest.mark.skipif(not FREE_THREADED, reason="the fallback of a free-threaded build")
def test_a_free_threaded_build_falling_back_to_processes_still_serves_its_metrics(gunicorn):
    env = gunicorn.env(PYTHON_GIL="1")  # as an extension that needs the GIL would
    master, port = start(gunicorn, None, app="metrics_app:app", env=env)
    assert "falling back to processes" in master.log
    assert "prometheus_client was imported before the metrics directory was set" in master.log
    wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "ready")
    for _ in range(7):
        assert request(gunicorn.port, "/").status == 200
    wait_for(lambda: total(scrape(port), "gilworker_requests_total") == 7, 10, "7 counted")


def test_why_a_worker_ended():
    """The master's record of why it signalled a worker: USR1 (logs reopened) is no reason,
    a timeout's abort outranks an earlier one, a stop is a stop."""
    from gunicorn_gilworker.operations.master_metrics import WorkerExits

    exits = WorkerExits()
    exits.signalling(1, signal.SIGUSR1, reloading=False, stopping=False)
    exits.ended(1, None)  # then it recycled itself
    exits.signalling(2, signal.SIGTERM, reloading=True, stopping=False)
    exits.signalling(2, signal.SIGABRT, reloading=False, stopping=False)
    exits.ended(2, "exit 1")
    exits.signalling(3, signal.SIGTERM, reloading=True, stopping=False)
    exits.ended(3, None)
    exits.signalling(4, signal.SIGQUIT, reloading=False, stopping=True)
    exits.ended(4, None)
    exits.ended(5, "SIGSEGV")
    exits.signalling(6, signal.SIGTERM, reloading=True, stopping=False)
    exits.ended(6, "SIGTERM")  # still booting: no handler of its own yet
    assert exits.counts == {
        ("max_requests", ""): 1,
        ("timeout", ""): 1,
        ("hup", ""): 1,
        ("hup", "SIGTERM"): 1,
        ("stop", ""): 1,
        ("crash", "SIGSEGV"): 1,
    }
