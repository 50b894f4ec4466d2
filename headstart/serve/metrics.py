"""Prometheus metrics of one app, in a registry of its own (two apps in one process never mix)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)
RATE_WINDOW_S = 10.0


class _RateCollector:
    """``headstart_images_per_second``: images answered per second over the last 10 s, per model.

    Prometheus users take ``rate(headstart_images_total[1m])``; this gauge is for
    a glance at ``/metrics`` without a Prometheus server.
    """

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def add(self, model: str, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            events = self._events.setdefault(model, deque())
            events.append((now, n))
            while events and events[0][0] < now - RATE_WINDOW_S:
                events.popleft()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "headstart_images_per_second",
            f"Images answered per second over the last {RATE_WINDOW_S:g} s",
            labels=["model"],
        )
        now = time.monotonic()
        with self._lock:
            for model, events in self._events.items():
                while events and events[0][0] < now - RATE_WINDOW_S:
                    events.popleft()
                family.add_metric([model], sum(n for _, n in events) / RATE_WINDOW_S)
        yield family


class ServeMetrics:
    """The collectors ``/metrics`` shows."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "headstart_requests",
            "HTTP requests answered, by route template and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "headstart_request_duration_seconds",
            "Time from request to response, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "headstart_batch_size", "Images per network run, by model", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "headstart_inference_duration_seconds",
            "Time of one network run, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "headstart_queue_depth",
            "Images admitted and not yet answered (decoding, queued, running), by model",
            ["model"],
            registry=r,
        )
        self.images = Counter("headstart_images", "Images answered, by model", ["model"], registry=r)
        self.rejected = Counter(
            "headstart_rejected",
            "Requests refused before inference, by model and reason",
            ["model", "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "headstart_model_info", "The models served (value 1)", ["model", "version", "runtime"], registry=r
        )
        self._rate = _RateCollector()
        r.register(self._rate)

    def answered(self, model: str, n: int) -> None:
        self.images.labels(model).inc(n)
        self._rate.add(model, n)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def describe_model(self, name: str, clf: Any) -> None:
        self.model_info.labels(name, clf.version, clf.runtime).set(1)
        self.queue_depth.labels(name).set(0)
        self.images.labels(name)
