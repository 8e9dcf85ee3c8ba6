"""services/Dockerfile built and run for real (docker when a daemon answers, else podman).

The image bakes the INT8 fixture model in (build argument MODEL_FILE), exactly as
`python -m awsdeploy.images build flask --model ...` does. BASE_IMAGE comes from the
environment (.ci/run sets localhost/python-base:3.11-bookworm on the dev machines).
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from awsdeploy import container_engine
from benchmarks.report.goals import GOALS
from services.core.model import InferenceModel
from tests.support.containers import image_healthcheck, run_container, wait_for_http
from tests.support.images import built_image

pytestmark = pytest.mark.container

CONTAINER_PORT = 8080
# The image size goal of the benchmarks (a serving image with torch in it would be > 1 GB): the
# bound catches a heavy dependency creeping in.
MAX_IMAGE_MB = GOALS.image_size_mb


@pytest.fixture(scope="module")
def flask_image(require_containers: str, model_int8_path: Path) -> str:
    """services/Dockerfile with the fixture model baked in (built once per session)."""
    return built_image("flask", model_int8_path)


def post_png(url: str, data: bytes) -> dict:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_image_answers_like_the_core(flask_image, model_int8_path, sample_image_bytes,
                                     record_property):
    expected = InferenceModel(model_int8_path, threads=1).predict_bytes(sample_image_bytes)
    size_mb = container_engine.image_size_bytes(flask_image) / 1e6
    record_property("image_size_mb", round(size_mb, 1))
    print(f"{flask_image}: {size_mb:.0f} MB")
    assert size_mb < MAX_IMAGE_MB

    with run_container(flask_image, port=CONTAINER_PORT) as box:
        ready_s = wait_for_http(box.url("/ready"), timeout=90, container=box)
        ready_after_run_s = time.perf_counter() - box.started_at
        record_property("ready_after_run_s", round(ready_after_run_s, 2))
        print(f"/ready {ready_s:.2f} s after polling began, {ready_after_run_s:.2f} s after run")
        # The image's own HEALTHCHECK command succeeds inside it (no curl in the image).
        healthcheck = image_healthcheck(flask_image)
        assert healthcheck is not None, "HEALTHCHECK missing from the image configuration"
        probe = box.exec(*healthcheck)
        assert probe.returncode == 0, probe.stderr
        answer = post_png(box.url("/predict"), sample_image_bytes)
        assert answer["label"] == expected["label"]
        assert answer["model"] == expected["model"]
        assert answer["threshold"] == expected["threshold"]
        for name, p in expected["probabilities"].items():
            assert answer["probabilities"][name] == pytest.approx(p, abs=1e-6)

        # Serving stack only: no torch, torchvision or mlflow inside.
        for module in ("torch", "torchvision", "mlflow"):
            probe = box.exec("python", "-c", f"import {module}")
            assert probe.returncode != 0
            assert f"No module named '{module}'" in probe.stderr
        # gunicorn (PID 1) and its workers run as the image's non-root user.
        status = box.exec("sh", "-c", "grep -H '^Uid:' /proc/[0-9]*/status").stdout
        assert {int(line.split()[1]) for line in status.splitlines()} == {10001}
        assert box.exec("id", "-u").stdout.strip() == "10001"

        stopped = box.stop(timeout=10)
        logs = box.logs()
    assert stopped.exit_code == 0, logs[-3000:]
    # Well under the engine's 10 s SIGKILL deadline: workers drained and exited on SIGTERM.
    assert stopped.seconds < 5, f"stop took {stopped.seconds:.1f} s\n{logs[-3000:]}"
    record_property("stop_s", round(stopped.seconds, 2))
    assert '"route": "/predict", "path": "/predict", "status": 200' in logs


def test_mounted_model_replaces_the_baked_one(flask_image, model_fp32_path, sample_image_bytes):
    expected = InferenceModel(model_fp32_path, threads=1).predict_bytes(sample_image_bytes)
    volume = f"{model_fp32_path}:/models/mounted.onnx:ro"
    with run_container(flask_image, port=CONTAINER_PORT, volumes=[volume],
                       env={"MODEL_PATH": "/models/mounted.onnx", "WEB_CONCURRENCY": "1",
                            "MHIST_API_TOKEN": "tok"}) as box:
        wait_for_http(box.url("/ready"), timeout=90, container=box)
        request = urllib.request.Request(
            box.url("/metadata"), headers={"Authorization": "Bearer tok"})
        with urllib.request.urlopen(request, timeout=10) as response:
            metadata = json.loads(response.read())
        assert metadata["precision"] == "fp32"
        assert metadata["sha256"] == InferenceModel(model_fp32_path, threads=1).sha256
        request = urllib.request.Request(
            box.url("/predict"), data=sample_image_bytes,
            headers={"Content-Type": "image/png", "Authorization": "Bearer tok"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer["label"] == expected["label"]
        for name, p in expected["probabilities"].items():
            assert answer["probabilities"][name] == pytest.approx(p, abs=1e-6)


def test_missing_model_exits_non_zero_with_the_reason(flask_image):
    with run_container(flask_image, port=CONTAINER_PORT,
                       env={"MODEL_PATH": "/models/absent.onnx"}) as box:
        deadline = time.monotonic() + 60
        while box.state() == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert box.exit_code() == 1
        assert "cannot start: model file /models/absent.onnx does not exist" in box.logs()
