"""SageMaker adapter: find the model in /opt/ml/model, check it, then run the one server.

SageMaker starts the container as `IMAGE serve`; sagemaker/serve calls `serve()`, which
1. resolves the ONNX file in the model folder (the extracted model.tar.gz) and the sha256 its
   manifest.json promises, so that a missing model or a bad setting is one clear line in
   CloudWatch and exit status 2; a file that is there but not a usable model (or not the
   manifest's) is refused by the worker that loads it, with one line and exit status 3;
2. replaces itself with the one server (`python -m services.runtime.server`: gunicorn with
   services/runtime/gunicorn_conf.py) on the app of services.web.app
   with the `sagemaker` target, which
   adds /ping, /invocations and /execution-parameters to the common routes.

Layout of /opt/ml/model (written by sagemaker/package.py):
    model.onnx      the self-describing ONNX file (classes, threshold, preprocessing inside)
    manifest.json   {"model_file", "sha256", "size_bytes", "source", "metadata"}; optional
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from services.core.errors import ModelLoadError
from services.core.files import model_file_problem
from services.web.settings import Settings, SettingsError

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def resolve_model(model_dir: str | os.PathLike) -> tuple[Path, str | None]:
    """(ONNX file to serve, sha256 its manifest promises or None); ModelLoadError saying what
    is wrong and how to fix it."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(
            f"model directory {model_dir} does not exist; SageMaker extracts the model's "
            "ModelDataUrl (model.tar.gz) there: build one with `python sagemaker/package.py`"
        )
    manifest = read_manifest(model_dir)
    return model_file(model_dir, manifest), manifest.get("sha256") or None


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
        path = (model_dir / str(named)).resolve()
        _check_inside(model_dir, path, f"{MANIFEST_FILE} names {named!r}, which")
        return path
    if (model_dir / MODEL_FILE).is_file():
        _check_inside(model_dir, model_dir / MODEL_FILE, MODEL_FILE)
        return model_dir / MODEL_FILE
    candidates = sorted(model_dir.glob("*.onnx"))
    if len(candidates) == 1:
        _check_inside(model_dir, candidates[0], candidates[0].name)
        return candidates[0]
    found = sorted(p.name for p in model_dir.iterdir())[:20]
    raise ModelLoadError(
        f"no {MODEL_FILE} in {model_dir} (found: {', '.join(found) or 'nothing'}); "
        "build the archive with `python sagemaker/package.py`"
    )


def _check_inside(model_dir: Path, path: Path, what: str) -> None:
    """The folder is the archive's content: neither a manifest entry nor a symlink in it may
    make the server read a file elsewhere (ModelLoadError)."""
    resolved = path.resolve()
    if model_dir.resolve() not in resolved.parents:
        raise ModelLoadError(f"{what} resolves to {resolved}, outside the model folder "
                             f"{model_dir}; put the ONNX file itself in the archive")


def model_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that make the one app a SageMaker server for the model folder; raises
    SettingsError or ModelLoadError for what can be told without loading the model.

    The model itself is loaded once, by the worker (services.runtime.server.worker_app), which stops
    the server with one `serve: cannot start:` line when the file is not a usable model or its
    sha256 is not the manifest's. Loading it here as well, as a check, cost a second import of
    onnxruntime and a second session: about a second of every cold start.
    """
    environ = dict(os.environ if environ is None else environ)
    environ["SERVING_TARGET"] = "sagemaker"
    settings = Settings.from_env(environ)
    path, digest = resolve_model(settings.model_dir)
    checked = Settings.from_env(environ, {"MODEL_PATH": str(path), "MODEL_SHA256": digest,
                                          "MODEL_REQUIRED": True})
    problem = model_file_problem(str(path))
    if problem:
        raise ModelLoadError(problem)
    print(f"serve: model file {path.name} ({path.stat().st_size / 1e6:.1f} MB); starting "
          f"the server on port {checked.port} with {checked.workers} worker(s) × "
          f"{checked.threads} thread(s)", flush=True)
    return {"SERVING_TARGET": "sagemaker", "MODEL_PATH": str(path),
            "MODEL_SHA256": digest or "", "MODEL_REQUIRED": "1"}


def server_argv() -> list[str]:
    """The one server entry (the Flask container runs the same)."""
    return [sys.executable, "-m", "services.runtime.server"]


def serve() -> int:
    """`IMAGE serve`: check, then exec gunicorn (PID 1 receives SIGTERM itself, and no
    onnxruntime thread pool from the check leaks into forked workers)."""
    try:
        os.environ.update(model_environment())
    except (ModelLoadError, SettingsError) as exc:
        print(f"serve: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    argv = server_argv()
    os.execv(argv[0], argv)
    return 0  # not reached
