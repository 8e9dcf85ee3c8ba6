"""Prometheus metrics that stay correct under several gunicorn worker processes.

prometheus_client picks its value storage at import time: when PROMETHEUS_MULTIPROC_DIR is
set (services/gunicorn_conf.py sets it before any worker imports this), every process writes
its samples to mmap files in that folder and /metrics aggregates all of them; otherwise the
values live in this process and /metrics shows them directly.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """One registry per app, so tests can build many apps in one process without clashes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mhist_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "mhist_http_request_duration_seconds", "Time from request start to response.",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference = Histogram(
            "mhist_inference_duration_seconds",
            "Decode + preprocess + session.run time per call of the model.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.images = Counter(
            "mhist_images", "Images received by outcome (predicted or rejected).",
            ["outcome"], registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()  # fresh each scrape: the files are the state
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
