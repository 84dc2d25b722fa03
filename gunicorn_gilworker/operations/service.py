"""The master's operations service: what --metrics-bind serves, and the state it reads.

GilArbiter owns one and tells it what only the master sees: the configuration (before anything
imports prometheus_client or the app), each worker it signals and why, each worker that ends
and how, each turn of its loop, and the stop signal. Everything else it reads when scraped.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gunicorn_gilworker.operations.endpoint import (
    OperatorEndpoint,
    listening_socket,
    overlaps,
    parse_metrics_bind,
)
from gunicorn_gilworker.operations.master_metrics import MasterCollector, WorkerExits
from gunicorn_gilworker.operations.measures import as_metrics, process_measures
from gunicorn_gilworker.operations.metric_files import ENV, Directory, prepare, values_in_files

LIVE_WITHIN = 10.0  # seconds: the master's loop turns at least once a second
SIGNALS_THAT_STOP = {"TERM": "SIGTERM", "INT": "SIGINT", "QUIT": "SIGQUIT"}


def forks_workers(cfg: Any, free_threaded: bool) -> bool:
    """Whether this configuration may serve from forked worker processes (then the app's
    prometheus_client metrics must go to files before it is imported)."""
    if cfg.gil_mode == "process" or cfg.threads > 1:
        return True
    return cfg.gil_mode == "auto" and not free_threaded


class Operations:
    def __init__(self, arbiter: Any, address: str, forks: bool, environ: Mapping[str, str]) -> None:
        self.arbiter = arbiter
        self.metrics_bind = address
        self.address = parse_metrics_bind(address)
        self.exits = WorkerExits()
        self.stopped_by = ""  # the signal that began the stop: readiness fails from then on
        self.turned = time.monotonic()
        self.directory: Directory | None = None
        self.user_dir = environ.get(ENV)
        if forks or self.user_dir:
            self._make_directory()
        self.endpoint: OperatorEndpoint | None = None
        self.sock: Any = None

    def _make_directory(self) -> None:
        self.directory = Directory(*prepare(self.user_dir))
        if not values_in_files():
            self.arbiter.log.warning(
                "gilworker: prometheus_client was imported before the metrics directory was "
                "set (in gunicorn.conf.py, or by an app the master imported first): the app's "
                "own metrics of forked workers stay in each process; gilworker's are served"
            )

    def entering(self, forks: bool) -> None:
        """A topology is entered: one that forks needs the directory (a free-threaded build
        falls back to processes when the app's import turns the GIL on)."""
        if forks and self.directory is None:
            self._make_directory()

    # -- start and stop ---------------------------------------------------------------------

    def bind(self, app_binds: list[Any]) -> None:
        """Bind, before the app's listeners; a bad address ends the master with one line."""
        if overlaps(self.address, app_binds):
            self._refuse(f"--metrics-bind {self._shown()} is one of the app's --bind addresses")
        try:
            self.sock = listening_socket(self.address)
        except OSError as exc:
            self._refuse(f"--metrics-bind {self._shown()}: {exc.strerror or exc}")

    def start(self) -> None:
        self.endpoint = OperatorEndpoint(
            self.sock, self.registry(), self.live, self.ready, self.arbiter.log
        )
        self.endpoint.start()
        where = self._shown(self.sock)
        if self.directory is None:
            self.arbiter.log.info("gilworker: metrics, /livez and /readyz at %s", where)
        else:
            self.arbiter.log.info(
                "gilworker: metrics, /livez and /readyz at %s; prometheus_client's "
                "multiprocess directory: %s",
                where,
                self.directory.path,
            )

    def _shown(self, sock: Any = None) -> str:
        if isinstance(self.address, str):
            return f"unix:{self.address}"
        host, port = sock.getsockname()[:2] if sock is not None else self.address
        host = host or "0.0.0.0"
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _refuse(self, line: str) -> None:
        self.arbiter.log.error("gilworker: %s", line)
        sys.exit(1)

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
        elif self.sock is not None:
            self.sock.close()
        if self.directory is not None:
            self.directory.close()

    def registry(self) -> Any:
        from prometheus_client import REGISTRY, CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(MasterCollector(self.arbiter, self.exits))
        registry.register(_ServingMeasures(lambda: self.directory, REGISTRY))
        registry.register(_MasterProcess(lambda: self.directory, ProcessCollector(registry=None)))
        return registry

    # -- what the master tells it -----------------------------------------------------------

    def loop_turned(self) -> None:
        self.turned = time.monotonic()

    def stop_signal(self, name: str) -> None:
        """From the signal handler: keep it to a store."""
        self.stopped_by = self.stopped_by or SIGNALS_THAT_STOP.get(name, "")

    def signalling(self, wid: int, sig: int, reloading: bool, stopping: bool) -> None:
        self.exits.signalling(wid, sig, reloading, stopping)

    def worker_ended(self, wid: int, how: str | None, process: bool) -> None:
        self.exits.ended(wid, how)
        if process and self.directory is not None:
            try:
                self.directory.retire(wid)
            except Exception:  # a bad file must not take the master down
                self.arbiter.log.exception("gilworker: the metrics of process %s were lost", wid)

    # -- the probes -------------------------------------------------------------------------

    def live(self) -> tuple[bool, str]:
        since = time.monotonic() - self.turned
        if since < LIVE_WITHIN or self.stopped_by:
            return True, "ok"
        return False, f"the master's loop has not turned for {since:.0f} s"

    def ready(self) -> tuple[bool, str]:
        if self.stopped_by:
            return False, f"stopping ({self.stopped_by})"
        if self.arbiter.halting or self.arbiter.stopping_workers:  # a stop no signal began
            return False, "stopping"
        serving = self.serving_loops()
        if serving:
            return True, f"ready: {serving} event loops serving"
        return False, "not ready: no worker serves yet"

    def serving_loops(self) -> int:
        arbiter = self.arbiter
        serving = process_measures().serving_loops()  # threads of the master
        if self.directory is not None:
            processes = [
                wid
                for wid in list(arbiter.WORKERS)
                if getattr(arbiter.owner(wid), "name", "") != "threads"
            ]
            serving += self.directory.serving_loops(processes)
        return serving


class _ServingMeasures:
    """The requests' measures: from the multiprocess directory (the worker processes', the
    master's own threads' published first, and the app's), or from the master's memory and the
    default registry (threads in the master: the app's metrics are plain prometheus_client)."""

    def __init__(self, directory: Callable[[], Directory | None], default_registry: Any) -> None:
        self.directory = directory  # made at start, or when a forking topology is entered
        self.default_registry = default_registry

    def collect(self) -> Iterator[Any]:
        measures = process_measures()
        directory = self.directory()
        if directory is not None:
            directory.publish(measures, "master")
            yield from directory.collect()
            return
        yield from as_metrics(measures.families())
        yield from self.default_registry.collect()


class _MasterProcess:
    """The master's own process_* metrics, where the default registry (which has them) is not
    served: with the directory."""

    def __init__(self, directory: Callable[[], Directory | None], collector: Any) -> None:
        self.directory = directory
        self.collector = collector

    def collect(self) -> Iterator[Any]:
        if self.directory() is not None:
            yield from self.collector.collect()
