"""The serving overhead around `session.run`, measured in interleaved rounds (issue 23, item 4).

Everything a prediction costs besides `session.run` and decoding the image is overhead; the
goals (benchmarks/report/goals.json, "overhead") are in milliseconds at p50:

- in-process: `predict_bytes` − `session.run` − decode;
- over HTTP: `POST /predict` on a new connection − `predict_bytes`, on the host server
  (gunicorn alone) and through the container's front server (nginx → gunicorn).

Differences of p50s measured minutes apart on a shared machine say little about half a
millisecond, so each difference here comes from one loop: round r runs every call once, in an
order rotated by r, and the in-process stages come from the very same `predict_bytes` call
(services/core/stages.py's collector, as the app records them per request).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyspng

from benchmarks.load import Client
from benchmarks.timing import latency_stats
from services.core.model import InferenceModel
from services.core.preprocessing import decode_image, preprocess_bytes
from services.core.stages import STAGES, collect

REPO_ROOT = Path(__file__).resolve().parents[1]


def interleaved(
    calls: dict[str, Callable[[], object]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each of `calls`, `rounds` rounds, each round every call once in an
    order rotated by the round number (so no call always follows the same one)."""
    names = list(calls)
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - started)
    return samples


def core_overhead(model: InferenceModel, png: bytes, rounds: int, warmup: int) -> dict:
    """Interleaved in-process rounds of: bare `session.run` on the preprocessed tensor,
    `predict_bytes` with its stages collected, `decode_image` (the decode stage: header checks,
    PNG checksums, libspng), and libspng alone (the decode floor: no check at all).

    Returns latency records (benchmarks/timing.py) for "session.run", "predict_bytes",
    "decode" and "decode_floor"; predict_bytes' record also holds `stages_us` (p50 µs per stage
    of the same calls) and `overhead_ms` (p50 over the calls of that call's total − its run −
    its decode stage: the quantity the in-process goal judges)."""
    meta = model.metadata
    batch = preprocess_bytes(png, meta.preprocessing)[None]  # (1, 3, S, S)
    per_call: list[dict[str, float]] = []

    def predict() -> None:
        started = time.perf_counter()
        with collect() as seconds:
            model.predict_bytes(png)
        per_call.append({**seconds, "total": time.perf_counter() - started})

    samples = interleaved(
        {
            "session.run": lambda: model.session.run([meta.output_name], {meta.input_name: batch}),
            "predict_bytes": predict,
            "decode": lambda: decode_image(png, model.max_pixels),
            "decode_floor": lambda: pyspng.load(png, "RGB"),
        },
        rounds,
        warmup,
    )
    timed = per_call[-rounds:]  # the warm-up calls are in per_call too
    records = {name: latency_stats(values) for name, values in samples.items()}
    records["predict_bytes"]["stages_us"] = {
        name: float(np.median([1e6 * call.get(name, 0.0) for call in timed]))
        for name in STAGES
        if any(name in call for call in timed)
    }
    records["predict_bytes"]["overhead_ms"] = float(
        np.median(
            [
                1e3 * (call["total"] - call.get("run", 0.0) - call.get("decode", 0.0))
                for call in timed
            ]
        )
    )
    return records


def paired_http(model: InferenceModel, png: bytes, send: Callable[[bytes], object],
                rounds: int, warmup: int,
                extra: dict[str, Callable[[], object]] | None = None) -> dict:
    """Interleaved rounds of `send(png)` (one request, its own connection) and in-process
    `predict_bytes(png)`; latency records "http" and "predict_bytes". The server and this
    process never compute at the same time: every call waits for its answer.

    Where the answer carries the app's `Server-Timing: predict;dur=…` (services/web/hooks.py),
    also "outside_ms": p50 over the requests of each request's time − that request's own
    predict_bytes in the server, the same quantity without comparing two processes'
    predict_bytes (their sessions can differ by more than the goal). `extra` calls join the
    same rounds, each with a latency record of its own name."""
    outside: list[float] = []

    def request() -> None:
        reply = send(png)
        inside = getattr(reply, "server_predict_s", None)
        if inside is not None:
            outside.append(1e3 * (reply.seconds - inside))

    samples = interleaved({"http": request, "predict_bytes": lambda: model.predict_bytes(png),
                           **(extra or {})}, rounds, warmup)
    records = {name: latency_stats(values) for name, values in samples.items()}
    if len(outside) >= rounds:
        records["outside_ms"] = float(np.median(outside[-rounds:]))
    return records


@contextlib.contextmanager
def floor_server(env: dict[str, str], port: int, timeout: float = 60.0) -> Iterator[Client]:
    """benchmarks/floor_app.py under one sync gunicorn worker on 127.0.0.1:`port`."""
    client = Client(f"http://127.0.0.1:{port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--bind", f"127.0.0.1:{port}",
         "--log-level", "warning", "benchmarks.floor_app:app"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.perf_counter() + timeout
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if client.post("/", b"x", "application/octet-stream").status == 200:
                    break
            if proc.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"the floor server on port {port} did not answer")
            time.sleep(0.05)
        yield client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


@contextlib.contextmanager
def host_server(
    env: dict[str, str], port: int, png: bytes, timeout: float = 180.0
) -> Iterator[Client]:
    """`python -m services.runtime.server` on the host (its own process group, ended with
    SIGTERM, then SIGKILL), yielded once it answers POST /predict with 200."""
    client = Client(f"http://127.0.0.1:{port}")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.runtime.server"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ok(proc, client, png, log, timeout)
            yield client
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def _wait_ok(proc: subprocess.Popen, client: Client, png: bytes, log, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"the host server exited with {proc.returncode}:\n"
                f"{log.read()[-3000:].decode('utf-8', 'replace')}"
            )
        with contextlib.suppress(OSError, http.client.HTTPException):
            if client.post("/predict", png, "image/png").status == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the host server on port {client.port}: no 200 within {timeout:.0f} s")
