"""(6) Peers, side by side, as plain host processes on 127.0.0.1 with one worker and the same
thread count: launch → first 200, then per-request latency, every server timed by the same
client (benchmarks.load.CONNECTION_POLICY).

- `mlflow models serve` of the registered PyTorch model (the MLflow way to serve it);
- `mlflow models serve` of the benchmark's FP32 ONNX file (onnx flavour, session options as
  ours), taking the preprocessed tensor: against the PyTorch model, "ORT vs torch" inside the
  same server with the same request;
- `mlflow models serve` of a pyfunc around the same ONNX file that takes the encoded image, as
  MLflow users serve images (base64 in a DataFrame column; the same preprocessing code and
  session options as ours): against our server with the same file and the same PNG, this is
  "our server vs MLflow's" and nothing else;
- our service (`python -m services.runtime.server`, gunicorn) with the FP32 and with the INT8 file.

Each request format is in the report beside its numbers (PEERS[…]["request"]), and the report
compares only rows with the same request: tensor with tensor, PNG with PNG. Each answers the
check images first; every answer is compared with the ONNX FP32 reference.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
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

from benchmarks.checks import (
    assert_answers_ok,
    cross_check,
    logits_to_probabilities,
    response_checker,
)
from benchmarks.load import Client, Response, closed_loop
from benchmarks.machine import production_env
from benchmarks.probe import REPO_ROOT
from services.core.model import InferenceModel
from services.core.preprocessing import preprocess_bytes
from tests.conftest import unavailable
from tests.support.containers import free_port

VENV_BIN = Path(sys.executable).parent
TENSOR_REQUEST = "preprocessed (1, 3, 224, 224) float32 tensor as JSON `{\"inputs\": …}`"
PNG_REQUEST = "PNG body (`image/png`), POST /predict"
PNG_B64_REQUEST = ("the same PNG, base64 in a DataFrame column as JSON "
                   "`{\"dataframe_split\": …}`")
PEERS = {
    "mlflow-pytorch": {"server": "`mlflow models serve`, PyTorch model (registry)",
                       "precision": "fp32", "request": TENSOR_REQUEST},
    "mlflow-onnx-fp32": {"server": "`mlflow models serve`, ONNX FP32 file (onnx flavour)",
                         "precision": "fp32", "request": TENSOR_REQUEST},
    "mlflow-onnx-png": {"server": "`mlflow models serve`, pyfunc: PNG → our preprocessing → "
                                  "ONNX FP32 file", "precision": "fp32",
                        "request": PNG_B64_REQUEST},
    "ours-fp32": {"server": "our gunicorn service (services/), ONNX FP32 file",
                  "precision": "fp32", "request": PNG_REQUEST},
    "ours-int8": {"server": "our gunicorn service (services/), ONNX INT8 file",
                  "precision": "int8", "request": PNG_REQUEST},
}


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A server process in its own session, ended (SIGTERM, then SIGKILL) by its group id.
    Its output goes to a temporary file, quoted when it fails to come up."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log,
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


def _first_ok(proc: subprocess.Popen, client: Client, path: str, body: bytes,
              content_type: str, started: float, timeout: float = 180.0) -> float:
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n"
                               f"{_log_tail(proc)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if client.post(path, body, content_type).status == 200:
                return time.perf_counter() - started
        time.sleep(0.05)
    raise TimeoutError(f"port {client.port}{path}: no 200 within {timeout:.0f} s:\n"
                       f"{_log_tail(proc)}")


def _tensor_body(png: bytes, spec) -> bytes:
    tensor = preprocess_bytes(png, spec)[None]  # (1, 3, 224, 224)
    return json.dumps({"inputs": tensor.tolist()}).encode()


def _png_b64_body(png: bytes) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["image"],
                                           "data": [[base64.b64encode(png).decode()]]}}).encode()


# The pyfunc, as a model from code (MLflow 3's way: the file is saved with the model, nothing
# pickled). Preprocessing and session are services/'s own (installed in this environment;
# `--env-manager local`), so the only difference from our server is the server.
PNG_PYFUNC = """
import base64

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PngClassifier(PythonModel):
    def load_context(self, context):
        from services.core.model import InferenceModel

        self.model = InferenceModel(context.artifacts["onnx"],
                                    threads=int(context.model_config["threads"]))

    def predict(self, context, model_input, params=None):
        from services.core.preprocessing import preprocess_bytes

        meta = self.model.metadata
        batch = np.stack([preprocess_bytes(base64.b64decode(text), meta.preprocessing)
                          for text in model_input["image"]])  # (N, 3, S, S)
        return self.model.session.run([meta.output_name], {meta.input_name: batch})[0]


mlflow.models.set_model(PngClassifier())
"""


def _peer_logits(body: bytes) -> np.ndarray:
    """An MLflow answer as (N, C) logits: {"predictions": [[l0, l1]]}, DataFrame records
    ([{"0": l0, "1": l1}]) or, from the onnx flavour, {"predictions": {output: [[…]]}}."""
    predictions = json.loads(body)["predictions"]
    if isinstance(predictions, dict):
        (predictions,) = predictions.values()
    if predictions and isinstance(predictions[0], dict):
        predictions = [list(row.values()) for row in predictions]
    return np.asarray(predictions, dtype=np.float64)


def _as_prediction(reply: Response, classes: list[str]) -> Response:
    """An MLflow reply rewritten as our prediction JSON, so one checker serves all peers."""
    if reply.status != 200:
        return reply
    try:
        logits = _peer_logits(reply.body)
    except (ValueError, KeyError, TypeError) as exc:
        return Response(reply.status, f"unexpected body ({exc}): {reply.body[:200]!r}"
                        .encode(), reply.seconds)
    if logits.shape != (1, len(classes)):
        return Response(reply.status, f"logits of shape {logits.shape}".encode(),
                        reply.seconds)
    body = {"probabilities": logits_to_probabilities(logits[0], classes)}
    return Response(reply.status, json.dumps(body).encode(), reply.seconds)


def _serve(name: str, args: list[str], env: dict[str, str], port: int, *, path: str,
           content_type: str, encode, bench_model, config, reference) -> dict:
    """Launch → first 200 (seconds), the check images, then sequential timed requests."""
    spec = PEERS[name]
    client = Client(f"http://127.0.0.1:{port}")
    classes = list(reference.classes)

    def as_ours(reply: Response) -> Response:
        return _as_prediction(reply, classes) if content_type == "application/json" else reply

    check = response_checker(reference, bench_model.image.name, spec["precision"])
    body = encode(bench_model.image_bytes)
    started = time.perf_counter()
    with _process(args, env) as proc:
        cold = _first_ok(proc, client, path, body, content_type, started)
        answers = cross_check(lambda png: as_ours(client.post(path, encode(png), content_type)),
                              reference, bench_model.check_images[:config.http_check_images],
                              spec["precision"])
        url = f"http://127.0.0.1:{port}"
        closed_loop(url, path, body, content_type, 1, config.warmup)
        record = closed_loop(url, path, body, content_type, 1, config.peer_requests,
                             validate=lambda reply: check(as_ours(reply)))
    record.update(**spec, first_200_s=cold, request_bytes=len(body), answers=answers)
    return record


def _mlflow_args(model: str, port: int) -> list[str]:
    return [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port), "-w", "1"]


def _mlflow_env(extra: dict[str, str]) -> dict[str, str]:
    # PATH: the server execs `uvicorn` by name, which lives beside this interpreter.
    return production_env({**extra,
                           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})


@pytest.fixture(scope="module")
def mlflow_ready(bench_config) -> None:
    if bench_config.skipped("mlflow-peer"):
        pytest.skip("MLflow peers skipped by MHIST_BENCH_SKIP/--bench-skip")
    if importlib.util.find_spec("mlflow") is None:
        unavailable("mlflow is not installed in this environment")


@pytest.fixture(scope="module")
def spec(bench_model):
    return InferenceModel(bench_model.fp32, threads=1).metadata.preprocessing


@pytest.fixture(scope="module")
def onnx_mlflow_model(mlflow_ready, bench_model, bench_config, spec) -> Path:
    """The FP32 ONNX file saved as an MLflow model (onnx flavour), with the session options our
    service uses (threads, sequential, spinning off), a float32 tensor signature, and the
    logits as its only output."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    folder = bench_model.dir / "mlflow-onnx-fp32"
    if not folder.is_dir():
        model = InferenceModel(bench_model.fp32, threads=1)
        meta = model.metadata
        example = preprocess_bytes(bench_model.image_bytes, spec)[None]  # (1, 3, 224, 224)
        logits = model.session.run([meta.output_name], {meta.input_name: example})[0]
        graph = onnx.load(str(bench_model.fp32))
        # Our server fetches only the logits (the explanation's feature map only on request);
        # MLflow's onnx flavour returns every graph output, so it gets the same graph with the
        # logits as its one output: same weights, same computation, same answer to serialise.
        kept = [o for o in graph.graph.output if o.name == meta.output_name]
        del graph.graph.output[:]
        graph.graph.output.extend(kept)
        mlflow.onnx.save_model(
            graph, str(folder), save_as_external_data=False,
            signature=infer_signature(example, {meta.output_name: logits}),
            onnx_execution_providers=["CPUExecutionProvider"],
            onnx_session_options={"intra_op_num_threads": bench_config.threads,
                                  "inter_op_num_threads": 1, "execution_mode": "sequential",
                                  "extra_session_config": {
                                      "session.intra_op.allow_spinning": "0"}})
    return folder


@pytest.fixture(scope="module")
def png_mlflow_model(mlflow_ready, bench_model, bench_config, spec) -> Path:
    """A pyfunc around the FP32 ONNX file that takes base64 PNG bytes in a column "image"."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    folder = bench_model.dir / f"mlflow-onnx-png-{bench_config.threads}t"
    if not folder.is_dir():
        code = bench_model.dir / "png_pyfunc.py"
        code.write_text(PNG_PYFUNC)
        example = pd.DataFrame({"image": [base64.b64encode(bench_model.image_bytes).decode()]})
        model = InferenceModel(bench_model.fp32, threads=1)
        logits = model.session.run([model.metadata.output_name], {
            model.metadata.input_name: preprocess_bytes(bench_model.image_bytes, spec)[None]})[0]
        mlflow.pyfunc.save_model(
            str(folder), python_model=str(code), artifacts={"onnx": str(bench_model.fp32)},
            model_config={"threads": bench_config.threads},
            signature=infer_signature(example, logits))
    return folder


def test_mlflow_pytorch_peer(mlflow_ready, torch_available, bench_model, bench_config, spec,
                             reference, results):
    port = free_port()
    threads = str(bench_config.threads)
    record = _serve(
        "mlflow-pytorch", _mlflow_args(bench_model.model_uri, port),
        # OMP_NUM_THREADS: MLflow's PyTorch flavour sets no thread count of its own.
        _mlflow_env({"MLFLOW_TRACKING_URI": bench_model.tracking_uri,
                     "OMP_NUM_THREADS": threads}), port,
        path="/invocations", content_type="application/json",
        encode=lambda png: _tensor_body(png, spec), bench_model=bench_model,
        config=bench_config, reference=reference)
    record.update(model_uri=bench_model.model_uri, settings=f"OMP_NUM_THREADS={threads}")
    results.put("peer", "mlflow-pytorch", record)
    assert_answers_ok(record["answers"])
    assert record["errors"] == 0, record["error_examples"]


def test_mlflow_onnx_peer(onnx_mlflow_model, bench_model, bench_config, spec, reference,
                          results):
    port = free_port()
    record = _serve(
        "mlflow-onnx-fp32", _mlflow_args(str(onnx_mlflow_model), port), _mlflow_env({}), port,
        path="/invocations", content_type="application/json",
        encode=lambda png: _tensor_body(png, spec), bench_model=bench_model,
        config=bench_config, reference=reference)
    record.update(settings=f"onnx_session_options: intra-op {bench_config.threads}, "
                           "inter-op 1, sequential, spinning off")
    results.put("peer", "mlflow-onnx-fp32", record)
    assert_answers_ok(record["answers"])
    assert record["errors"] == 0, record["error_examples"]


def test_mlflow_png_peer(png_mlflow_model, bench_model, bench_config, reference, results):
    port = free_port()
    record = _serve(
        "mlflow-onnx-png", _mlflow_args(str(png_mlflow_model), port), _mlflow_env({}), port,
        path="/invocations", content_type="application/json", encode=_png_b64_body,
        bench_model=bench_model, config=bench_config, reference=reference)
    record.update(settings=f"InferenceModel: intra-op {bench_config.threads}, inter-op 1, "
                           "sequential, spinning off (as ours)")
    results.put("peer", "mlflow-onnx-png", record)
    assert_answers_ok(record["answers"])
    assert record["errors"] == 0, record["error_examples"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_our_server_host_process(precision, bench_model, bench_config, reference, results):
    """Our service the way the peers run: a gunicorn process on the host, one worker."""
    port = free_port()
    name = f"ours-{precision}"
    record = _serve(
        name, [str(VENV_BIN / "python"), "-m", "services.runtime.server"],
        production_env({"MODEL_PATH": str(bench_model.file(precision)), "PORT": str(port),
                        "HOST": "127.0.0.1", "WEB_CONCURRENCY": "1",
                        "ORT_INTRA_OP_THREADS": str(bench_config.threads)}), port,
        path="/predict", content_type="image/png", encode=lambda png: png,
        bench_model=bench_model, config=bench_config, reference=reference)
    record.update(settings=f"WEB_CONCURRENCY=1, ORT_INTRA_OP_THREADS={bench_config.threads}")
    results.put("peer", name, record)
    assert_answers_ok(record["answers"])
    assert record["errors"] == 0, record["error_examples"]
