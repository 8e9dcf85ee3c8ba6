"""SageMaker target in-process: the /ping, /invocations, /execution-parameters contract of the
one app on the `sagemaker` target, SageMaker's settings, the `serve` start-up checks,
package.py, and the SDK not being shadowed by the sagemaker/ folder.

The model comes from the real pipeline (conftest: training → export), packaged by
sagemaker/package.py and extracted as SageMaker does; the Flask service is the reference for
every prediction.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from services.adapters.sagemaker import resolve_model
from services.core.model import InferenceModel
from services.web.app import create_app
from services.web.settings import Settings, SettingsError
from services.web.state import runtime
from tests.support.containers import free_port
from tests.support.sagemaker_files import (
    REPO_ROOT,
    SAGEMAKER_DIR,
    package_and_extract,
    run_package,
    script_env,
)

MB = 1024 * 1024


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packaged(model_int8_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    archive, folder = package_and_extract(model_int8_path, tmp_path_factory.mktemp("sm-model"))
    return {"archive": archive, "dir": folder}


def serve_folder(folder: Path, **overrides):
    """The app a SageMaker worker builds for an extracted model folder (serve's resolution)."""
    path, digest = resolve_model(folder)
    return create_app({"TARGET": "sagemaker", "MODEL_PATH": str(path), "MODEL_SHA256": digest,
                       "API_TOKEN": None, "ORT_THREADS": 1, **overrides})


def served_model(folder: Path) -> InferenceModel:
    return runtime(serve_folder(folder)).state.require()


@pytest.fixture(scope="module")
def sm_client(packaged: dict):
    return serve_folder(packaged["dir"], WORKERS=3).test_client()


@pytest.fixture(scope="module")
def flask_client(packaged: dict):
    """The Flask service on the same ONNX file: the reference JSON."""
    app = create_app({"MODEL_PATH": str(packaged["dir"] / "model.onnx"),
                            "API_TOKEN": None, "ORT_INTRA_OP_THREADS": 1})
    return app.test_client()


@pytest.fixture(scope="module")
def jpeg_bytes(sample_image_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(sample_image_bytes)).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def invoke(client, body: bytes | str, content_type: str | None = "image/png",
           headers: dict | None = None):
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return client.post("/invocations", data=body, headers=all_headers)


def flask_predict(flask_client, data: bytes) -> dict:
    response = flask_client.post("/predict", data=data, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    return body


# --- /ping and /execution-parameters ------------------------------------------------------------

def test_ping_is_200_with_an_empty_body_and_fast(sm_client) -> None:
    started = time.perf_counter()
    response = sm_client.get("/ping")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.get_data() == b""
    assert elapsed < 0.5, f"/ping took {elapsed:.3f} s; SageMaker allows 2 s"


def test_execution_parameters_follow_the_workers(sm_client) -> None:
    response = sm_client.get("/execution-parameters")
    assert response.status_code == 200
    assert response.get_json() == {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD",
                                   "MaxPayloadInMB": 6}


# --- content types ------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["image/png", "application/x-image",
                                          "application/octet-stream", "IMAGE/PNG; foo=bar"])
def test_raw_png_content_types_match_flask(sm_client, flask_client, sample_image_bytes: bytes,
                                           content_type: str) -> None:
    response = invoke(sm_client, sample_image_bytes, content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert response.get_json() == flask_predict(flask_client, sample_image_bytes)


def test_jpeg_matches_flask(sm_client, flask_client, jpeg_bytes: bytes) -> None:
    response = invoke(sm_client, jpeg_bytes, "image/jpeg")
    assert response.status_code == 200
    body = response.get_json()
    assert body == flask_predict(flask_client, jpeg_bytes)
    assert set(body) >= {"label", "probabilities", "threshold", "model"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)


def test_json_single_image_matches_flask(sm_client, flask_client, sample_image_bytes) -> None:
    response = invoke(sm_client, json.dumps({"image": b64(sample_image_bytes)}), "application/json")
    assert response.status_code == 200
    assert response.get_json() == flask_predict(flask_client, sample_image_bytes)


def test_json_instances_match_flask_batch(sm_client, flask_client, sample_image_bytes: bytes,
                                          jpeg_bytes: bytes) -> None:
    body = json.dumps({"instances": [{"image": b64(sample_image_bytes)},
                                     {"image": b64(jpeg_bytes)}]})
    response = invoke(sm_client, body, "application/json")
    assert response.status_code == 200
    result = response.get_json()
    reference = flask_client.post("/predict/batch", data=body,
                                  headers={"Content-Type": "application/json"}).get_json()
    assert result == reference
    assert result["count"] == 2 and result["errors"] == 0
    assert result["predictions"] == [flask_predict(flask_client, sample_image_bytes),
                                     flask_predict(flask_client, jpeg_bytes)]


def test_json_instances_keep_a_bad_item_in_its_slot(sm_client, flask_client,
                                                    sample_image_bytes: bytes) -> None:
    body = json.dumps({"instances": [{"image": "%%%"}, {"image": b64(sample_image_bytes)},
                                     {"image": b64(b"not an image")}]})
    result = invoke(sm_client, body, "application/json").get_json()
    assert result["count"] == 3 and result["errors"] == 2
    first, second, third = result["predictions"]
    assert first["status"] == 400 and first["error"]["code"] == "invalid_base64"
    assert second == flask_predict(flask_client, sample_image_bytes)
    assert third["status"] == 400 and third["error"]["code"] == "invalid_image"


# --- Accept -------------------------------------------------------------------------------------

@pytest.mark.parametrize("accept", [None, "", "application/json", "*/*", "application/*",
                                    "text/html, application/json;q=0.5",
                                    "application/json; charset=utf-8"])
def test_json_accepts_answer_json(sm_client, sample_image_bytes: bytes, accept) -> None:
    headers = {} if accept is None else {"Accept": accept}
    response = invoke(sm_client, sample_image_bytes, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"


@pytest.mark.parametrize("accept", ["text/csv", "application/x-protobuf", "image/png",
                                    "application/json;q=0", "application/jsonlines"])
def test_other_accepts_are_406(sm_client, sample_image_bytes: bytes, accept: str) -> None:
    body = assert_error(invoke(sm_client, sample_image_bytes, headers={"Accept": accept}),
                        406, "not_acceptable")
    assert "application/json" in body["error"]["message"]


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "text/csv", "application/xml",
                                          "multipart/form-data; boundary=x",
                                          "application/jsonlines", None])
def test_unknown_content_types_are_415(sm_client, sample_image_bytes, content_type) -> None:
    body = assert_error(invoke(sm_client, sample_image_bytes, content_type),
                        415, "unsupported_media_type")
    assert "image/png" in body["error"]["message"]


@pytest.mark.parametrize(("data", "content_type", "code"), [
    (b"definitely not an image", "image/png", "invalid_image"),
    (b"", "application/x-image", "empty_image"),
    ("{\"image\": \"@@@\"}", "application/json", "invalid_base64"),
    ("{\"image\": ", "application/json", "invalid_json"),
    ("[1, 2]", "application/json", "invalid_json_type"),
    ("{\"picture\": \"abc\"}", "application/json", "missing_field"),
    ("{\"instances\": []}", "application/json", "empty_batch"),
])
def test_bad_payloads_are_400(sm_client, data, content_type: str, code: str) -> None:
    assert_error(invoke(sm_client, data, content_type), 400, code)


def test_truncated_png_is_400(sm_client, sample_image_bytes: bytes) -> None:
    assert_error(invoke(sm_client, sample_image_bytes[: len(sample_image_bytes) // 2]),
                 400, "invalid_image")


def test_body_over_the_default_6_mb_is_413(sm_client, sample_image_bytes: bytes) -> None:
    body = sample_image_bytes + b"\0" * (6 * MB + 1 - len(sample_image_bytes))
    body = assert_error(invoke(sm_client, body), 413, "payload_too_large")
    assert str(6 * MB) in body["error"]["message"]


def test_payload_limit_follows_the_environment(packaged: dict, sample_image_bytes,
                                              monkeypatch) -> None:
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1")
    client = serve_folder(packaged["dir"]).test_client()
    assert client.get("/execution-parameters").get_json()["MaxPayloadInMB"] == 1
    assert invoke(client, sample_image_bytes).status_code == 200
    assert_error(invoke(client, b"\0" * (MB + 1)), 413, "payload_too_large")


@pytest.mark.parametrize("value", [
    "trace-id=abc,tenant=7",
    "x" * 1024,
    "ünïcödé; DROP TABLE models; --",
    "",
])
def test_custom_attributes_are_ignored(sm_client, flask_client, sample_image_bytes, value) -> None:
    response = invoke(sm_client, sample_image_bytes,
                      headers={"X-Amzn-SageMaker-Custom-Attributes": value.encode().decode(
                          "latin-1")})
    assert response.status_code == 200
    assert response.get_json() == flask_predict(flask_client, sample_image_bytes)


def test_unknown_routes_and_methods_are_json(sm_client) -> None:
    assert_error(sm_client.get("/no/such/route"), 404, "not_found")
    response = sm_client.get("/invocations")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


# --- settings and `serve` -----------------------------------------------------------------------

def test_settings_defaults_and_overrides() -> None:
    defaults = Settings.from_env({"SERVING_TARGET": "sagemaker"})
    assert (defaults.host, defaults.port, defaults.timeout) == ("0.0.0.0", 8080, 60)
    assert (defaults.max_content_length, defaults.threads) == (6 * MB, 2)
    assert defaults.model_dir == "/opt/ml/model" and defaults.workers >= 1
    assert defaults.max_batch == Settings.from_env({}).max_batch  # the Flask service's too
    custom = Settings.from_env({"SERVING_TARGET": "sagemaker", "SAGEMAKER_BIND_TO_PORT": "9000",
                                "SAGEMAKER_MODEL_SERVER_WORKERS": "4",
                                "SAGEMAKER_MODEL_SERVER_TIMEOUT": "120",
                                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "2", "SM_MODEL_DIR": "/models",
                                "PORT": "1234", "GUNICORN_THREADS": "3"})
    assert (custom.port, custom.workers, custom.timeout) == (9000, 4, 120)  # SageMaker's win
    assert (custom.max_content_length, custom.model_dir, custom.threads) == (
        2 * MB, "/models", 3)
    with pytest.raises(SettingsError, match="SAGEMAKER_MODEL_SERVER_WORKERS='many'"):
        Settings.from_env({"SERVING_TARGET": "sagemaker",
                           "SAGEMAKER_MODEL_SERVER_WORKERS": "many"})


def run_serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SAGEMAKER_DIR / "serve")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**script_env(), **env})


def _bad_model_dir(tmp_path: Path, kind: str, model_path: Path) -> Path:
    folder = tmp_path / "model"
    if kind == "missing":
        return folder
    folder.mkdir()
    if kind == "garbage":
        (folder / "model.onnx").write_bytes(b"this is not ONNX")
    elif kind == "empty":
        pass
    elif kind == "sha-mismatch":
        (folder / "model.onnx").write_bytes(model_path.read_bytes())
        (folder / "manifest.json").write_text(json.dumps({"model_file": "model.onnx",
                                                          "sha256": "0" * 64}))
    return folder


@pytest.mark.parametrize(("kind", "message", "status"), [
    ("missing", "does not exist", 2),
    ("empty", "no model.onnx", 2),
    # A file is loaded once, by the worker, which stops the server (gunicorn's status 3).
    ("garbage", "not a loadable ONNX model", 3),
    ("sha-mismatch", "was expected (the SageMaker archive's manifest.json)", 3),
])
def test_serve_refuses_to_start_without_a_good_model(tmp_path: Path, model_int8_path: Path,
                                                     kind: str, message: str,
                                                     status: int) -> None:
    folder = _bad_model_dir(tmp_path, kind, model_int8_path)
    result = run_serve({"SM_MODEL_DIR": str(folder),
                        "SAGEMAKER_BIND_TO_PORT": str(free_port())})
    assert result.returncode == status, result.stdout + result.stderr
    assert "serve: cannot start:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_a_bad_setting(packaged: dict) -> None:
    result = run_serve({"SM_MODEL_DIR": str(packaged["dir"]),
                        "SAGEMAKER_BIND_TO_PORT": "eighty"})
    assert result.returncode == 2
    assert ("SAGEMAKER_BIND_TO_PORT='eighty' is not valid: expected a positive integer"
            in result.stderr)


# --- the SDK is not shadowed --------------------------------------------------------------------

def test_sagemaker_folder_never_shadows_the_sdk() -> None:
    assert not (SAGEMAKER_DIR / "__init__.py").exists()
    ours = sorted(p.stem for p in SAGEMAKER_DIR.glob("*.py"))
    # The repository root first on sys.path, as when running from a checkout.
    code = (
        "import importlib.util, json, sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "import sagemaker\n"
        "print(json.dumps({'file': sagemaker.__file__, 'session': hasattr(sagemaker, 'Session'),\n"
        f"  'clash': [n for n in {ours!r} if importlib.util.find_spec('sagemaker.' + n)]}}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=180,
                            env={**script_env(), "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "site-packages" in found["file"], found
    assert not found["file"].startswith(str(SAGEMAKER_DIR)), found
    assert found["session"] is True
    assert found["clash"] == [], f"sagemaker/ modules named like SDK modules: {found['clash']}"


# --- package.py ---------------------------------------------------------------------------------

def test_package_round_trip(packaged: dict, model_int8_path: Path,
                            sample_image_bytes: bytes, tmp_path: Path) -> None:
    with tarfile.open(packaged["archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["manifest.json", "model.onnx"]
        assert all(m.isfile() and m.mode == 0o644 for m in members.values())
    source_bytes = model_int8_path.read_bytes()
    assert (packaged["dir"] / "model.onnx").read_bytes() == source_bytes
    manifest = json.loads((packaged["dir"] / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(source_bytes).hexdigest()
    assert manifest["size_bytes"] == len(source_bytes)
    assert manifest["model_file"] == "model.onnx" and manifest["source"]["kind"] == "file"
    assert manifest["metadata"]["precision"] == "int8"
    served = served_model(packaged["dir"])
    assert served.predict_bytes(sample_image_bytes) == InferenceModel(
        model_int8_path, threads=1).predict_bytes(sample_image_bytes)
    # Same model, same bytes: re-uploading an unchanged model changes nothing in S3.
    again = tmp_path / "again.tar.gz"
    assert run_package("--onnx", str(model_int8_path), "--out", str(again)).returncode == 0
    assert again.read_bytes() == packaged["archive"].read_bytes()


def test_package_from_the_mlflow_registry(exported: dict, model_int8_path: Path,
                                          sample_image_bytes: bytes, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    out = tmp_path / "model.tar.gz"
    result = run_package("--model-uri", "models:/mhist-resnet18-onnx", "--precision", "int8",
                         "--tracking-uri", exported["tracking_uri"], "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    versions = MlflowClient(exported["tracking_uri"]).search_model_versions(
        "name='mhist-resnet18-onnx'")
    newest_int8 = max(int(v.version) for v in versions if v.tags.get("precision") == "int8")
    folder = tmp_path / "model"
    with tarfile.open(out) as tar:
        tar.extractall(folder, filter="data")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["model_uri"] == f"models:/mhist-resnet18-onnx/{newest_int8}"
    assert manifest["source"]["precision"] == "int8"
    served = served_model(folder)
    reference = InferenceModel(model_int8_path, threads=1).predict_bytes(sample_image_bytes)
    prediction = served.predict_bytes(sample_image_bytes)
    assert prediction["label"] == reference["label"]
    for name, p in reference["probabilities"].items():
        assert prediction["probabilities"][name] == pytest.approx(p, abs=1e-6)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "nope.onnx", "does not exist"),
    (lambda p: (p / "bad.onnx", (p / "bad.onnx").write_bytes(b"junk"))[0],
     "not a loadable ONNX model"),
])
def test_package_refuses_what_serve_would_refuse(tmp_path: Path, make, message: str) -> None:
    result = run_package("--onnx", str(make(tmp_path)), "--out", str(tmp_path / "m.tar.gz"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "m.tar.gz").exists()
