"""Timing loops and latency statistics (perf_counter; milliseconds in every record)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np


def time_calls(fn: Callable[[], object], rounds: int, warmup: int = 0) -> list[float]:
    """Seconds per call of `fn`, `rounds` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def latency_stats(samples_s: Sequence[float], images_per_call: int = 1) -> dict:
    """p50/p95/p99/mean/min/max in ms, images/s from the mean, and the raw samples (ms).

    With few samples the high percentiles are interpolated between the largest ones: p99 of
    15 samples is close to their max. `n` is in every record so the reader can tell.
    """
    if not samples_s:
        raise ValueError("no samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    mean = float(ms.mean())
    return {
        "n": int(ms.size),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "images_per_call": images_per_call,
        "images_per_s": images_per_call * 1000.0 / mean,
        "samples_ms": [round(float(v), 4) for v in ms],
    }


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))
