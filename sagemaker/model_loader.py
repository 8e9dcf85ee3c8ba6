"""The SageMaker container's settings and model folder, without the web layer.

`serve` imports only this module to check the model before gunicorn starts (Flask is not
imported twice), and `package.py` uses the same loader to prove an archive is servable.

Layout of /opt/ml/model (the extracted model.tar.gz, written by sagemaker/package.py):
    model.onnx      the self-describing ONNX file (classes, threshold, preprocessing inside)
    manifest.json   {"model_file", "sha256", "size_bytes", "source", "metadata"}; optional
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from services.errors import ModelLoadError
from services.model import InferenceModel, default_threads

__all__ = ["MANIFEST_FILE", "MODEL_FILE", "ModelLoadError", "Settings", "load_model"]

DEFAULT_MODEL_DIR = "/opt/ml/model"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Settings:
    """The container's knobs, from the environment SageMaker (or a test) sets."""

    model_dir: Path
    port: int
    workers: int
    threads: int
    timeout: int
    max_payload_mb: int
    max_batch: int | None  # None: services.payload's default, the Flask service's too
    ort_threads: int

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Parse and default every value; ValueError names the variable that is wrong."""
        env = dict(os.environ if env is None else env)
        workers = _positive_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", default_threads(1))
        return cls(
            model_dir=Path(env.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR),
            port=_positive_int(env, "SAGEMAKER_BIND_TO_PORT", 8080),
            workers=workers,
            threads=_positive_int(env, "MHIST_GUNICORN_THREADS", 2),
            timeout=_positive_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60),
            max_payload_mb=_positive_int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", 6),
            max_batch=_optional_positive_int(env, "MHIST_MAX_BATCH"),
            # Workers × intra-op threads ≤ CPUs: ORT would otherwise size itself to the host.
            ort_threads=_positive_int(env, "MHIST_ORT_THREADS", default_threads(workers)),
        )

    def to_env(self) -> dict[str, str]:
        """The resolved values as environment variables, for the gunicorn workers to read."""
        values = {
            "SM_MODEL_DIR": str(self.model_dir),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(self.workers),
            "MHIST_GUNICORN_THREADS": str(self.threads),
            "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(self.timeout),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(self.max_payload_mb),
            "MHIST_ORT_THREADS": str(self.ort_threads),
        }
        if self.max_batch is not None:
            values["MHIST_MAX_BATCH"] = str(self.max_batch)
        return values


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    value = _optional_positive_int(env, name)
    return default if value is None else value


def _optional_positive_int(env: dict[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r} is not a positive integer")
    return value


def load_model(model_dir: str | os.PathLike, threads: int | None = None) -> InferenceModel:
    """The ONNX model in an extracted model.tar.gz, checked against its manifest.

    Raises ModelLoadError with a message saying what is wrong and how to fix it.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model directory {model_dir} does not exist; SageMaker extracts the model's "
            "ModelDataUrl (model.tar.gz) there: build one with `python sagemaker/package.py`"
        )
    manifest = read_manifest(model_dir)
    model = InferenceModel(model_file(model_dir, manifest), threads=threads)
    expected = manifest.get("sha256")
    if expected and expected != model.sha256:
        raise ModelLoadError(
            f"{model.path} has sha256 {model.sha256}, but {MANIFEST_FILE} says {expected}: "
            "the archive is corrupt or was edited; rebuild it with sagemaker/package.py"
        )
    return model


def read_manifest(model_dir: Path) -> dict:
    """manifest.json as a dict; {} when the folder has none (a bare model.onnx is servable)."""
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return manifest


def model_file(model_dir: Path, manifest: dict) -> Path:
    """The ONNX file to serve: the manifest's, else model.onnx, else the only *.onnx."""
    named = manifest.get("model_file")
    if named:
        # The manifest comes from the archive: keep it from pointing outside the model folder.
        path = (model_dir / str(named)).resolve()
        if model_dir.resolve() not in path.parents:
            raise ModelLoadError(f"{MANIFEST_FILE} names {named!r}, outside {model_dir}")
        return path
    if (model_dir / MODEL_FILE).is_file():
        return model_dir / MODEL_FILE
    candidates = sorted(model_dir.glob("*.onnx"))
    if len(candidates) == 1:
        return candidates[0]
    found = sorted(p.name for p in model_dir.iterdir())[:20]
    raise ModelLoadError(
        f"no {MODEL_FILE} in {model_dir} (found: {', '.join(found) or 'nothing'}); "
        "build the archive with `python sagemaker/package.py`"
    )
