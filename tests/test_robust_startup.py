"""Start-up with a missing, empty, corrupt or metadata-less model: every target stops at once,
non-zero, with one message naming the file and the problem (readiness never turns true).

Real processes: gunicorn with services/runtime/gunicorn_conf.py (Flask), `sagemaker/serve`, and the
Lambda handler's INIT under the real awslambdaric against the Runtime API test server; plus
the Flask and SageMaker containers with the broken file mounted where the image expects it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from services.core.errors import ModelLoadError
from tests.support.containers import free_port, run_container
from tests.support.images import built_image
from tests.support.lambda_runtime import LambdaRuntimeServer
from tests.support.targets import load_lambda_module

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = {
    "missing": "does not exist",
    "empty": "is empty",
    "corrupt": "not a loadable ONNX model",
    "no-metadata": "lacks the metadata",
}
START_TIMEOUT = 60


def broken_model(kind: str, good: Path, folder: Path) -> Path:
    """A model file with the named problem, at folder/model.onnx (absent for 'missing')."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the images' non-root users read bind mounts
    path = folder / "model.onnx"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 3])  # a torn download: valid start, no end
    elif kind == "no-metadata":
        model = onnx.load(str(good))
        del model.metadata_props[:]  # a plain ONNX export: no classes, threshold, spec
        onnx.save(model, str(path))
    if path.exists():
        path.chmod(0o644)
    return path


def _env(**values: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), **values}


def _assert_names_file_and_problem(output: str, path: str, kind: str,
                                   traceback_ok: bool = False) -> None:
    """One line of the output names both the file and its problem."""
    assert any(path in line and PROBLEMS[kind] in line for line in output.splitlines()), \
        output[-3000:]
    if not traceback_ok:
        assert "Traceback" not in output, output[-3000:]


# gunicorn's master only checks that the file exists and is not empty (importing onnxruntime
# there would start native threads before the fork); a file that is there but unusable fails
# each worker's create_app, gunicorn logs that worker's traceback and exits 3.
MASTER_CHECKED = ("missing", "empty")


@pytest.mark.parametrize("kind", PROBLEMS)
def test_gunicorn_refuses_to_start(kind: str, model_int8_path: Path, tmp_path: Path) -> None:
    path = broken_model(kind, model_int8_path, tmp_path / "model")
    port = free_port()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "services.runtime.server"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT,
        env=_env(MODEL_PATH=str(path), PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="2",
                 PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")))
    assert result.returncode != 0
    assert time.perf_counter() - started < 30
    _assert_names_file_and_problem(result.stderr, str(path), kind,
                                   traceback_ok=kind not in MASTER_CHECKED)
    if kind in MASTER_CHECKED:  # stopped before forking: no worker ever booted
        assert "mhist: cannot start" in result.stderr
        assert "Booting worker" not in result.stderr
    else:
        assert "Worker failed to boot" in result.stderr


@pytest.mark.parametrize("kind", PROBLEMS)
def test_sagemaker_serve_refuses_to_start(kind: str, model_int8_path: Path,
                                          tmp_path: Path) -> None:
    folder = tmp_path / "opt-ml-model"
    path = broken_model(kind, model_int8_path, folder)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "sagemaker" / "serve")], cwd=tmp_path,
        capture_output=True, text=True, timeout=START_TIMEOUT,
        env=_env(SM_MODEL_DIR=str(folder), SAGEMAKER_BIND_TO_PORT=str(free_port())))
    if kind == "missing":  # an empty model folder: serve names the folder and what is missing
        assert str(folder) in result.stderr and "no model.onnx" in result.stderr, result.stderr
    else:
        _assert_names_file_and_problem(result.stderr, str(path), kind)
    if kind in MASTER_CHECKED:  # refused by serve itself, before any server starts
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Booting worker" not in result.stdout + result.stderr
    else:
        # The worker's load is the only load (no second one as a check): it stops the server
        # with one `serve: cannot start:` line and gunicorn's status 3, without a traceback.
        assert result.returncode == 3, result.stderr[-3000:]
        assert "serve: cannot start:" in result.stderr and "Worker failed to boot" in result.stderr


@pytest.mark.parametrize("kind", PROBLEMS)
def test_lambda_init_fails_in_process(kind: str, model_int8_path: Path, tmp_path: Path) -> None:
    path = broken_model(kind, model_int8_path, tmp_path / "model")
    with pytest.raises(ModelLoadError) as raised:
        load_lambda_module(path)
    message = str(raised.value)
    assert message.startswith("Lambda INIT failed")
    _assert_names_file_and_problem(message, str(path), kind)


@pytest.mark.parametrize("kind", PROBLEMS)
def test_lambda_init_fails_under_awslambdaric(kind: str, model_int8_path: Path,
                                              tmp_path: Path) -> None:
    path = broken_model(kind, model_int8_path, tmp_path / "model")
    with LambdaRuntimeServer() as runtime:
        process = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", "handler.handler"], cwd=REPO_ROOT / "lambda",
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(AWS_LAMBDA_RUNTIME_API=runtime.address, MODEL_PATH=str(path),
                     LAMBDA_TASK_ROOT=str(REPO_ROOT / "lambda")))
        try:
            error = runtime.wait_init_error(timeout=START_TIMEOUT)
            code = process.wait(timeout=START_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
            output = process.communicate(timeout=30)[0]
    assert code != 0, output[-2000:]
    assert "ModelLoadError" in error.get("errorType", ""), error
    _assert_names_file_and_problem(error["errorMessage"], str(path), kind)
    assert not runtime.next_calls  # never asked for an event: never "ready"


def _wait_exit(box, timeout: float = START_TIMEOUT) -> int | None:
    deadline = time.perf_counter() + timeout
    while box.state() in ("running", "created", "configured") and time.perf_counter() < deadline:
        time.sleep(0.2)
    return box.exit_code()


@pytest.mark.container
@pytest.mark.parametrize("kind", PROBLEMS)
def test_flask_container_refuses_to_start(kind: str, require_containers: str,
                                          model_int8_path: Path, tmp_path: Path) -> None:
    image = built_image("flask", model_int8_path)
    path = broken_model(kind, model_int8_path, tmp_path / "model")
    inside = "/models/model.onnx"
    volumes = [f"{path.parent}:/models:ro"]
    with run_container(image, port=8080, engine=require_containers, volumes=volumes,
                       env={"MODEL_PATH": inside}) as box:
        code = _wait_exit(box)
        logs = box.logs()
    assert code not in (None, 0), logs[-2000:]
    _assert_names_file_and_problem(logs, inside, kind, traceback_ok=kind not in MASTER_CHECKED)


@pytest.mark.container
@pytest.mark.parametrize("kind", PROBLEMS)
def test_sagemaker_container_refuses_to_start(kind: str, require_containers: str,
                                              model_int8_path: Path, tmp_path: Path) -> None:
    image = built_image("sagemaker", model_int8_path)
    folder = tmp_path / "model"
    broken_model(kind, model_int8_path, folder)
    with run_container(image, port=8080, engine=require_containers, command=["serve"],
                       volumes=[f"{folder}:/opt/ml/model:ro"]) as box:
        code = _wait_exit(box)
        logs = box.logs()
    assert code not in (None, 0), logs[-2000:]
    if kind == "missing":
        assert "/opt/ml/model" in logs and "no model.onnx" in logs, logs[-2000:]
    else:
        _assert_names_file_and_problem(logs, "/opt/ml/model/model.onnx", kind)
