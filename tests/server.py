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
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The one import of this constant in the tests: a worker thread's id (what gunicorn, its hooks
# and gunicornc see as its pid) is THREAD_ID_BASE + the worker's age, above any real pid.
from gunicorn_gilworker.supervision import THREAD_ID_BASE

APPS = Path(__file__).parent / "apps"
BIN = Path(sys.executable).parent
GUNICORN = str(BIN / "gunicorn")
FREE_THREADED = bool(__import__("sysconfig").get_config_var("Py_GIL_DISABLED"))
# What each worker (each event-loop thread) logs once its lifespan startup has run: a master
# is ready when its log has one per loop.
READY_LINE = r"Worker (?:thread|process) \d+ serving"  # one per event loop
# The conf file that records every hook gunicorn calls (server and request hooks) to $HOOK_LOG.
HOOKS = ["-c", str(APPS / "hooks_conf.py")]


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


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this process: the kernel may give the
    same ephemeral port to two binds in a row once the first is closed (a test's app port and
    its --metrics-bind port were once equal)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port not handed out before in 100 tries")


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
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> Response:
    """One GET (or `method`) over a new connection (or over `conn`, kept alive)."""
    own = conn is None
    if conn is None:
        conn = (
            UnixHTTPConnection(unix, timeout)
            if unix
            else http.client.HTTPConnection(host, port, timeout=timeout)
        )
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        if own:
            conn.close()


def serves(port: int, timeout: float = 2.0) -> bool:
    """Whether GET / on a new connection is answered 200 (for wait_for)."""
    try:
        return request(port, timeout=timeout).status == 200
    except (OSError, http.client.HTTPException):
        return False


def exchange(port: int, data: bytes, timeout: float = 10.0, close_early: bool = False) -> bytes:
    """Raw bytes sent on a new connection; what comes back until the server closes it (or
    `timeout` passes with nothing), or nothing at all with `close_early`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if close_early:
            return b""
        return read_until_closed(s)


def read_until_closed(s: socket.socket) -> bytes:
    """What is left to read on `s`: up to the server's close, its reset, or the socket's
    timeout. Data that came before a reset is still read (Linux keeps it queued)."""
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the server has closed (or reset) the non-blocking socket `s`."""
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


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


def ctl(launcher: Launcher, command: str) -> str:
    """A gunicornc command to the launcher's first master. Where workers are processes gunicorn
    takes its control socket down around each fork (os.register_at_fork, benoitc/gunicorn#3520),
    so a connection can be refused, reset or cut while a worker is spawned, or accepted and then
    dropped unanswered: the loop that took it is stopped for the fork, and the new worker
    inherits the connection, so the client waits for its own timeout (seen once in CI, right
    after `worker kill`). Such an attempt is made again."""
    sock = launcher.tmp_path / "ctl-0.sock"

    def attempt() -> str | None:
        if not sock.exists():
            return None
        try:
            done = subprocess.run(
                [str(BIN / "gunicornc"), "-s", str(sock), "-j", "-c", command],
                capture_output=True,
                text=True,
                timeout=5,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0 and any(cut in done.stderr for cut in DROPPED_AROUND_FORK):
            return None
        assert done.returncode == 0, done.stderr
        return done.stdout

    return wait_for(attempt, 20, f"gunicornc {command!r}")


# How gunicornc reports a connection the control server dropped while stopped for a fork: refused,
# reset, or (the command already sent, seen once in CI during a crash loop) a broken pipe.
DROPPED_AROUND_FORK = ("Failed to connect", "Connection reset", "Broken pipe")

# What asyncio prints when the control server, stopped for a fork, cancels the task of a gunicornc
# connection it holds: before CPython 3.13 its streams callback raises on a cancelled task
# (python/cpython#113538). The report is its first line and the traceback's own lines after it.
_CTL_CANCELLED = re.compile(
    r"^Exception in callback StreamReaderProtocol\.connection_made\.<locals>\.callback\(.*\n"
    r"(?:(?:handle: |Traceback |  |During handling |The above exception |[\w.]+(?:: .*)?$)"
    r".*\n|\n)*",
    re.MULTILINE,
)


def without_ctl_cancellations(log: str) -> str:
    """A master's log without asyncio's reports of gunicornc connections cancelled by a fork:
    gunicorn's and the interpreter's, whatever the worker class; anything else stays."""

    def drop(report: re.Match[str]) -> str:
        text = report.group()
        ours = "gunicorn/ctl/server.py" not in text or not text.rstrip().endswith("CancelledError")
        return text if ours else ""

    return _CTL_CANCELLED.sub(drop, log)


def workers(launcher: Launcher) -> list[dict]:
    """The workers gunicornc shows (`show workers`)."""
    return json.loads(ctl(launcher, "show workers"))["workers"]


def worker_ids(launcher: Launcher) -> list[int]:
    """The ids of the workers: pids of worker processes, or ids of the master's threads."""
    return [w["pid"] for w in workers(launcher)]


def stats(launcher: Launcher) -> dict:
    """gunicornc's `show stats`."""
    return json.loads(ctl(launcher, "show stats"))


def is_worker_thread_name(name: str) -> bool:
    """A gilworker event-loop thread's name: gilworker-<THREAD_ID_BASE + its age>."""
    prefix, _, number = name.partition("-")
    return prefix == "gilworker" and number.isdigit() and int(number) > THREAD_ID_BASE


def trusting(cert: Path, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client's TLS context that trusts `cert` (make_certificate's), offering `alpn`."""
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the certificate names 127.0.0.1 in its CN only
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


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


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid` (a master started here leads its own session, so
    every process it or its workers started is in it, wherever it was reparented to). Zombies
    are left out: they hold nothing but their pid, and whoever reaps orphans may take its time."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            # pid (comm) state ppid pgrp session ...: comm may hold spaces, so split after ")"
            state, _ppid, _pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            if int(session) == sid and state not in "ZX":
                found.append(int(stat.parent.name))
    return found


def tcp_sockets(port: int) -> dict[tuple[str, int], tuple[str, int]]:
    """The IPv4 TCP sockets whose local end is 127.0.0.1:`port`, from /proc/net/tcp, as
    {(remote address, inode): (state, receive queue)}. State 0A is LISTEN, 01 ESTABLISHED; the
    receive queue of a LISTEN socket is its accept queue. The kernel hands the table out in pieces
    while other tests change it, so a row can be read twice: keyed, it counts once."""
    wanted = f"0100007F:{port:04X}"
    found = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            row = line.split()
            if row[1] == wanted:
                found[(row[2], int(row[9]))] = (row[3], int(row[4].split(":")[1], 16))
    return found


def accept_queue(port: int) -> int:
    """Connections to 127.0.0.1:`port` that wait in its listening sockets' accept queues: the
    kernel has made them, no process has accepted them yet."""
    for _ in range(20):  # a row the table skipped while it changed is there on the next read
        queues = [queue for state, queue in tcp_sockets(port).values() if state == "0A"]
        if queues:
            return sum(queues)
    raise AssertionError(f"no socket listens on 127.0.0.1:{port}")


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
        ready: str | None = READY_LINE,
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
        ready: str | None = READY_LINE,
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

    def hooks(self, hook: str | None = None) -> list[dict]:
        """What tests/apps/hooks_conf.py recorded: every hook call, or those of `hook`."""
        path = self.tmp_path / "hooks.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [e for e in entries if hook is None or e["hook"] == hook]

    def hook_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.hooks():
            counts[entry["hook"]] = counts.get(entry["hook"], 0) + 1
        return counts

    def stop_all(self) -> None:
        for master in self.masters:
            master.stop()


class Load:
    """Clients that send GET `path` request after request, from a few threads, counting what
    fails and keeping each answer's body. Each client keeps one connection open (a new one only
    after a Connection: close or an error), or with `keep_alive=False` opens a new connection
    for every request. Bounded: `stop()` ends it; `seconds` and `limit` (requests in all) only
    bound a test that never calls it, so `seconds` outlasts every wait of the tests (on a loaded
    machine a test's steps took over 60 s, and a load that had ended by itself then answered
    nothing)."""

    def __init__(
        self,
        port: int,
        path: str = "/stream?n=1&delay=0",
        *,
        clients: int = 12,
        keep_alive: bool = True,
        seconds: float = 600,
        limit: int = 200_000,
    ) -> None:
        self.port, self.path, self.keep_alive, self.limit = port, path, keep_alive, limit
        self.deadline = time.monotonic() + seconds
        self.sent = self.answered = self.closed_by_server = self.non_2xx = 0
        self.errors: list[str] = []
        self.bodies: list[bytes] = []
        self.running = True
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while self.running and self.sent < self.limit and time.monotonic() < self.deadline:
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.sent += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = None
                continue
            with self.lock:
                self.sent += 1
                self.answered += 1
                self.non_2xx += response.status >= 300
                self.closed_by_server += response.will_close
                self.bodies.append(body)
            if response.will_close or not self.keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.running = False
        for thread in self.threads:
            thread.join(30)

    def report(self) -> str:
        return (
            f"{self.sent} requests, {self.answered} answered ({self.closed_by_server} with "
            f"Connection: close), {len(self.errors)} errors {self.errors[:3]}, "
            f"{self.non_2xx} non-2xx"
        )


class Statsd:
    """A statsd server for one test: a UDP socket on 127.0.0.1 that keeps every line received."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"  # for --statsd-host
        self.received: list[str] = []

    def __enter__(self) -> Statsd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def receive(self) -> bool:
        """Read one datagram, if one comes within 0.1 s."""
        try:
            self.received += self.sock.recv(65536).decode().splitlines()
            return True
        except TimeoutError:
            return False

    def wait(self, done: Callable[[list[str]], object], timeout: float, what: str) -> list[str]:
        """Receive until `done(lines)` holds, then what is still on its way (until 0.1 s pass
        with nothing): a metric sent twice shows up twice."""

        def received() -> bool:
            self.receive()
            return bool(done(self.received))

        wait_for(received, timeout, what)
        for _ in range(1000):  # bounded: the datagrams already sent
            if not self.receive():
                break
        return self.received

    def total(self, counter: str) -> int:
        """The sum of `counter`'s counts received."""
        prefix = counter + ":"
        return sum(
            int(m[len(prefix) :].split("|")[0]) for m in self.received if m.startswith(prefix)
        )


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
