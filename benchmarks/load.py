"""HTTP clients for the benchmarks: one request, a bounded closed-loop load on 127.0.0.1, and
wrk for throughput.

One client and one connection policy for every HTTP target (CONNECTION_POLICY): each request
opens its own TCP connection, says `Connection: close`, and is timed from before the connect
to the last byte of the body. gunicorn's sync workers close every connection anyway; giving
the servers that could keep one alive (nginx, uvicorn) the same policy keeps the rows alike.
http.client rather than requests: less client-side CPU per request, which matters when client
and server share two cores.
"""

from __future__ import annotations

import http.client
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.timing import latency_stats

CONNECTION_POLICY = ("one new TCP connection per request (`Connection: close`), timed from "
                     "before the connect to the last byte of the response, by one "
                     "http.client client on 127.0.0.1")


WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")
WRK_POLICY = ("wrk 4 (C, one event-loop thread), N keep-alive connections each sending its "
              "next request as soon as its answer arrives, for a fixed time; every answer "
              "checked for status 200 and the reference label (benchmarks/wrk_post.lua)")


class LoadGeneratorMissing(RuntimeError):
    """wrk is not installed (Debian: apt-get install wrk; `make test-deps` does)."""


@dataclass
class Response:
    status: int
    body: bytes
    seconds: float
    server_predict_s: float | None = None  # the app's Server-Timing `predict` (model time)

    def json(self) -> object:
        return json.loads(self.body)


class Client:
    """Requests to one host:port, each on its own connection (CONNECTION_POLICY)."""

    def __init__(self, base_url: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout

    def post(self, path: str, body: bytes, content_type: str) -> Response:
        started = time.perf_counter()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": content_type,
                                                          "Connection": "close"})
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        return Response(reply.status, data, time.perf_counter() - started,
                        server_predict(reply.getheader("Server-Timing")))


def server_predict(header: str | None) -> float | None:
    """Seconds of `predict;dur=MS` in a Server-Timing header (services/web/hooks.py), or None."""
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "predict":
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    try:
                        return float(value) / 1000.0
                    except ValueError:
                        return None
    return None


def closed_loop(url: str, path: str, body: bytes, content_type: str, concurrency: int,
                total: int, validate=None, timeout: float = 60.0) -> dict:
    """`concurrency` clients each send their next request as soon as the last one answered,
    until `total` requests have been sent. Latency stats of the successful ones, images/s over
    the wall time, and the error count (non-200, invalid body, or exception)."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = Client(url, timeout)
        while True:
            with lock:
                if next(counter) >= total:
                    return
            try:
                reply = client.post(path, body, content_type)
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(repr(exc))
                continue
            problem = None if reply.status == 200 else f"HTTP {reply.status}"
            if problem is None and validate is not None:
                problem = validate(reply)
            with lock:
                if problem is None:
                    latencies.append(reply.seconds)
                else:
                    errors.append(f"{problem}: {reply.body[:200]!r}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * total)
    wall = time.perf_counter() - started
    record = latency_stats(latencies) if latencies else {"n": 0}
    record.update({
        "concurrency": concurrency,
        "requests": total,
        "ok": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "wall_s": wall,
        # Throughput counts only the answered-well requests.
        "throughput_images_per_s": len(latencies) / wall if wall > 0 else 0.0,
    })
    return record


def wrk_path() -> str:
    """The wrk executable; LoadGeneratorMissing (saying how to install it) when there is none."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadGeneratorMissing("wrk is not installed (Debian: apt-get install wrk; "
                                   "`make test-deps` installs it)")
    return wrk


def wrk_load(url: str, path: str, body: bytes, content_type: str, concurrency: int,
             seconds: float, label: str) -> dict:
    """`concurrency` keep-alive connections from wrk for `seconds` (WRK_POLICY): images/s of the
    good answers (200 with `label`), wrk's latency percentiles (ms), and the error count.

    wrk rather than Python threads: it costs a fraction of the CPU per request, and client and
    server share the machine's cores here, so a Python client would cap what it measures.
    """
    wrk = wrk_path()
    with tempfile.NamedTemporaryFile(suffix=".body") as body_file:
        body_file.write(body)
        body_file.flush()
        command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency",
                   "--timeout", "30s", "-s", str(WRK_SCRIPT), url.rstrip("/") + path, "--",
                   body_file.name, content_type, label]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((text for text in done.stdout.splitlines() if text.startswith("WRK_JSON ")),
                None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (status {done.returncode}): "
                           f"{(done.stderr or done.stdout)[-600:]}")
    return wrk_record(json.loads(line.removeprefix("WRK_JSON ")), concurrency)


def wrk_record(raw: dict, concurrency: int) -> dict:
    """wrk's summary (µs, counts) → the record closed_loop writes (ms, images/s, errors)."""
    wall = raw["duration_us"] / 1e6
    errors = (raw["bad"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
              + raw["timeouts"])
    return {
        "client": "wrk",
        "concurrency": concurrency,
        "requests": raw["requests"],
        "ok": raw["good"],
        "errors": errors,
        "error_examples": [raw["first_bad"]] if raw["first_bad"] else [],
        "wall_s": wall,
        "throughput_images_per_s": raw["good"] / wall if wall > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1000.0,
        "p90_ms": raw["p90_us"] / 1000.0,
        "p99_ms": raw["p99_us"] / 1000.0,
        "max_ms": raw["max_us"] / 1000.0,
        "mean_ms": raw["mean_us"] / 1000.0,
        "wrk": raw,
    }
