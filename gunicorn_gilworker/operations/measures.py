"""What each event loop and each process counts, and the metric families made of it.

The request path touches only its own loop's `LoopMeasures` (plain ints, one writer: the loop's
thread), so N loops of one process never meet on a lock; whoever reads them (a scrape in the
master, a worker process's publisher) copies them. A process's `ProcessMeasures` holds its live
loops, the totals of its ended ones (their counts stay), and its rare events (under a lock).

`families()` gives them as prometheus_client families in the multiprocess files' shape:
histogram buckets not cumulative and no `_count`, gauges summed over the live processes.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gunicorn_gilworker.per_process import PerProcess

# prometheus_client's default buckets; the lag ones from 1 ms (a loop that turns late)
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
LAG_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
TICK = 0.1  # uvicorn's main loop sleeps this long between two ticks
# Any other method counts as OTHER: the label set stays bounded whatever clients send.
METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)


@dataclass
class Family:
    """One metric family: `samples` are (sample name, labels, value)."""

    name: str
    kind: str  # counter, gauge (summed over processes), histogram
    doc: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


class LoopMeasures:
    """One event loop's counts; written by its own thread only."""

    __slots__ = (
        "connections",
        "duration_sum",
        "durations",
        "in_flight",
        "lag_sum",
        "lags",
        "last_tick",
        "requests",
        "serving",
    )

    def __init__(self, connections: Callable[[], int] = lambda: 0) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.durations = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        self.in_flight = 0
        self.lags = [0] * (len(LAG_BOUNDS) + 1)
        self.lag_sum = 0.0
        self.last_tick = 0.0
        self.serving = False
        self.connections = connections  # open connections, read when collected

    def answered(self, method: str, status: int, seconds: float) -> None:
        key = (method if method in METHODS else "OTHER", status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.durations[bisect.bisect_left(DURATION_BOUNDS, seconds)] += 1
        self.duration_sum += seconds

    def ticked(self, now: float) -> None:
        """One of uvicorn's ticks: how much later than asked the loop came back to it."""
        if self.last_tick:
            lag = max(0.0, now - self.last_tick - TICK)
            self.lags[bisect.bisect_left(LAG_BOUNDS, lag)] += 1
            self.lag_sum += lag
        self.last_tick = now

    def add_into(self, totals: LoopMeasures) -> None:
        """Add these counts (not the gauges) into `totals`."""
        for key, count in list(self.requests.items()):
            totals.requests[key] = totals.requests.get(key, 0) + count
        for i, count in enumerate(self.durations):
            totals.durations[i] += count
        for i, count in enumerate(self.lags):
            totals.lags[i] += count
        totals.duration_sum += self.duration_sum
        totals.lag_sum += self.lag_sum


class ProcessMeasures:
    """One process's loops, the totals of its ended loops, and its events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loops: list[LoopMeasures] = []
        self.ended = LoopMeasures()
        self.events: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.changed = threading.Event()  # a loop began or stopped serving: publish now

    def loop(self, connections: Callable[[], int]) -> LoopMeasures:
        measures = LoopMeasures(connections)
        with self.lock:
            self.loops.append(measures)
        return measures

    def loop_ended(self, measures: LoopMeasures) -> None:
        with self.lock:
            if measures in self.loops:
                self.loops.remove(measures)
                measures.add_into(self.ended)
        self.changed.set()

    def count(self, event: str, **labels: str) -> None:
        """One more of a rare event (an accept pause, a stall, a client's malformed request)."""
        key = (event, tuple(sorted(labels.items())))
        with self.lock:
            self.events[key] = self.events.get(key, 0) + 1

    def serving_loops(self) -> int:
        with self.lock:
            return sum(1 for loop in self.loops if loop.serving)

    def families(self) -> list[Family]:
        with self.lock:
            loops = list(self.loops)
            totals = LoopMeasures()
            self.ended.add_into(totals)
            events = dict(self.events)
        for loop in loops:
            loop.add_into(totals)
        requests = Family("gilworker_requests", "counter", "HTTP requests answered")
        for (method, status), count in sorted(totals.requests.items()):
            requests.samples.append(
                ("gilworker_requests_total", {"method": method, "status": str(status)}, count)
            )
        families = [
            requests,
            _histogram(
                "gilworker_request_duration_seconds",
                "Time from a request's head to its response's end",
                DURATION_BOUNDS,
                totals.durations,
                totals.duration_sum,
            ),
            _histogram(
                "gilworker_event_loop_lag_seconds",
                "How late an event loop came back to a timer due 0.1 s after the last",
                LAG_BOUNDS,
                totals.lags,
                totals.lag_sum,
            ),
            _gauge(
                "gilworker_requests_in_flight",
                "Requests being served",
                sum(loop.in_flight for loop in loops),
            ),
            _gauge(
                "gilworker_open_connections",
                "Client connections open",
                sum(loop.connections() for loop in loops),
            ),
            _gauge(
                "gilworker_event_loops_serving",
                "Event loops serving requests (their lifespan startup done)",
                sum(1 for loop in loops if loop.serving),
            ),
        ]
        for name, doc in EVENTS.items():
            family = Family(name, "counter", doc)
            for (event, labels), count in sorted(events.items()):
                if event == name:
                    family.samples.append((name + "_total", dict(labels), count))
            if family.samples or name in UNLABELLED_EVENTS:
                family.samples = family.samples or [(name + "_total", {}, 0)]
                families.append(family)
        return families


# The events a worker process counts (each a counter; labels as passed to `count`)
EVENTS = {
    "gilworker_accept_pauses": "Times a loop stopped accepting (reason: descriptors, connections)",
    "gilworker_client_noise": "Client-caused events: slow heads, malformed requests (kind)",
    "gilworker_loop_stalls": "Times an event loop did not turn for --stall-warning seconds",
}
UNLABELLED_EVENTS = frozenset({"gilworker_loop_stalls"})


def _histogram(
    name: str, doc: str, bounds: Iterable[float], counts: list[int], total: float
) -> Family:
    family = Family(name, "histogram", doc)
    # `le` as prometheus_client writes it (floatToGoString): repr of these bounds, and +Inf
    for bound, count in zip([*map(repr, bounds), "+Inf"], counts, strict=True):
        family.samples.append((name + "_bucket", {"le": bound}, count))
    family.samples.append((name + "_sum", {}, total))
    return family


def _gauge(name: str, doc: str, value: float) -> Family:
    return Family(name, "gauge", doc, [(name, {}, value)])


def cumulative(family: Family) -> list[tuple[str, dict[str, str], float]]:
    """A histogram's samples as the exposition has them: cumulative buckets and `_count`."""
    samples, running = [], 0.0
    for name, labels, value in family.samples:
        if name.endswith("_bucket"):
            running += value
            samples.append((name, labels, running))
        else:
            samples.append((name, labels, value))
    samples.append((family.name + "_count", {}, running))
    return samples


def as_metrics(families: Iterable[Family]) -> list[Any]:
    """prometheus_client families, for a collector of this process's own measures."""
    from prometheus_client.core import Metric

    metrics = []
    for family in families:
        metric = Metric(family.name, family.doc, family.kind)
        samples = cumulative(family) if family.kind == "histogram" else family.samples
        for name, labels, value in samples:
            metric.add_sample(name, labels, value)
        metrics.append(metric)
    return metrics


_measures: PerProcess[ProcessMeasures] = PerProcess()


def process_measures() -> ProcessMeasures:
    """This process's measures (a forked worker starts its own, empty)."""
    return _measures.get(ProcessMeasures)
