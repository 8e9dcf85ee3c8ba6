"""The one settings object of the serving layer: environment → typed values, one-line errors.

Every target (the Flask container, Lambda, SageMaker) and the one gunicorn configuration read
their knobs here and nowhere else. A bad value stops start-up with a single line that names the
variable and what it accepts. The documentation's settings table is generated from these
declarations (`describe`).

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
from dataclasses import dataclass, field, fields
from typing import Any

from services.core.cpus import CLASS_SETTING_VALUES, default_threads, usable_cpus
from services.core.preprocessing import DEFAULT_MAX_PIXELS
from services.core.switches import WORDS_TEXT, parse_switch

# The one vocabulary of targets: the names of the image registry (services/targets.py).
TARGETS = ("flask", "lambda", "sagemaker")
MIB = 1024 * 1024
# Lambda's synchronous invoke payload limit is 6 MB for the whole event, and binary bodies
# arrive base64-encoded (4/3 growth): 4.5 MB decoded is 6.0 MB of base64.
LAMBDA_MAX_CONTENT_LENGTH = 4_500_000


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
    value = parse_switch(raw)
    if value is None:
        raise SettingsError(f"a boolean: {WORDS_TEXT}")
    return value


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


def _cpu_class(raw: str) -> str:
    if raw.lower() not in CLASS_SETTING_VALUES:
        raise SettingsError(f"one of {', '.join(CLASS_SETTING_VALUES)}")
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
    """How one setting is read: its variable, the SageMaker platform's name, its parser, and
    what the documentation says of it (the settings table is generated from these)."""

    env: str
    parse: Callable[[str], Any]
    doc: str
    read_by: str = "F L S"  # F: the Flask container, L: Lambda, S: SageMaker
    default_doc: str | None = None  # the default in words, where it depends on the target
    sagemaker_env: str | None = None
    sagemaker_parse: Callable[[str], Any] | None = None


def setting(default: Any, env: str, parse: Callable[[str], Any], doc: str, **how: Any) -> Any:
    """A Settings field and everything about its variable, declared in one place."""
    return field(default=default, metadata={"var": _Var(env, parse, doc, **how)})


@dataclass(frozen=True)
class Settings:
    """Every serving knob, each declared once with its variable, parser and description.
    Build it with `Settings.from_env()`."""

    target: str = setting(
        "flask", "SERVING_TARGET", _target,
        "which platform runs the app: the Lambda adapter sets `lambda`, `serve` sets "
        "`sagemaker`")
    model_path: str | None = setting(
        None, "MODEL_PATH", _optional_text, "the ONNX file to serve",
        default_doc="F: required; L: `/opt/model/model.onnx`; S: found in `SM_MODEL_DIR`")
    model_sha256: str | None = setting(
        None, "MODEL_SHA256", _optional_text,
        "expected SHA-256 of the model file, checked at load (SageMaker's manifest.json)",
        read_by="S")
    model_dir: str = setting(
        "/opt/ml/model", "SM_MODEL_DIR", _text,
        "where SageMaker extracts model.tar.gz", read_by="S")
    model_required: bool = setting(
        True, "MODEL_REQUIRED", _bool,
        "with 0 the app starts without a model, answers 503 on `/ready` and retries the load "
        "every `MODEL_RETRY_SECONDS`")
    model_retry_seconds: float = setting(
        5.0, "MODEL_RETRY_SECONDS", _positive_float,
        "seconds between load attempts when `MODEL_REQUIRED=0`")
    max_content_length: int = setting(
        10 * MIB, "MAX_CONTENT_LENGTH", _positive_int,
        "largest request body in bytes, chunked bodies included (413 above); SageMaker's "
        "variable is in MB",
        sagemaker_env="SAGEMAKER_MAX_PAYLOAD_IN_MB", sagemaker_parse=_megabytes)
    max_batch: int = setting(16, "MAX_BATCH", _positive_int,
                             "most images in one `/predict/batch` or JSON `/invocations` batch")
    max_image_pixels: int = setting(
        DEFAULT_MAX_PIXELS, "MAX_IMAGE_PIXELS", _positive_int,
        "most decoded pixels in one image", default_doc="4096² = 16,777,216")
    api_token: str | None = setting(
        None, "MHIST_API_TOKEN", _optional_text,
        "when set, every route except `/health`, `/ready`, `/ping` and the upload page needs "
        "`Authorization: Bearer TOKEN`")
    front_server: str = setting(
        "none", "FRONT_SERVER", _front_server,
        "`nginx`: a buffering front server before gunicorn (the Flask and SageMaker images set "
        "it); `none`: gunicorn alone", read_by="F S")
    host: str = setting("127.0.0.1", "HOST", _text, "address to listen on",
                        default_doc="127.0.0.1; the images and S: 0.0.0.0", read_by="F S")
    port: int = setting(8000, "PORT", _positive_int, "port to listen on",
                        default_doc="8000; the images and S: 8080", read_by="F S",
                        sagemaker_env="SAGEMAKER_BIND_TO_PORT", sagemaker_parse=_positive_int)
    workers: int = setting(
        1, "WEB_CONCURRENCY", _positive_int,
        "gunicorn worker processes; each builds its own ONNX Runtime session",
        default_doc="usable CPUs, at most 4; S: one per CPU", read_by="F S",
        sagemaker_env="SAGEMAKER_MODEL_SERVER_WORKERS", sagemaker_parse=_positive_int)
    threads: int = setting(
        1, "GUNICORN_THREADS", _positive_int,
        "threads per worker (above 1: gthread workers)",
        default_doc="1; S: 2, so `/ping` answers while an invocation runs", read_by="F S")
    timeout: int = setting(
        30, "GUNICORN_TIMEOUT", _positive_int,
        "seconds before a busy worker is killed; nginx gives up 5 s later",
        default_doc="30 s; S: 60 s", read_by="F S",
        sagemaker_env="SAGEMAKER_MODEL_SERVER_TIMEOUT", sagemaker_parse=_positive_int)
    graceful_timeout: int = setting(
        8, "GUNICORN_GRACEFUL_TIMEOUT", _positive_int,
        "seconds a worker gets to finish its request after SIGTERM",
        default_doc="8 s (inside the 10 s `docker stop` waits); S: 25 s (inside SageMaker's 30 s)",
        read_by="F S")
    keepalive: int = setting(5, "GUNICORN_KEEPALIVE", _positive_int,
                             "seconds an idle keep-alive connection stays open", read_by="F S")
    max_requests: int = setting(0, "GUNICORN_MAX_REQUESTS", _non_negative_int,
                                "requests before a worker is recycled (0: never)", read_by="F S")
    log_level: str = setting("info", "LOG_LEVEL", _log_level,
                             "debug, info, warning, error or critical")
    ort_threads: int = setting(
        1, "ORT_INTRA_OP_THREADS", _positive_int,
        "ONNX Runtime intra-op threads per worker, sized from the container's CPU "
        "quota rather than the host's cores",
        default_doc="usable CPUs ÷ (workers × threads), at least 1")
    ort_spinning: bool = setting(
        False, "ORT_SPINNING", _bool,
        "spinning intra-op threads busy-wait for work: pays off only when one process owns the "
        "CPUs")
    cpu_class: str = setting(
        "auto", "CPU_CLASS", _cpu_class,
        "`auto`: read this CPU's class from CPUID at start and refuse an INT8 file made for a "
        "class it lacks (a `vnni` file on an AVX2-only CPU); `portable` or `vnni`: take this "
        "CPU for that class instead (`vnni` serves a full-range file where CPUID shows no "
        "VNNI, e.g. AVX-VNNI CPUs numpy does not name: at the risk of saturated answers)")
    cors_allow_origins: tuple[str, ...] = setting(
        (), "CORS_ALLOW_ORIGINS", _origins,
        "`*` or comma-separated origins allowed to call the API from a browser (empty: no CORS "
        "headers)")
    emf_metrics: bool = setting(
        False, "EMF_METRICS", _bool,
        "with 1 each log line is also a CloudWatch embedded-metric-format record")
    emf_namespace: str = setting("MhistClassifier", "EMF_NAMESPACE", _text,
                                 "CloudWatch namespace of the EMF records")
    function_name: str = setting("local", "AWS_LAMBDA_FUNCTION_NAME", _text,
                                 "set by Lambda; names the function in logs and metrics",
                                 read_by="L")
    s3_input: S3Location | None = setting(  # noqa: RUF009 -- setting() returns a field
        None, "S3_INPUT_URI", s3_location,
        "`s3://BUCKET/PREFIX`: classify objects created here (the S3 flow; needs "
        "`S3_OUTPUT_URI`)", read_by="L")
    s3_output: S3Location | None = setting(  # noqa: RUF009 -- setting() returns a field
        None, "S3_OUTPUT_URI", s3_location,
        "`s3://BUCKET/PREFIX`: where the result of key K is written as K.json; never under "
        "the input", read_by="L")
    s3_max_object_bytes: int = setting(
        10 * MIB, "S3_MAX_OBJECT_BYTES", _positive_int,
        "a larger object gets an error result instead of being read", read_by="L")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Settings:
        """Defaults ← target defaults ← environment ← `overrides`. Override keys are a field's
        name in upper case or its environment variable ({"MODEL_PATH": ..., "API_TOKEN": ...}
        or {"MHIST_API_TOKEN": ...}); strings are parsed like the environment's, other values
        are taken as they are. SettingsError on a bad value or an unknown key."""
        environ = os.environ if environ is None else environ
        overrides = _by_field(overrides or {})
        target = _read("target", environ, overrides, "flask", "flask")
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


_VARS: dict[str, _Var] = {f.name: f.metadata["var"] for f in fields(Settings)}
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


def describe() -> list[dict[str, str]]:
    """One row per setting, in declaration order, for the generated settings table: variable,
    default (per target where they differ; in words where it depends on the machine), read by,
    SageMaker's name, what it does."""
    per_target = {target: Settings.from_env({}, {"SERVING_TARGET": target})
                  for target in TARGETS}
    rows = []
    for name, var in _VARS.items():
        shown = {target: _shown(getattr(values, name)) for target, values in per_target.items()}
        same = len(set(shown.values())) == 1
        default = var.default_doc or (shown["flask"] if same else "; ".join(
            f"{_TARGET_LETTER[target]}: {text}" for target, text in shown.items()))
        rows.append({"variable": var.env, "default": default, "read_by": var.read_by,
                     "sagemaker": var.sagemaker_env or "", "doc": var.doc})
    return rows


_TARGET_LETTER = {"flask": "F", "lambda": "L", "sagemaker": "S"}


def _shown(value: Any) -> str:
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        return f"{value // MIB} MiB"
    return f"`{value}`" if isinstance(value, str) else str(value)
