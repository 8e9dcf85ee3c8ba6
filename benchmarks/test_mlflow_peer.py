"""(6) A peer, side by side: `mlflow models serve` of the registered PyTorch model (the MLflow
way to serve it) vs our Flask service (gunicorn + ONNX INT8), both as plain host processes on
127.0.0.1 with one worker and the same thread count: launch → first 200, then per-request
latency. The peer takes the preprocessed tensor as JSON (`{"inputs": …}`, its signature);
ours takes the PNG bytes and preprocesses them itself — the request each is built for.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.checks import assert_valid_prediction, response_problem
from benchmarks.load import Client, closed_loop
from benchmarks.probe import REPO_ROOT
from services.model import InferenceModel, softmax
from services.preprocessing import preprocess_bytes
from tests.support.containers import free_port

VENV_BIN = Path(sys.executable).parent


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A server process in its own session, ended (SIGTERM, then SIGKILL) by its group id.
    Its output goes to a temporary file, quoted when it fails to come up."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def _log_tail(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()[-3000:].decode("utf-8", "replace")  # type: ignore[attr-defined]


def _first_ok(proc: subprocess.Popen, url: str, path: str, body: bytes, content_type: str,
              started: float, timeout: float = 180.0) -> tuple[float, bytes]:
    client = Client(url)
    deadline = started + timeout
    try:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n"
                                   f"{_log_tail(proc)}")
            try:
                reply = client.post(path, body, content_type)
            except OSError:
                client.close()
            else:
                if reply.status == 200:
                    return time.perf_counter() - started, reply.body
            time.sleep(0.05)
    finally:
        client.close()
    raise TimeoutError(f"{url}{path}: no 200 within {timeout:.0f} s:\n{_log_tail(proc)}")


def _peer_logits(body: bytes) -> np.ndarray:
    """The peer's answer as (N, C) logits: {"predictions": [[l0, l1]]}, or DataFrame records
    ({"predictions": [{"0": l0, "1": l1}]}) depending on the MLflow version."""
    rows = json.loads(body)["predictions"]
    if rows and isinstance(rows[0], dict):
        rows = [list(row.values()) for row in rows]
    return np.asarray(rows, dtype=np.float64)


def _peer_problem(reply, classes: list[str]) -> str | None:
    """Valid = one finite row of logits, one per class."""
    try:
        rows = _peer_logits(reply.body)
    except (ValueError, KeyError, TypeError) as exc:
        return f"unexpected body ({exc}): {reply.body[:200]!r}"
    if rows.shape != (1, len(classes)) or not np.isfinite(rows).all():
        return f"logits of shape {rows.shape}: {rows!r:.200}"
    return None


def _serve(name: str, args: list[str], env: dict[str, str], port: int, path: str, body: bytes,
           content_type: str, validate, config) -> tuple[dict, bytes]:
    """Launch → first 200 (seconds), then sequential requests; (record, first response body)."""
    started = time.perf_counter()
    with _process(args, env) as proc:
        url = f"http://127.0.0.1:{port}"
        cold, first = _first_ok(proc, url, path, body, content_type, started)
        closed_loop(url, path, body, content_type, 1, config.warmup)
        record = closed_loop(url, path, body, content_type, 1, config.peer_requests,
                             validate=validate)
    record.update(server=name, first_200_s=cold, request_bytes=len(body))
    return record, first


@pytest.fixture(scope="module")
def peer_ready(bench_config, torch_available) -> None:
    if bench_config.skipped("mlflow-peer"):
        pytest.skip("MLflow peer skipped by MHIST_BENCH_SKIP/--bench-skip")
    if importlib.util.find_spec("mlflow") is None:
        pytest.skip("mlflow is not installed in this environment")


def test_mlflow_serve_peer(peer_ready, bench_model, bench_config, png_224, results):
    model = InferenceModel(bench_model.int8, threads=1)
    tensor = preprocess_bytes(png_224, model.metadata.preprocessing)[None]  # (1, 3, 224, 224)
    body = json.dumps({"inputs": tensor.tolist()}).encode()
    port = free_port()
    threads = str(bench_config.threads)
    record, first = _serve(
        "mlflow models serve (PyTorch)",
        [str(VENV_BIN / "mlflow"), "models", "serve", "-m", bench_model.model_uri,
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        # PATH: the server execs `uvicorn` by name, which lives beside this interpreter.
        {"MLFLOW_TRACKING_URI": bench_model.tracking_uri, "OMP_NUM_THREADS": threads,
         "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        port, "/invocations", body, "application/json",
        lambda r: _peer_problem(r, bench_model.classes), bench_config)
    results.put("peer", "mlflow", {**record, "model_uri": bench_model.model_uri})
    assert record["errors"] == 0, record["error_examples"]
    logits = _peer_logits(first)  # (1, C)
    probabilities = softmax(logits)[0]
    assert_valid_prediction({"probabilities": dict(zip(bench_model.classes,
                                                       probabilities.tolist(), strict=True))},
                            bench_model.classes)


def test_onnx_flask_host_process(bench_model, bench_config, png_224, results):
    """Our service the same way the peer runs: a gunicorn process on the host, one worker."""
    port = free_port()
    record, first = _serve(
        "gunicorn + ONNX INT8 (services/)",
        [str(VENV_BIN / "python"), "-m", "services.server"],
        {"MODEL_PATH": str(bench_model.int8), "PORT": str(port), "HOST": "127.0.0.1",
         "WEB_CONCURRENCY": "1", "ORT_INTRA_OP_THREADS": str(bench_config.threads)},
        port, "/predict", png_224, "image/png",
        lambda r: response_problem(r, bench_model.classes), bench_config)
    results.put("peer", "onnx_flask", record)
    assert record["errors"] == 0, record["error_examples"]
    assert_valid_prediction(json.loads(first), bench_model.classes)
