"""The Lambda image for real: built with podman/docker, run by awslambdaric against a Runtime
API server on 127.0.0.1 (tests/support/lambda_runtime.py), fed v1, v2, URL and ALB events.

AWS itself is unreachable here; everything from the runtime client inwards is the code that
runs in Lambda. INIT time (container start → first `next`) and per-invocation latency are
printed (`-s` shows them), never asserted: this machine's timings say nothing about Lambda's.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from services.core.model import InferenceModel
from tests.support.containers import run_container
from tests.support.events import EVENT_BUILDERS, make_v2_event
from tests.support.images import built_image
from tests.support.lambda_runtime import LambdaRuntimeServer

pytestmark = pytest.mark.container
# awslambdaric (PID 1) ignores SIGTERM, as in Lambda: let removal kill it after 1 s, not 10.
RUN_ARGS = ("--stop-timeout", "1")
REPEATS = 20  # bounded latency loop


@pytest.fixture(scope="module")
def lambda_image(require_containers: str, model_int8_path: Path) -> str:
    """lambda/Dockerfile with the fixture model baked in (built once per session)."""
    return built_image("lambda", model_int8_path)


def image_python(engine: str, image: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([engine, "run", "--rm", "--entrypoint", "python", image, "-c", code],
                          capture_output=True, text=True, timeout=120)


def body(invocation) -> dict:
    assert invocation.error is None, invocation.error
    response = invocation.response
    assert response["isBase64Encoded"] is False
    return json.loads(response["body"])


def test_serves_every_event_kind(lambda_image, require_containers, model_int8_path,
                                 sample_image_bytes):
    expected = InferenceModel(model_int8_path).predict_bytes(sample_image_bytes)
    with LambdaRuntimeServer() as runtime, run_container(
        lambda_image, network_host=True, engine=require_containers, extra_args=RUN_ARGS,
        env={"AWS_LAMBDA_RUNTIME_API": runtime.address},
    ) as box:
        init_s = runtime.wait_first_next(timeout=120) - box.started_at
        latencies: dict[str, float] = {}
        for name, build in EVENT_BUILDERS.items():
            event = build(method="POST", path="/predict", body=sample_image_bytes, binary=True,
                          headers={"Content-Type": "image/png"})
            invocation = runtime.invoke(event, timeout=60)
            got = body(invocation)
            assert invocation.response["statusCode"] == 200, got
            assert got["label"] == expected["label"] and got["model"] == expected["model"]
            for cls, p in expected["probabilities"].items():
                assert got["probabilities"][cls] == pytest.approx(p, abs=1e-5)
            latencies[name] = invocation.latency_s
            health = runtime.invoke(build(method="GET", path="/health"), timeout=30)
            assert body(health) == {"status": "ok"}

        bad = runtime.invoke(make_v2_event(method="POST", path="/predict", body=b"not an image",
                                           binary=True, headers={"Content-Type": "image/png"}))
        assert bad.response["statusCode"] == 400
        assert body(bad)["error"]["code"]
        odd = runtime.invoke({"Records": [{"eventSource": "aws:sqs"}]})
        assert odd.response["statusCode"] == 400
        assert body(odd)["error"]["code"] == "unsupported_event"

        warm = [runtime.invoke(make_v2_event(
            method="POST", path="/predict", body=sample_image_bytes, binary=True,
            headers={"Content-Type": "image/png"}), timeout=60).latency_s for _ in range(REPEATS)]
        logs = box.logs()
    assert not runtime.unknown_posts
    lines = [json.loads(x) for x in logs.splitlines() if x.startswith('{"event": "request"')]
    assert len(lines) == len(runtime.invocations)  # one log line per invocation
    # No event carried an X-Request-ID, so each line is tagged with Lambda's request id.
    assert {x["request_id"] for x in lines} == set(runtime.invocations)
    assert {x["target"] for x in lines} == {"lambda"}
    assert lines[0]["cold_start"] is True and not any(x["cold_start"] for x in lines[1:])
    print(f"\n[lambda container] INIT (container start → first next): {init_s:.2f} s")
    print("[lambda container] first /predict per event kind (ms): "
          + ", ".join(f"{k} {v * 1000:.1f}" for k, v in latencies.items()))
    print(f"[lambda container] warm /predict over {REPEATS} (ms): "
          f"median {statistics.median(warm) * 1000:.1f}, max {max(warm) * 1000:.1f}")


def test_init_failure_is_reported(lambda_image, require_containers):
    with LambdaRuntimeServer() as runtime, run_container(
        lambda_image, network_host=True, engine=require_containers, extra_args=RUN_ARGS,
        env={"AWS_LAMBDA_RUNTIME_API": runtime.address, "MODEL_PATH": "/opt/model/absent.onnx"},
    ):
        error = runtime.wait_init_error(timeout=120)
    assert "Lambda INIT failed" in error["errorMessage"]
    assert "/opt/model/absent.onnx" in error["errorMessage"]
    assert "ModelLoadError" in error["errorType"]
    assert not runtime.next_calls  # it never asked for an event


def test_image_has_no_torch_and_runs_as_non_root(lambda_image, require_containers):
    result = image_python(require_containers, lambda_image, (
        "import importlib.util, os, json; "
        "print(json.dumps({'uid': os.getuid(), "
        "'missing': [m for m in ('torch', 'torchvision', 'mlflow', 'awsdeploy') "
        "if importlib.util.find_spec(m) is None], "
        "'present': [m for m in ('onnxruntime', 'awslambdaric', 'apig_wsgi', 'services', "
        "'boto3') "
        "if importlib.util.find_spec(m) is not None]}))"))
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["uid"] != 0
    assert facts["missing"] == ["torch", "torchvision", "mlflow", "awsdeploy"]
    # boto3 for the S3 flow, in this image only (tests/test_lambda_s3.py checks the others).
    assert facts["present"] == ["onnxruntime", "awslambdaric", "apig_wsgi", "services", "boto3"]
    torch = image_python(require_containers, lambda_image, "import torch")
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr
