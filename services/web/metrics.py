"""Prometheus metrics that stay correct under several gunicorn worker processes.

prometheus_client picks its value storage at import time: when PROMETHEUS_MULTIPROC_DIR is
set (services/runtime/gunicorn_conf.py sets it before any worker imports this), every process writes
its samples to mmap files in that folder and /metrics aggregates all of them; otherwise the
values live in this process and /metrics shows them directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from services.core.cpus import cpu_info
from services.core.quality import WARNING_CODES
from services.core.stages import STAGES

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A stage of one prediction takes from tens of microseconds (serialise) to tens of ms (run).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
                 0.1, 0.25, 1.0)
# Label values come from closed sets: every distinct value is a time series kept for the life
# of the process (and, under gunicorn, a record in each worker's mmap file). A client picks the
# method name freely ("FOO /predict HTTP/1.1"), so any other method counts as OTHER_METHOD;
# routes are already the app's own rules or UNMATCHED_ROUTE (services/web/hooks.py).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                           "CONNECT", "TRACE"})
OTHER_METHOD = "other"
UNMATCHED_ROUTE = "<unmatched>"


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
        self.input_warnings = Counter(
            "mhist_input_warnings", "Input quality warnings in predictions, by code "
            "(only for models whose metadata records quality ranges).",
            ["code"], registry=self.registry,
        )
        for code in WARNING_CODES:  # every code on /metrics from the start, at 0: rate() works
            self.input_warnings.labels(code)
        self.stages = Histogram(
            "mhist_stage_seconds", "Time of each stage of a single-image prediction (/predict, "
            "/invocations): read_body, decode, preprocess, run, postprocess, serialise.",
            ["stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        for name in STAGES:
            self.stages.labels(name)
        # An info metric (value 1, facts in labels): prometheus_client's Info is not shared
        # between gunicorn workers, a gauge is ("max" of 1 is 1 however many workers).
        cpu = cpu_info()
        self.cpu = Gauge(
            "mhist_cpu_info", "This CPU as onnxruntime's kernels see it (CPUID): arch, class "
            "(vnni or portable; unknown when unreadable) and features.",
            ["arch", "cpu_class", "features"], registry=self.registry, multiprocess_mode="max",
        )
        self.cpu.labels(cpu.arch, cpu.cpu_class or "unknown", " ".join(cpu.features)).set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """`route`: a rule of the app or UNMATCHED_ROUTE; `method` as the client sent it."""
        method = method if method in KNOWN_METHODS else OTHER_METHOD
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        """One prediction's stage times (services/core/stages.py)."""
        for name, value in seconds.items():
            self.stages.labels(name).observe(value)

    def count_warnings(self, results: Iterable[dict]) -> None:
        """Count the `warnings` of each prediction (items without any, errors too, add none)."""
        for result in results:
            for warning in result.get("warnings") or ():
                self.input_warnings.labels(warning["code"]).inc()

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) for GET /metrics."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()  # fresh each scrape: the files are the state
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
