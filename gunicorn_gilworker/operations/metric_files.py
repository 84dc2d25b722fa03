"""prometheus_client's multiprocess directory, for the topologies that fork worker processes.

The master sets `PROMETHEUS_MULTIPROC_DIR` before anything imports prometheus_client (the app's
metrics then live in the directory, one file per type and process, as prometheus_client writes
them): the user's directory, wiped of its files at start as prometheus_client asks, or a fresh
private one, removed when the master exits. Each worker process publishes gilworker's own
measures there too, in the same format (`Publisher`: twice a second, and when a loop starts or
stops serving), so one `MultiProcessCollector` reads both.

When the master reaps a worker process, `Directory.retire` folds the process's files into one
file per type (`counter_retired.db`, ...): a dead process's counts are kept, exactly once, and
the directory holds files for the live processes only, however many have been recycled
(prometheus/client_python#275, #204). Its `live*` gauges go, as `mark_process_dead` does; so do
its `all` and `mostrecent` gauges (a dead process's value is not current). Scrapes and folds take
one lock, so a scrape never counts a process twice or not at all.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import struct
import sys
import tempfile
import threading
from typing import Any

from gunicorn_gilworker.operations.measures import ProcessMeasures
from gunicorn_gilworker.per_process import PerProcess
from gunicorn_gilworker.upstream import mmap_files, multiprocess_mode

ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_EVERY = 0.5  # seconds
READS = 3  # tries of a scrape's read of the directory
TAG = "gilworker-"  # gilworker's own files: `counter_gilworker-<pid>.db`, never the app's name
# The file a measure kind goes to, as MultiProcessCollector reads the type from the name
_FILE_KINDS = {"counter": "counter", "histogram": "histogram", "gauge": "gauge_livesum"}
_RETIRED = {  # a dead process's metrics of (type, gauge mode) are folded into this file
    ("counter", ""): "counter_retired.db",
    ("histogram", ""): "histogram_retired.db",
    ("summary", ""): "summary_retired.db",
    ("gauge", "sum"): "gauge_sum_retired.db",
    ("gauge", "max"): "gauge_max_retired.db",
    ("gauge", "min"): "gauge_min_retired.db",
}


def prepare(user_dir: str | None) -> tuple[str, bool]:
    """The directory to use, set in the environment: (path, whether gilworker made it)."""
    if user_dir:
        os.makedirs(user_dir, exist_ok=True)
        if not os.environ.get("GUNICORN_PID"):  # a USR2 re-exec: the old master's are live
            for stale in glob.glob(os.path.join(glob.escape(user_dir), "*.db")):
                os.remove(stale)
        path, private = user_dir, False
    else:
        path, private = tempfile.mkdtemp(prefix="gilworker-metrics-"), True
        atexit.register(_remove_private, path, os.getpid())  # any exit, not only a halt
    os.environ[ENV] = path
    return path, private


def _remove_private(path: str, master: int) -> None:
    if os.getpid() == master:  # a forked worker runs the atexit handlers it inherited
        shutil.rmtree(path, ignore_errors=True)


def values_in_files() -> bool:
    """Whether prometheus_client, if already imported, writes its values to the directory
    (it chooses when it is imported: an import before the directory was set keeps them in
    each process's memory)."""
    values = sys.modules.get("prometheus_client.values")
    return values is None or getattr(values.ValueClass, "_multiprocess", True) is not False


class Directory:
    """The master's view of the directory: scrape, fold the dead, read readiness."""

    def __init__(self, path: str, private: bool) -> None:
        self.path = path
        self.private = private
        self.lock = threading.Lock()
        self.retired: dict[str, Any] = {}  # file name -> MmapedDict, kept open
        self.folded: set[tuple[str, str]] = set()  # (file, key) written: min/max start there

    def files(self) -> list[str]:
        """The directory's files, but one a process is creating (not yet sized: unreadable)."""
        return [f for f in glob.glob(os.path.join(glob.escape(self.path), "*.db")) if _sized(f)]

    def collect(self) -> list[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with self.lock:
            for attempt in range(READS):
                try:
                    return list(MultiProcessCollector.merge(self.files(), accumulate=True))
                except struct.error:  # a file created between the look and the read
                    if attempt == READS - 1:
                        raise
            return []

    def publish(self, measures: ProcessMeasures, tag: str) -> None:
        """The master's own loops (threads in the master), before a scrape reads them."""
        with self.lock:
            write(self.path, measures, tag, {})

    def retire(self, pid: int) -> None:
        """Fold the files of process `pid`, reaped, into the retired files."""
        from prometheus_client.multiprocess import MultiProcessCollector

        mmaped_dict, mmap_key = mmap_files()
        with self.lock:
            dead = self._files_of(pid)
            kept = [f for f in dead if not _is_dropped_gauge(f)]
            for metric in MultiProcessCollector.merge(kept, accumulate=False):
                mode = multiprocess_mode(metric)
                name = _RETIRED.get((metric.type, mode))
                if name is None:
                    continue
                if name not in self.retired:
                    self.retired[name] = mmaped_dict(os.path.join(self.path, name))
                into = self.retired[name]
                for sample in metric.samples:
                    labels = sample.labels
                    key = mmap_key(
                        metric.name,
                        sample.name,
                        list(labels),
                        list(labels.values()),
                        metric.documentation,
                    )
                    first = (name, key) not in self.folded
                    self.folded.add((name, key))
                    before = 0.0 if first else into.read_value(key)[0]
                    value = sample.value if first else _folded(mode, before, sample.value)
                    into.write_value(key, value, 0.0)
            for f in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(f)

    def _files_of(self, pid: int) -> list[str]:
        path = glob.escape(self.path)
        return [
            *glob.glob(os.path.join(path, f"*_{pid}.db")),
            *glob.glob(os.path.join(path, f"*_{TAG}{pid}.db")),
        ]

    def serving_loops(self, pids: list[int]) -> int:
        """Event loops serving in the worker processes `pids`, as they last published."""
        mmaped_dict, _ = mmap_files()
        serving = 0.0
        for pid in pids:
            name = os.path.join(self.path, f"{_FILE_KINDS['gauge']}_{TAG}{pid}.db")
            with contextlib.suppress(FileNotFoundError, struct.error):
                for key, value, _, _ in mmaped_dict.read_all_values_from_file(name):
                    if '"gilworker_event_loops_serving"' in key:
                        serving += value
        return int(serving)

    def close(self) -> None:
        with self.lock:
            for into in self.retired.values():
                into.close()
            self.retired.clear()
            if self.private:
                shutil.rmtree(self.path, ignore_errors=True)


def _sized(path: str) -> bool:
    """Whether the file has its header (a new file is empty until prometheus_client sizes it)."""
    try:
        return os.path.getsize(path) >= 8
    except FileNotFoundError:
        return False


def _is_dropped_gauge(path: str) -> bool:
    parts = os.path.basename(path).split("_")
    return parts[0] == "gauge" and parts[1] not in ("sum", "max", "min")


def _folded(mode: str, before: float, value: float) -> float:
    if mode == "max":
        return max(before, value)
    if mode == "min":
        return min(before, value)
    return before + value


def write(path: str, measures: ProcessMeasures, tag: str, files: dict[str, Any]) -> None:
    """`measures` as they are now into the process's files (absolute values)."""
    mmaped_dict, mmap_key = mmap_files()
    for family in measures.families():
        kind = _FILE_KINDS[family.kind]
        if kind not in files:
            files[kind] = mmaped_dict(os.path.join(path, f"{kind}_{TAG}{tag}.db"))
        into = files[kind]
        for name, labels, value in family.samples:
            key = mmap_key(family.name, name, list(labels), list(labels.values()), family.doc)
            into.write_value(key, float(value), 0.0)


class Publisher:
    """A worker process's measures into its files: twice a second, and when they change."""

    def __init__(self, measures: ProcessMeasures, path: str) -> None:
        self.measures = measures
        self.path = path
        self.files: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="gilworker-metrics", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.measures.changed.wait(PUBLISH_EVERY)
            self.measures.changed.clear()
            self.publish()

    def publish(self) -> None:
        with self.lock:
            write(self.path, self.measures, str(os.getpid()), self.files)


_publisher: PerProcess[Publisher] = PerProcess()
master_pid = 0  # set in the master: a process with another pid is a worker process


def publisher(measures: ProcessMeasures) -> Publisher | None:
    """This worker process's publisher; None in the master (it is scraped from memory)."""
    path = os.environ.get(ENV)
    if not path or os.getpid() == master_pid:
        return None
    return _publisher.get(lambda: Publisher(measures, path))
