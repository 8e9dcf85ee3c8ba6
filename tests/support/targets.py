"""The serving targets of services/targets.py, in process, behind one request interface.

    flask = FlaskTarget(create_app({"MODEL_PATH": str(model)}))
    aws = LambdaTarget(load_lambda_module(model), "http_api")     # rest_api, function_url, alb
    sm = SageMakerTarget(load_sagemaker_app(model, tmp_path))
    reply = flask.post("predict", {"Content-Type": "image/png"}, png)   # Reply(status, ...)

Lambda requests go through the real `handler(event, context)` of lambda/handler.py with events
from tests/support/events.py; SageMaker's app is the one app with the `sagemaker` target,
serving a model folder as SageMaker extracts it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from services.adapters.sagemaker import resolve_model
from services.targets import TARGETS
from tests.support.events import EVENT_BUILDERS
from tests.support.lambda_local import LambdaContext, load_handler

REPO_ROOT = Path(__file__).resolve().parents[2]
LAMBDA_KINDS = tuple(EVENT_BUILDERS)  # rest_api, http_api, function_url, alb


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            document = self.json()
        except ValueError:
            return None
        error = document.get("error") if isinstance(document, dict) else None
        return error.get("code") if isinstance(error, dict) else None


class Target:
    """A target answering HTTP-like requests; `family` is a name in services.targets.TARGETS."""

    family = ""
    name = ""

    @property
    def predict_path(self) -> str:
        return TARGETS[self.family].predict_path

    @property
    def health_path(self) -> str:
        return TARGETS[self.family].health_path

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Reply:
        raise NotImplementedError

    def post(self, path: str, headers: Mapping[str, str] | None, body: bytes) -> Reply:
        return self.request("POST", self.resolve(path), headers, body)

    def resolve(self, path: str) -> str:
        return self.predict_path if path == "predict" else path

    def predict(self, image: bytes, content_type: str = "application/octet-stream") -> Reply:
        return self.post("predict", {"Content-Type": content_type}, image)


class FlaskTarget(Target):
    family = name = "flask"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Reply:
        response = self.client.open(path, method=method, headers=dict(headers or {}), data=body)
        return Reply(response.status_code, _lower(response.headers.items()), response.get_data())


class SageMakerTarget(FlaskTarget):
    family = name = "sagemaker"


class LambdaTarget(Target):
    family = "lambda"

    def __init__(self, module: ModuleType, kind: str) -> None:
        self.module = module
        self.kind = kind
        self.name = f"lambda-{kind}"

    def invoke(self, event: Any) -> dict:
        return self.module.handler(event, LambdaContext())

    def request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                body: bytes = b"") -> Reply:
        headers = dict(headers or {})
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        # API Gateway, URLs and ALB hand the query string over apart from the path.
        path, _, query = path.partition("?")
        event = EVENT_BUILDERS[self.kind](
            method=method, path=path, headers=headers, body=body if body else None,
            binary=_sent_as_base64(content_type, body),
            query=dict(parse_qsl(query, keep_blank_values=True)) or None,
        )
        return lambda_reply(self.invoke(event))


def _sent_as_base64(content_type: str, body: bytes) -> bool:
    """API Gateway / URLs / ALB pass text types as text and base64-encode everything else."""
    if not body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    mimetype = content_type.split(";")[0].strip().lower()
    return not (mimetype.startswith("text/") or mimetype == "application/json")


def lambda_reply(response: Any) -> Reply:
    """A Lambda proxy response dict → Reply (raises if it is not one)."""
    assert isinstance(response, dict), f"handler returned {type(response).__name__}"
    status = response["statusCode"]
    assert isinstance(status, int), response
    headers = _lower((response.get("headers") or {}).items())
    for name, values in (response.get("multiValueHeaders") or {}).items():
        headers[name.lower()] = values[-1]
    raw = response.get("body") or ""
    body = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
    return Reply(status, headers, body)


def _lower(items: Any) -> dict[str, str]:
    return {str(k).lower(): v for k, v in items}


# --- loading the adapters by file path (the adapters' own test helpers do the importing) ----

@contextlib.contextmanager
def patched_environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or with None, remove) environment variables, restoring them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# Variables a developer's shell could hold that would change what INIT builds.
_LAMBDA_ENV_RESET = ("MHIST_API_TOKEN", "MAX_CONTENT_LENGTH", "CORS_ALLOW_ORIGINS",
                     "EMF_METRICS", "PROMETHEUS_MULTIPROC_DIR", "SERVING_TARGET")


def load_lambda_module(model_path: str | os.PathLike,
                       env: Mapping[str, str] | None = None) -> ModuleType:
    """lambda/handler.py imported as Lambda's INIT does it: MODEL_PATH from the environment."""
    with patched_environ(dict.fromkeys(_LAMBDA_ENV_RESET)):
        return load_handler({"MODEL_PATH": str(model_path), **(env or {})})


def sagemaker_model_dir(model_path: str | os.PathLike, folder: Path) -> Path:
    """/opt/ml/model as SageMaker extracts it: a folder with model.onnx."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, folder / "model.onnx")
    return folder


def load_sagemaker_app(model_path: str | os.PathLike, folder: Path,
                       env: Mapping[str, Any] | None = None) -> Any:
    """The one app as SageMaker's workers build it: target sagemaker, the model resolved from
    a model folder (and its manifest's sha256, when it has one) by the SageMaker adapter."""
    path, digest = resolve_model(sagemaker_model_dir(model_path, folder))
    from services.web.app import create_app

    return create_app({"TARGET": "sagemaker", "MODEL_PATH": str(path), "MODEL_SHA256": digest,
                       "API_TOKEN": None, **(env or {})})


def _flask(model_path: str | os.PathLike, work: Path) -> list[Target]:
    from services.web.app import create_app

    return [FlaskTarget(create_app({"MODEL_PATH": str(model_path)}))]


def _lambda(model_path: str | os.PathLike, work: Path) -> list[Target]:
    module = load_lambda_module(model_path, env=dict(os.environ))
    return [LambdaTarget(module, kind) for kind in LAMBDA_KINDS]


def _sagemaker(model_path: str | os.PathLike, work: Path) -> list[Target]:
    return [SageMakerTarget(load_sagemaker_app(model_path, work / "sagemaker-model",
                                               {"API_TOKEN": os.environ.get("MHIST_API_TOKEN")}))]


# How to run each registry entry in this process (its adapter, called as the platform does).
IN_PROCESS = {"flask": _flask, "lambda": _lambda, "sagemaker": _sagemaker}
# Every in-process target by name, in registry order: lambda once per event kind.
TARGET_NAMES = [name for entry in TARGETS.values() for name in (
    [f"lambda-{kind}" for kind in LAMBDA_KINDS] if entry.protocol == "lambda-runtime"
    else [entry.name])]


def all_targets(model_path: str | os.PathLike, work: Path,
                env: Mapping[str, str | None] | None = None) -> list[Target]:
    """Every target of services.targets, in process, serving `model_path`, built with the
    environment variables `env` (e.g. {"MHIST_API_TOKEN": ...}) on top of a clean one."""
    missing = set(TARGETS) - set(IN_PROCESS)
    assert not missing, f"no in-process runner for serving target(s) {missing}"
    with patched_environ({**dict.fromkeys(_LAMBDA_ENV_RESET), **(env or {})}):
        return [target for name in TARGETS for target in IN_PROCESS[name](model_path, work)]
