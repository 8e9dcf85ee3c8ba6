"""A small bounded HTTP load client (threads + requests) and /proc readers for containers.

    result = run_load(url, bodies, total=2000, concurrency=8,
                      headers={"Content-Type": "image/png"})
    result.errors, result.throughput_rps, result.p50_ms

Bounded on purpose: exactly `total` requests, each with a timeout, on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from tests.support.containers import Container


@dataclass
class LoadResult:
    requests: int
    seconds: float
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # exceptions and non-2xx, first few kept
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.requests - self.statuses.get(200, 0)

    @property
    def throughput_rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0

    @property
    def p99_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]

    def summary(self) -> str:
        return (f"{self.requests} requests, {self.errors} errors, {self.seconds:.1f} s, "
                f"{self.throughput_rps:.1f} req/s, p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, statuses {dict(self.statuses)}")


def run_load(url: str, bodies: Sequence[bytes], total: int, concurrency: int,
             headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> LoadResult:
    """POST `total` requests (bodies used round-robin) from `concurrency` threads."""
    counter = itertools.count()
    lock = threading.Lock()
    result = LoadResult(requests=total, seconds=0.0)

    def worker() -> None:
        with requests.Session() as session:
            while (index := next(counter)) < total:
                started = time.perf_counter()
                try:
                    response = session.post(url, data=bodies[index % len(bodies)],
                                            headers=dict(headers or {}), timeout=timeout)
                    status, note = response.status_code, response.text[:200]
                except requests.RequestException as exc:
                    status, note = -1, repr(exc)
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                with lock:
                    result.statuses[status] += 1
                    result.latencies_ms.append(elapsed_ms)
                    if status != 200 and len(result.failures) < 20:
                        result.failures.append(f"#{index}: {status} {note}")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    result.seconds = time.perf_counter() - started
    return result


# Run inside the container with its own Python: the children of PID 1 (gunicorn's workers)
# and their resident memory from /proc — no psutil, no ps in a slim image.
_WORKER_RSS = """
import os
procs = {}
for pid in (p for p in os.listdir('/proc') if p.isdigit()):
    try:
        text = open(f'/proc/{pid}/status').read()
        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
    except OSError:
        continue
    fields = dict(line.split(':', 1) for line in text.splitlines() if ':' in line)
    procs[pid] = (fields.get('PPid', '').strip(), fields.get('VmRSS', '0').split()[0], cmdline)
# gunicorn's master: PID 1, or the one the front server started with --upstream.
master = next((pid for pid, (_, _, cmd) in procs.items() if b'--upstream' in cmd), '1')
for pid, (ppid, rss, _) in sorted(procs.items()):
    if ppid == master:
        print(pid, rss)
"""


def worker_rss_kb(box: Container) -> dict[int, int]:
    """{pid: VmRSS in kB} of every gunicorn worker (the children of gunicorn's master)."""
    result = box.exec("python", "-c", _WORKER_RSS)
    if result.returncode != 0:
        raise RuntimeError(f"reading /proc in {box.name} failed: {result.stderr}")
    return {int(pid): int(kb) for pid, kb in (line.split() for line in result.stdout.splitlines())}


def kill_in_container(box: Container, pid: int, signal_number: int) -> None:
    """Send a signal to a process inside the container, as the container's own user."""
    result = box.exec("python", "-c", f"import os; os.kill({pid}, {signal_number})")
    if result.returncode != 0:
        raise RuntimeError(f"kill {pid} in {box.name} failed: {result.stderr}")
