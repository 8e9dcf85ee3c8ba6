"""Start a serving target the way its platform does and send it one 224² PNG.

Every target answers `send(png) -> Response` (status, body, seconds), so latency, throughput
and cold-start benchmarks treat every target alike. The serving targets and how each is
started come from services/targets.py (the one registry); by protocol:

    http            the image run with the entry's `command`, its model folder mounted at
                    `model_mount` when it has one (SageMaker: `IMAGE serve`, /opt/ml/model),
                    a raw image/png body POSTed to `predict_path` on `port`
    lambda-runtime  the image (awslambdaric) against tests.support.lambda_runtime's Runtime
                    API server; an API Gateway HTTP API (v2) event per request to `predict_path`

plus BASELINE ("torch"): benchmarks/baseline, the same Flask service on torch + TorchScript,
which is a benchmark's yardstick and never a serving target, so it is not in the registry.

Every registry target runs twice, with the FP32 and with the INT8 file (CONTAINER_VARIANTS):
"ONNX vs PyTorch" is then also measured at equal precision.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from benchmarks import BASELINE
from benchmarks.load import Client, Response
from services.targets import TARGETS, ServingTarget
from services.targets import target as serving_target
from tests.support.containers import Container, start_container
from tests.support.events import make_v2_event
from tests.support.lambda_runtime import LambdaRuntimeServer

PNG = "image/png"
BASELINE_PORT = 8080  # benchmarks/baseline/Dockerfile: PORT=8080
BASELINE_PREDICT_PATH = "/predict"
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class ContainerVariant:
    """One row of the container benchmarks: a target serving one precision of the model."""

    key: str  # result key and test id: flask-int8, sagemaker-fp32, torch
    target: str  # a services/targets.py name, or BASELINE
    precision: str  # which file it serves (the PyTorch baseline: FP32 TorchScript)

    @property
    def request(self) -> str:
        """What one prediction request is, for the report."""
        if self.target == BASELINE:
            return f"PNG body (`{PNG}`), POST {BASELINE_PREDICT_PATH}"
        spec = TARGETS[self.target]
        if spec.protocol == "lambda-runtime":
            return (f"API Gateway v2 event, base64 PNG body, path {spec.predict_path}, "
                    "through the Runtime API")
        return f"PNG body (`{PNG}`), POST {spec.predict_path}"


# What the container benchmarks (latency, cold start, size) run: every serving image with each
# precision, then the PyTorch baseline they are compared with.
CONTAINER_VARIANTS: tuple[ContainerVariant, ...] = (
    *(ContainerVariant(f"{name}-{precision}", name, precision)
      for name in TARGETS for precision in PRECISIONS),
    ContainerVariant(BASELINE, BASELINE, "fp32"),
)
CONTAINER_IDS = [v.key for v in CONTAINER_VARIANTS]
# One per distinct image: a target that mounts its model runs one image for both precisions.
IMAGE_VARIANTS = tuple(v for v in CONTAINER_VARIANTS
                       if v.target == BASELINE or TARGETS[v.target].bakes_model
                       or v.precision == PRECISIONS[-1])


def image_for(request, variant: ContainerVariant) -> str:
    """The image of `variant`, from the session fixture that builds it (on first use)."""
    if variant.target == BASELINE:
        return request.getfixturevalue("baseline_image")
    return request.getfixturevalue("onnx_images")[variant.key]


def request_bytes(variant: ContainerVariant, png: bytes) -> int:
    """Bytes of one prediction request's body (a Lambda event's JSON, else the PNG)."""
    if variant.target in TARGETS and TARGETS[variant.target].protocol == "lambda-runtime":
        return len(json.dumps(lambda_event(png, TARGETS[variant.target].predict_path)))
    return len(png)


def needs_model_dir(name: str) -> bool:
    """Whether `name` mounts its model folder at run time instead of baking the file in."""
    return name in TARGETS and TARGETS[name].model_mount is not None


@dataclass
class HttpTarget:
    name: str
    box: Container
    path: str
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = Client(self.box.url("/"))

    @property
    def base_url(self) -> str:
        return self.box.url("/")

    def send(self, png: bytes) -> Response:
        return self.client.post(self.path, png, PNG)


@dataclass
class LambdaTarget:
    """The Lambda image polling our Runtime API server; `send` is one invocation."""

    name: str
    box: Container
    runtime: LambdaRuntimeServer
    path: str

    def send(self, png: bytes, timeout: float = 60.0) -> Response:
        """One invocation, timed here from before the event is queued to its result."""
        started = time.perf_counter()
        invocation = self.runtime.invoke(lambda_event(png, self.path), timeout=timeout)
        return lambda_response(invocation, time.perf_counter() - started)


def lambda_event(png: bytes, path: str) -> dict:
    return make_v2_event(method="POST", path=path, headers={"content-type": PNG},
                         body=png, binary=True)


def lambda_response(invocation, seconds: float) -> Response:
    """An Invocation as an HTTP-like Response: the function's statusCode and JSON body."""
    if invocation.error is not None:
        return Response(599, json.dumps(invocation.error).encode(), seconds)
    result = invocation.response or {}
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        import base64

        data = base64.b64decode(body)
    else:
        data = body.encode()
    return Response(int(result.get("statusCode", 599)), data, seconds)


def server_env(threads: int, workers: int = 1) -> dict[str, str]:
    """One gunicorn worker with `threads` ORT intra-op threads, in the variables every HTTP
    target reads (services/web/settings.py); gunicorn threads stay at the target's default (1;
    SageMaker 2, so /ping answers while an invocation runs)."""
    return {"WEB_CONCURRENCY": str(workers), "ORT_INTRA_OP_THREADS": str(threads)}


def start_target(name: str, image: str, *, threads: int, env: dict[str, str] | None = None,
                 model_dir=None, runtime: LambdaRuntimeServer | None = None):
    """Start `name`'s container (not waiting for it); the caller owns stopping it. `env`
    replaces an HTTP target's default environment and adds to a Lambda target's; `model_dir`
    is the model folder of a target that mounts one (see needs_model_dir)."""
    if name == BASELINE:
        box = start_container(image, port=BASELINE_PORT, env=env or {
            "WEB_CONCURRENCY": "1", "TORCH_NUM_THREADS": str(threads)})
        return HttpTarget(name, box, BASELINE_PREDICT_PATH)
    spec = serving_target(name)
    volumes = _model_volumes(spec, model_dir)
    if spec.protocol == "http":
        box = start_container(image, port=spec.port, command=spec.command, volumes=volumes,
                              env=env or server_env(threads))
        return HttpTarget(name, box, spec.predict_path)
    if spec.protocol == "lambda-runtime":
        if runtime is None:
            raise ValueError(f"the {name} target needs a running LambdaRuntimeServer")
        # Host network: the runtime client reaches our Runtime API server on 127.0.0.1.
        box = start_container(image, network_host=True, command=spec.command, volumes=volumes,
                              env={"AWS_LAMBDA_RUNTIME_API": runtime.address,
                                   "ORT_INTRA_OP_THREADS": str(threads),
                                   "AWS_LAMBDA_FUNCTION_NAME": "mhist-classifier",
                                   "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048", **(env or {})})
        return LambdaTarget(name, box, runtime, spec.predict_path)
    raise ValueError(f"target {name!r}: no benchmark driver for protocol {spec.protocol!r}")


def _model_volumes(spec: ServingTarget, model_dir) -> list[str]:
    if spec.model_mount is None:
        return []
    if model_dir is None:
        raise ValueError(f"the {spec.name} target reads its model from {spec.model_mount}: "
                         "pass model_dir")
    return [f"{model_dir}:{spec.model_mount}:ro"]


def wait_first_ok(target, png: bytes, timeout: float = 120.0) -> tuple[float, Response]:
    """Seconds from `podman run` to the first 200 prediction, and that response.

    HTTP targets are polled with the real request every 25 ms; for Lambda the event is
    queued at once and waits for INIT (as the service holds a request during a cold start).
    """
    started = target.box.started_at
    if isinstance(target, LambdaTarget):
        reply = target.send(png, timeout=timeout)
        return time.perf_counter() - started, reply
    deadline = time.perf_counter() + timeout
    last = "no answer"
    while time.perf_counter() < deadline:
        try:
            reply = target.send(png)
        except (OSError, http.client.HTTPException) as exc:  # refused/reset while starting
            last = repr(exc)
        else:
            if reply.status == 200:
                return time.perf_counter() - started, reply
            last = f"HTTP {reply.status}: {reply.body[:200]!r}"
        if target.box.state() not in ("running", "created", ""):
            raise RuntimeError(f"{target.name} container exited before answering:\n"
                               f"{target.box.logs()[-3000:]}")
        time.sleep(0.025)
    raise TimeoutError(f"{target.name}: no 200 within {timeout:.0f} s (last: {last})\n"
                       f"{target.box.logs()[-3000:]}")


@contextlib.contextmanager
def running(name: str, image: str, **kwargs) -> Iterator:
    """start_target(...) with the container always removed; a Lambda target brings its own
    Runtime API server when none is passed."""
    own_runtime = (name in TARGETS and TARGETS[name].protocol == "lambda-runtime"
                   and kwargs.get("runtime") is None)
    if own_runtime:
        kwargs["runtime"] = LambdaRuntimeServer().start()
    target = None
    try:
        target = start_target(name, image, **kwargs)
        yield target
    finally:
        if target is not None:
            target.box.remove()
        if own_runtime:
            kwargs["runtime"].stop()
