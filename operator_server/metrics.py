"""The Prometheus metrics of one server: every name declared here, once.

A neutral, low module: the engine, the operator sessions, the store and the
HTTP layer each call one method per event (``task_created``, ``frame_sent``,
...), and nothing here knows their types.  Current counts (tasks by status,
sessions, pending requests) are not kept twice: they are read at scrape time
from whoever owns them, through the ``sample_*`` callables the app wires in.

Each ``Metrics`` has its own ``CollectorRegistry``, so many apps can run in one
process (the tests do) without sharing or clashing.

Label values are bounded by construction: statuses, request kinds, frame
types, error codes and route patterns — never ids or raw paths.  A new counter
(say, webhook deliveries or event streams) is one attribute plus one method.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

PREFIX = "operator_server_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. HTTP requests and commits are fast; attempts and operator replies may
# wait on a human or a sub-agent for minutes.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

Sample = Callable[[], Mapping[str, float]]


def _nothing() -> Mapping[str, float]:
    return {}


class _Sampled(Collector):
    """A gauge with one label whose values are read from their owner at scrape time."""

    def __init__(self, name: str, doc: str, label: str, sample: Callable[[], Sample]) -> None:
        self._name, self._doc, self._label, self._sample = name, doc, label, sample

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, labels=[self._label])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._doc, labels=[self._label])
        for value, count in self._sample()().items():
            family.add_metric([value], count)
        yield family


class _SampledCounter(Collector):
    """A counter kept by its owner (as numbers by label values), read at scrape time."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        sample: Callable[[], Callable[[], Mapping[tuple[str, ...], float]]],
    ) -> None:
        self._name, self._doc, self._labels, self._sample = name, doc, list(labels), sample

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        for key, count in self._sample()().items():
            family.add_metric(list(key), count)
        yield family


def _no_counts() -> Mapping[tuple[str, ...], float]:
    return {}


class Counter(Collector):
    """A counter kept as plain numbers by label values, turned into samples at
    scrape time.  ``prometheus_client``'s own takes a lock and checks its
    arguments on every ``inc``; these sit on the per-frame and per-request path,
    and every call comes from the event loop's thread."""

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...] = (), *, registry: CollectorRegistry
    ) -> None:
        self._name, self._doc, self._labels = name, doc, list(labels)
        # label values -> a one-number cell, so a hot caller can hold on to its
        # cell (``cell``) and add to it with no lookup at all.
        self.values: dict[tuple[str, ...], list[float]] = {} if labels else {(): [0.0]}
        registry.register(self)

    def cell(self, *labels: str) -> list[float]:
        """The series of these label values (created at 0): ``cell[0] += 1``."""
        found = self.values.get(labels)
        if found is None:
            found = self.values[labels] = [0.0]
        return found

    def inc(self, *labels: str) -> None:
        found = self.values.get(labels)
        if found is None:
            found = self.values[labels] = [0.0]
        found[0] += 1.0

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._doc, labels=self._labels)
        for key, value in list(self.values.items()):
            family.add_metric(list(key), value[0])
        yield family


class Histogram(Collector):
    """A histogram kept as plain numbers (per-bucket counts and the sum, by
    label values), made cumulative at scrape time.  Observations come from one
    thread per histogram (the loop's; the store's commits from the store's),
    so no lock is needed."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...] = (),
        *,
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name, self._doc, self._labels = name, doc, list(labels)
        self.bounds = self._bounds = buckets
        self._les = [floatToGoString(b) for b in buckets] + ["+Inf"]
        # label values -> [count per bucket (the last: above every bound), sum]
        self.values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        if not labels:
            self._series(())
        registry.register(self)

    def _series(self, key: tuple[str, ...]) -> tuple[list[int], list[float]]:
        series = self.values[key] = ([0] * (len(self._bounds) + 1), [0.0])
        return series

    def series(self, *labels: str) -> tuple[list[int], list[float]]:
        """The series of these label values (created empty), for a hot caller
        to hold on to: ``counts[bisect_left(bounds, value)] += 1; total[0] += value``."""
        return self.values.get(labels) or self._series(labels)

    def observe(self, value: float, *labels: str) -> None:
        series = self.values.get(labels) or self._series(labels)
        # le is inclusive: a value equal to a bound counts in that bound's bucket.
        series[0][bisect_left(self._bounds, value)] += 1
        series[1][0] += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labels)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labels)
        for key, (counts, total) in list(self.values.items()):
            cumulative, running = [], 0
            for le, n in zip(self._les, counts, strict=True):
                running += n
                cumulative.append((le, float(running)))
            family.add_metric(list(key), cumulative, sum_value=total[0])
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        # Wired by the app to the owners of the current counts.
        self.sample_tasks: Sample = _nothing
        self.sample_sessions: Sample = _nothing
        self.sample_pending: Sample = _nothing
        # Cluster mode: messages heard from other nodes (``cluster/bus.py``).
        self.sample_cluster_messages: Callable[[], Mapping[tuple[str, ...], float]] = _no_counts
        # Pre-bound series of the hottest counters (per frame, per request).
        self._frames_in: dict[str, list[float]] = {}
        self._frames_out: dict[str, list[float]] = {}
        self._http_routes: dict[str, Callable[[int, float], None]] = {}

        self.tasks_created = Counter(PREFIX + "tasks_created_total", "Tasks created.", registry=reg)
        self.tasks_finished = Counter(
            PREFIX + "tasks_finished_total",
            "Tasks that ended, by final status.",
            ("status",),
            registry=reg,
        )
        self.attempt_duration = Histogram(
            PREFIX + "attempt_duration_seconds",
            "How long each attempt ran, start to end.",
            buckets=SLOW_BUCKETS,
            registry=reg,
        )
        self.request_wait = Histogram(
            PREFIX + "request_wait_seconds",
            "Operator requests: time from issue to the operator's reply, by face "
            "(senior_bridge, spawn_hook, backend).",
            ("face",),
            buckets=SLOW_BUCKETS,
            registry=reg,
        )
        self.replies = Counter(
            PREFIX + "replies_total",
            "Operator replies that settled a request, by where they came from "
            "(socket, rest, batch) and their type (answer, hook_ack, spawn_ack, spawn_halt).",
            ("via", "kind"),
            registry=reg,
        )
        self.frames = Counter(
            PREFIX + "frames_total",
            "WebSocket frames, by direction (in, out) and frame type.",
            (
                "direction",
                "type",
            ),
            registry=reg,
        )
        self.error_frames = Counter(
            PREFIX + "error_frames_total",
            "error frames sent to operators, by code.",
            ("code",),
            registry=reg,
        )
        self.http_requests = Counter(
            PREFIX + "http_requests_total",
            "HTTP requests, by route pattern and status.",
            (
                "route",
                "status",
            ),
            registry=reg,
        )
        self.http_duration = Histogram(
            PREFIX + "http_request_duration_seconds",
            "HTTP request handling time by route pattern (a WebSocket: its whole life).",
            ("route",),
            buckets=FAST_BUCKETS,
            registry=reg,
        )
        self.store_commit = Histogram(
            PREFIX + "store_commit_seconds",
            "Store transactions (one group commit each), begin to commit.",
            buckets=FAST_BUCKETS,
            registry=reg,
        )
        self.worker_asks = Counter(
            PREFIX + "worker_asks_total",
            "Worker asks (POST /v1/worker/ask) that ended, by outcome "
            "(answered, declined, failed, withdrawn).",
            ("outcome",),
            registry=reg,
        )
        # One series per process: which node of a cluster these numbers are from.
        self.node = Info(PREFIX + "node", "This process: its node_id and version.", registry=reg)
        self.slow_peer_disconnects = Counter(
            PREFIX + "slow_peer_disconnects_total",
            "Operator sockets and event streams dropped because the peer stopped reading.",
            registry=reg,
        )
        self.webhook_tries = Counter(
            PREFIX + "webhook_deliveries_total",
            "Webhook delivery tries, by outcome (delivered, failed, gave_up).",
            ("outcome",),
            registry=reg,
        )
        self.notifications = Counter(
            PREFIX + "notifications_total",
            "Notification messages, by channel and outcome: sent; failed (a try that "
            "failed), retried (a failed try to be made again), given_up.",
            ("channel", "outcome"),
            registry=reg,
        )
        reg.register(
            _SampledCounter(
                PREFIX + "cluster_messages",
                "Cluster mode: messages heard from other nodes, by kind and scope "
                "(direct: to this node alone, a crossing of some task's work; "
                "broadcast: to every node, once per batch).",
                ("kind", "scope"),
                lambda: self.sample_cluster_messages,
            )
        )
        reg.register(
            _Sampled(
                PREFIX + "tasks",
                "Tasks known now (live and retained), by status.",
                "status",
                lambda: self.sample_tasks,
            )
        )
        reg.register(
            _Sampled(
                PREFIX + "operator_sessions",
                "Operator sessions now, by whether a socket is attached.",
                "connected",
                lambda: self.sample_sessions,
            )
        )
        reg.register(
            _Sampled(
                PREFIX + "pending_requests",
                "Operator requests awaiting a reply (or a socket) now, by face.",
                "face",
                lambda: self.sample_pending,
            )
        )

    def identify(self, node_id: str, version: str) -> None:
        self.node.info({"node_id": node_id, "version": version})

    # -- one method per event ------------------------------------------------

    def task_created(self) -> None:
        self.tasks_created.inc()

    def task_finished(self, status: str) -> None:
        self.tasks_finished.inc(status)

    def attempt_ended(self, seconds: float) -> None:
        self.attempt_duration.observe(seconds)

    def reply_received(self, face: str, waited_s: float, via: str, kind: str) -> None:
        self.request_wait.observe(waited_s, face)
        self.replies.inc(via, kind)

    def frame_received(self, frame_type: str) -> None:
        cell = self._frames_in.get(frame_type)
        if cell is None:
            cell = self._frames_in[frame_type] = self.frames.cell("in", frame_type)
        cell[0] += 1.0

    def frame_sent(self, frame: Mapping[str, Any]) -> None:
        frame_type = frame["type"]
        cell = self._frames_out.get(frame_type)
        if cell is None:
            cell = self._frames_out[frame_type] = self.frames.cell("out", frame_type)
        cell[0] += 1.0
        if frame_type == "error":
            self.error_frames.inc(frame["code"])

    def worker_ask_settled(self, outcome: str) -> None:
        self.worker_asks.inc(outcome)

    def slow_peer_disconnected(self) -> None:
        self.slow_peer_disconnects.inc()

    def webhook_tried(self, outcome: str) -> None:
        self.webhook_tries.inc(outcome)

    def notification(self, channel: str, outcome: str) -> None:
        self.notifications.inc(channel, outcome)

    def http_request(self, route: str, status: int, seconds: float) -> None:
        self.http_route(route)(status, seconds)

    def http_route(self, route: str) -> Callable[[int, float], None]:
        """What records a request of ``route`` (its status and seconds), with
        its series looked up once: the HTTP layer keeps one per route."""
        found = self._http_routes.get(route)
        if found is not None:
            return found
        requests, by_status = self.http_requests, dict[int, list[float]]()
        series = self.http_duration.series(route)
        counts, total = series
        bounds = self.http_duration.bounds

        def record(status: int, seconds: float) -> None:
            cell = by_status.get(status)
            if cell is None:
                cell = by_status[status] = requests.cell(route, str(status))
            cell[0] += 1.0
            counts[bisect_left(bounds, seconds)] += 1
            total[0] += seconds

        self._http_routes[route] = record
        return record

    def store_committed(self, seconds: float) -> None:
        """Called from the store's own thread, the only one observing it."""
        self.store_commit.observe(seconds)

    def exposition(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)


class DisabledMetrics(Metrics):
    """``metrics = false``: every event method does nothing (``GET /metrics``
    answers 404), so the hot paths pay one no-op call and no label lookups."""

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    task_created = task_finished = attempt_ended = reply_received = _nothing
    frame_received = frame_sent = worker_ask_settled = slow_peer_disconnected = _nothing
    webhook_tried = http_request = store_committed = notification = _nothing

    def http_route(self, route: str) -> Callable[[int, float], None]:
        return self._nothing
