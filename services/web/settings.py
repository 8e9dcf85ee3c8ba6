"""The one settings object of the serving layer: environment → typed values, one-line errors.

Every target (the Flask container, Lambda, SageMaker) and the one gunicorn configuration read
their knobs here and nowhere else. A bad value stops start-up with a single line that names the
variable and what it accepts. The README's table "Serving settings" lists the same variables.

SageMaker sets its own platform variables (SAGEMAKER_BIND_TO_PORT, ...): on the `sagemaker`
target they take precedence over ours for the same knob, so a container started by SageMaker
and one started by hand read the same way.

Standard library only: gunicorn's master imports this before forking, and importing numpy or
onnxruntime there would start native threads that hang forked workers at exit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from services.core.cpus import default_threads, usable_cpus

TARGETS = ("http", "lambda", "sagemaker")
MIB = 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096  # decoded pixels per image; an MHIST patch is 224² = 50 k
# Lambda's synchronous invoke payload limit is 6 MB for the whole event, and binary bodies
# arrive base64-encoded (4/3 growth): 4.5 MB decoded is 6.0 MB of base64.
LAMBDA_MAX_CONTENT_LENGTH = 4_500_000
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A setting's value is unusable; the message names the variable and what it accepts."""


# --- parsers: raw string → value, or SettingsError naming what is accepted -------------------

def _int_at_least(minimum: int, accepted: str) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise SettingsError(accepted)
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer ≥ 0")


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise SettingsError("a positive number of seconds")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise SettingsError("a boolean: 1/0, true/false, yes/no or on/off")


def _text(raw: str) -> str:
    return raw


def _optional_text(raw: str) -> str | None:
    return raw or None


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.strip() for origin in raw.split(",") if origin.strip())


def _target(raw: str) -> str:
    if raw not in TARGETS:
        raise SettingsError(f"one of {', '.join(TARGETS)}")
    return raw


def _front_server(raw: str) -> str:
    if raw not in ("none", "nginx"):
        raise SettingsError("none or nginx")
    return raw


def _log_level(raw: str) -> str:
    if raw.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise SettingsError("debug, info, warning, error or critical")
    return raw.lower()


def _megabytes(raw: str) -> int:
    return _positive_int(raw) * MIB


@dataclass(frozen=True)
class S3Location:
    """`s3://BUCKET/PREFIX`, the prefix taken as a folder: "" (the whole bucket) or ending "/"."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def holds(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)

    def arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}/{self.prefix}*"


# S3's rules for new bucket names: 3-63 of a-z 0-9 . -, starting and ending alphanumeric.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def s3_location(raw: str) -> S3Location:
    """Parse `s3://BUCKET/PREFIX`; SettingsError naming the form otherwise."""
    bucket, _, prefix = raw.removeprefix("s3://").partition("/")
    if not raw.startswith("s3://") or not _BUCKET.match(bucket) or "//" in f"/{prefix}":
        raise SettingsError("s3://BUCKET/PREFIX (a lower-case bucket name, then an optional "
                            "folder such as incoming/)")
    return S3Location(bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/")


@dataclass(frozen=True)
class _Var:
    """How one setting is read: its variable, the SageMaker platform's name, its parser."""

    env: str
    parse: Callable[[str], Any]
    sagemaker_env: str | None = None
    sagemaker_parse: Callable[[str], Any] | None = None


_VARS: dict[str, _Var] = {
    "target": _Var("SERVING_TARGET", _target),
    "model_path": _Var("MODEL_PATH", _optional_text),
    "model_sha256": _Var("MODEL_SHA256", _optional_text),
    "model_dir": _Var("SM_MODEL_DIR", _text),
    "model_required": _Var("MODEL_REQUIRED", _bool),
    "model_retry_seconds": _Var("MODEL_RETRY_SECONDS", _positive_float),
    "max_content_length": _Var("MAX_CONTENT_LENGTH", _positive_int,
                               "SAGEMAKER_MAX_PAYLOAD_IN_MB", _megabytes),
    "max_batch": _Var("MAX_BATCH", _positive_int),
    "max_image_pixels": _Var("MAX_IMAGE_PIXELS", _positive_int),
    "api_token": _Var("MHIST_API_TOKEN", _optional_text),
    "front_server": _Var("FRONT_SERVER", _front_server),
    "host": _Var("HOST", _text),
    "port": _Var("PORT", _positive_int, "SAGEMAKER_BIND_TO_PORT", _positive_int),
    "workers": _Var("WEB_CONCURRENCY", _positive_int,
                    "SAGEMAKER_MODEL_SERVER_WORKERS", _positive_int),
    "threads": _Var("GUNICORN_THREADS", _positive_int),
    "timeout": _Var("GUNICORN_TIMEOUT", _positive_int,
                    "SAGEMAKER_MODEL_SERVER_TIMEOUT", _positive_int),
    "graceful_timeout": _Var("GUNICORN_GRACEFUL_TIMEOUT", _positive_int),
    "keepalive": _Var("GUNICORN_KEEPALIVE", _positive_int),
    "max_requests": _Var("GUNICORN_MAX_REQUESTS", _non_negative_int),
    "log_level": _Var("LOG_LEVEL", _log_level),
    "ort_threads": _Var("ORT_INTRA_OP_THREADS", _positive_int),
    "ort_spinning": _Var("ORT_SPINNING", _bool),
    "cors_allow_origins": _Var("CORS_ALLOW_ORIGINS", _origins),
    "emf_metrics": _Var("EMF_METRICS", _bool),
    "emf_namespace": _Var("EMF_NAMESPACE", _text),
    "function_name": _Var("AWS_LAMBDA_FUNCTION_NAME", _text),
    "s3_input": _Var("S3_INPUT_URI", s3_location),
    "s3_output": _Var("S3_OUTPUT_URI", s3_location),
    "s3_max_object_bytes": _Var("S3_MAX_OBJECT_BYTES", _positive_int),
}


@dataclass(frozen=True)
class Settings:
    """Every serving knob. Build it with `Settings.from_env()`; the README documents each."""

    target: str = "http"
    model_path: str | None = None
    model_sha256: str | None = None  # expected digest (SageMaker's manifest.json), checked at load
    model_dir: str = "/opt/ml/model"  # SageMaker extracts model.tar.gz here
    model_required: bool = True
    model_retry_seconds: float = 5.0
    max_content_length: int = 10 * MIB
    max_batch: int = 16
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    api_token: str | None = None
    # "nginx": a buffering front server before gunicorn (the images); "none": gunicorn alone.
    front_server: str = "none"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 1
    timeout: int = 30
    graceful_timeout: int = 8
    keepalive: int = 5
    max_requests: int = 0  # 0: never recycle workers
    log_level: str = "info"
    ort_threads: int = 1
    ort_spinning: bool = False
    cors_allow_origins: tuple[str, ...] = ()  # empty: no CORS headers
    emf_metrics: bool = False
    emf_namespace: str = "MhistClassifier"
    function_name: str = "local"
    # Lambda's S3 flow (services/adapters/s3_events.py): objects under s3_input → results
    # under s3_output; both or neither.
    s3_input: S3Location | None = None
    s3_output: S3Location | None = None
    s3_max_object_bytes: int = 10 * MIB

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Settings:
        """Defaults ← target defaults ← environment ← `overrides`. Override keys are a field's
        name in upper case or its environment variable ({"MODEL_PATH": ..., "API_TOKEN": ...}
        or {"MHIST_API_TOKEN": ...}); strings are parsed like the environment's, other values
        are taken as they are. SettingsError on a bad value or an unknown key."""
        environ = os.environ if environ is None else environ
        overrides = _by_field(overrides or {})
        target = _read("target", environ, overrides, "http", "http")
        values: dict[str, Any] = {"target": target}
        defaults = {**_target_defaults(target)}
        for name in _VARS:
            if name == "target":
                continue
            default = defaults.get(name, _FIELD_DEFAULTS.get(name))
            values[name] = _read(name, environ, overrides, target, default)
        if "ort_threads" not in _given("ort_threads", environ, overrides, target):
            values["ort_threads"] = default_threads(values["workers"] * values["threads"])
        _check_s3(values.get("s3_input"), values.get("s3_output"))
        return cls(**values)

    @property
    def worker_class(self) -> str:
        return "gthread" if self.threads > 1 else "sync"


_FIELD_DEFAULTS = {f.name: f.default for f in fields(Settings)}


_ALIASES = {**{var.env: name for name, var in _VARS.items()},
            **{name.upper(): name for name in _VARS}}


def _by_field(overrides: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(key for key in overrides if key.upper() not in _ALIASES)
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(_ALIASES))}")
    return {_ALIASES[key.upper()]: value for key, value in overrides.items()}


def _target_defaults(target: str) -> dict[str, Any]:
    """What differs by target before any variable is read."""
    if target == "sagemaker":
        # SageMaker: all interfaces, port 8080, one worker per CPU with 2 threads so /ping
        # answers while an invocation runs, its 6 MB payload limit, 60 s model-server timeout,
        # and a drain that ends well inside the 30 s between SIGTERM and SIGKILL.
        return {"host": "0.0.0.0", "port": 8080, "workers": usable_cpus(), "threads": 2,
                "max_content_length": 6 * MIB, "timeout": 60, "graceful_timeout": 25}
    if target == "lambda":
        return {"max_content_length": LAMBDA_MAX_CONTENT_LENGTH,
                "model_path": "/opt/model/model.onnx"}
    # One worker per CPU with one ORT thread each beats one worker with many threads for
    # throughput on small machines (benchmarks/test_throughput.py).
    return {"workers": min(usable_cpus(), 4)}


def _check_s3(source: S3Location | None, results: S3Location | None) -> None:
    """Both or neither, and no result may land where it would trigger the function again."""
    if (source is None) != (results is None):
        given, missing = ("S3_INPUT_URI", "S3_OUTPUT_URI") if results is None else (
            "S3_OUTPUT_URI", "S3_INPUT_URI")
        raise SettingsError(f"{given} is set but {missing} is not: the S3 flow needs both "
                            "(s3://BUCKET/PREFIX each)")
    # The result of key K is results.prefix + K + ".json", and K starts with source.prefix.
    if source and results and results.bucket == source.bucket and (
            results.prefix + source.prefix).startswith(source.prefix):
        raise SettingsError(f"S3_OUTPUT_URI={str(results)!r} would put results under "
                            f"S3_INPUT_URI={str(source)!r}, and each result would trigger the "
                            "function again: use another bucket or a prefix outside the input")


def _given(name: str, environ: Mapping[str, str], overrides: Mapping[str, Any],
           target: str) -> set[str]:
    """{name} when the setting was given by an override or a non-empty variable."""
    var = _VARS[name]
    names = [var.env] + ([var.sagemaker_env] if target == "sagemaker" and var.sagemaker_env
                         else [])
    if name in overrides and overrides[name] is not None:
        return {name}
    return {name} if any(environ.get(n, "").strip() for n in names) else set()


def _read(name: str, environ: Mapping[str, str], overrides: Mapping[str, Any], target: str,
          default: Any) -> Any:
    var = _VARS[name]
    if name in overrides:
        value = overrides[name]
        return _parse(var.env, var.parse, value) if isinstance(value, str) else value
    if target == "sagemaker" and var.sagemaker_env and environ.get(var.sagemaker_env, "").strip():
        raw = environ[var.sagemaker_env].strip()
        return _parse(var.sagemaker_env, var.sagemaker_parse or var.parse, raw)
    raw = environ.get(var.env, "")
    if not raw.strip():
        return default
    return _parse(var.env, var.parse, raw.strip())


def _parse(variable: str, parse: Callable[[str], Any], raw: str) -> Any:
    try:
        return parse(raw)
    except SettingsError as exc:
        raise SettingsError(f"{variable}={raw!r} is not valid: expected {exc}") from None


def variables() -> dict[str, tuple[str, str | None]]:
    """Setting name → (our variable, SageMaker's variable or None), for docs and tests."""
    return {name: (var.env, var.sagemaker_env) for name, var in _VARS.items()}
