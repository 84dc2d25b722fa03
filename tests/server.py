"""Starting real gunicorn masters for the tests, and always reaping them.

Each master runs in its own session, so a finalizer can kill the whole group (master and forked
workers) even when a test fails half-way. Ports are picked free on 127.0.0.1; every wait is
bounded in time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

APPS = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent
GUNICORN = str(BIN / "gunicorn")
FREE_THREADED = bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED"))


@dataclass(frozen=True)
class Topology:
    """How the workers run: forked processes, threads of the master, or processes of threads."""

    name: str
    gil_mode: str
    threads: int = 1

    def __str__(self) -> str:
        return self.name

    @property
    def args(self) -> list[str]:
        return ["--gil-mode", self.gil_mode, "--threads", str(self.threads)]

    @property
    def in_master(self) -> bool:
        """Every worker is a thread of the master process."""
        return self.gil_mode == "thread" and self.threads == 1

    @property
    def loop_threads(self) -> bool:
        """Requests are served by gilworker's event-loop threads (not a process's main thread)."""
        return self.gil_mode == "thread"

    @property
    def start_line(self) -> str:
        """What the master's start-up line says of this topology (2 workers)."""
        if self.threads > 1:
            return f"running 2 worker processes of {self.threads} threads each"
        return "running workers as " + (
            "threads in one process" if self.in_master else "forked processes"
        )

    @property
    def worker_kind(self) -> str:
        """What gunicorn's hooks and gunicornc see as a worker: `worker.gil_mode`."""
        return "thread" if self.in_master else "process"


PROCESSES = Topology("processes", "process")
THREADS = Topology("threads", "thread")
PROCESSES_OF_THREADS = Topology("processes_of_threads", "thread", threads=2)
TOPOLOGIES = [PROCESSES, THREADS, PROCESSES_OF_THREADS]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> object:
        return json.loads(self.body)


def request(
    port: int | None = None,
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    unix: str | None = None,
    timeout: float = 10.0,
    conn: http.client.HTTPConnection | None = None,
) -> Response:
    """One GET over a new connection (or over `conn`, kept alive)."""
    own = conn is None
    if conn is None:
        conn = (
            UnixHTTPConnection(unix, timeout)
            if unix
            else http.client.HTTPConnection(host, port, timeout=timeout)
        )
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        if own:
            conn.close()


def background_request(port: int, path: str, timeout: float) -> tuple[threading.Thread, list]:
    """A request made from a daemon thread; the list gets its Response, or the exception."""
    outcome: list = []

    def call() -> None:
        try:
            outcome.append(request(port, path, timeout=timeout))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def refusal(launcher: Launcher, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run `gunicorn -k gilworker ARGS plain_app:app`, which must refuse to start: exit 1 and
    no traceback. Returns its `Error:` lines."""
    done = subprocess.run(
        [GUNICORN, "-k", "gilworker", *args, "plain_app:app"],
        env=env or launcher.env(),
        cwd=launcher.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("Error:")]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed key and certificate for 127.0.0.1, made with the openssl command (the
    cryptography package has no build for free-threaded 3.13)."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return key, cert


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Master:
    """A `gunicorn` master started in its own session; `stop()` always reaps the group."""

    def __init__(
        self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, **popen: object
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
        self.pid = self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and self.log_count(pattern) < count:
                raise AssertionError(f"master exited ({self.proc.returncode}):\n{self.log}")
            return self.log_count(pattern) >= count

        try:
            wait_for(seen, timeout, f"{count} x {pattern!r} in the log")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- log ---\n{self.log}") from None

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"master did not exit in {timeout}s:\n{self.log}") from None

    def children(self) -> list[int]:
        """Child processes of the master (forked workers)."""
        return children_of(self.pid)

    def os_threads(self) -> list[str]:
        """The names of the master's OS threads."""
        return os_threads(self.pid)

    def worker_pids(self, topology: Topology) -> list[int]:
        """The processes that serve requests: the master itself, or its children."""
        return [self.pid] if topology.in_master else self.children()

    def stop(self) -> None:
        """Kill the whole session group, whatever state it is in, and reap the master."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


def children_of(pid: int) -> list[int]:
    """Child processes of `pid` (every thread of it may have forked some)."""
    found = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # gone, or a zombie
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def os_threads(pid: int) -> list[str]:
    """The names of the OS threads of process `pid`."""
    return [(task / "comm").read_text().strip() for task in Path(f"/proc/{pid}/task").iterdir()]


class Launcher:
    """Starts masters for one test; the fixture's finalizer stops all of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.masters: list[Master] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GUNICORN", "LISTEN_"))}
        env["PYTHONPATH"] = str(APPS)
        env["HOOK_LOG"] = str(self.tmp_path / "hooks.jsonl")
        env.update(extra)
        return env

    def start(
        self,
        *args: str,
        app: str = "plain_app:app",
        mode: str | None = None,
        topology: Topology | None = None,
        workers: int = 2,
        worker_class: str | None = "gilworker",
        bind: list[str] | None = None,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: str | None = r"Application startup complete",
        **popen: object,
    ) -> Master:
        """`gunicorn -k gilworker` on a free port (`self.port`), with its own control socket."""
        self.port = free_port()
        argv = list(command or [GUNICORN])
        argv += ["--control-socket", str(self.tmp_path / f"ctl-{len(self.masters)}.sock")]
        argv += ["--graceful-timeout", "10"]
        if worker_class:
            argv += ["-k", worker_class]
        if workers:
            argv += ["-w", str(workers)]
        if mode:
            argv += ["--gil-mode", mode]
        if topology:
            argv += topology.args
        for b in bind if bind is not None else [f"127.0.0.1:{self.port}"]:
            argv += ["-b", b]
        argv += list(args)
        if app:
            argv.append(app)
        loops = topology.threads if topology else 1
        return self.run(
            argv, env=env, cwd=cwd, ready=ready, workers=workers, loops_per_worker=loops, **popen
        )

    def run(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: str | None = r"Application startup complete",
        workers: int = 2,
        loops_per_worker: int = 1,
        **popen: object,
    ) -> Master:
        """Start `argv` as it is (a master of some kind) and wait until it is ready."""
        master = Master(
            argv,
            cwd or self.tmp_path,
            env or self.env(),
            self.tmp_path / f"master-{len(self.masters)}.log",
            **popen,
        )
        self.masters.append(master)
        if ready:  # every worker (every loop thread) has run its lifespan startup
            master.wait_log(ready, count=max(workers, 1) * loops_per_worker)
        return master

    def hooks(self) -> list[dict]:
        path = self.tmp_path / "hooks.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def hook_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.hooks():
            counts[entry["hook"]] = counts.get(entry["hook"], 0) + 1
        return counts

    def stop_all(self) -> None:
        for master in self.masters:
            master.stop()


def in_process_arbiter(tmp_path: Path, **options: object):
    """A GilArbiter in this test process, for seams no real master reaches."""
    from gunicorn.app.base import BaseApplication

    from gunicorn_gilworker.arbiter import GilArbiter

    class App(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("worker_class", "gilworker")
            self.cfg.set("control_socket", str(tmp_path / "ctl.sock"))
            self.cfg.set("gil_mode", options.get("mode", "auto"))

        def load(self) -> object:
            async def app(scope: dict, receive: object, send: object) -> None:
                pass

            return app

    arbiter = GilArbiter(App())
    arbiter.pid = 0
    return arbiter
