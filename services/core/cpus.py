"""The CPUs this process may use, and the ONNX Runtime thread count that fits them."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on: honours cpusets (`--cpuset-cpus`), unlike os.cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def default_threads(workers: int = 1) -> int:
    """ORT intra-op threads so that workers × threads ≤ usable CPUs (ORT sizes its pool from
    the host's cores, not from a container's CPU quota)."""
    return max(1, usable_cpus() // max(1, workers))
