"""The one registry of serving targets: image builds, benchmarks and tests read it.

A new target is one entry here plus its adapter (services/adapters/) and its folder (Dockerfile,
entry file, deploy script). Every target serves the same app (services/web/app.py); an entry says
only how the platform starts it and how bytes reach it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServingTarget:
    name: str
    folder: str  # the target's own folder: its Dockerfile, entry file and deploy script
    dockerfile: str  # relative to the repository root (the build context)
    image: str  # default image name
    # "http": the container listens on `port`; "lambda-runtime": awslambdaric pulls events
    # from the Lambda Runtime API, and requests arrive as API Gateway / URL / ALB events.
    protocol: str
    port: int | None  # container port of an HTTP target
    command: tuple[str, ...]  # arguments after the image name ((): the image's CMD)
    health_path: str  # the platform's probe
    predict_path: str  # where one image is POSTed
    bakes_model: bool  # the Dockerfile copies MODEL_FILE in; else the model is mounted
    model_mount: str | None  # where a mounted model folder goes (SageMaker: /opt/ml/model)


TARGETS: dict[str, ServingTarget] = {
    target.name: target for target in (
        ServingTarget(
            name="flask", folder="services", dockerfile="services/Dockerfile",
            image="mhist-flask", protocol="http", port=8080,
            command=(), health_path="/health", predict_path="/predict",
            bakes_model=True, model_mount=None,
        ),
        ServingTarget(
            name="lambda", folder="lambda", dockerfile="lambda/Dockerfile",
            image="mhist-lambda", protocol="lambda-runtime",
            port=None, command=(), health_path="/health", predict_path="/predict",
            bakes_model=True, model_mount=None,
        ),
        ServingTarget(
            name="sagemaker", folder="sagemaker", dockerfile="sagemaker/Dockerfile",
            image="mhist-sagemaker", protocol="http", port=8080,
            command=("serve",), health_path="/ping", predict_path="/invocations",
            bakes_model=False, model_mount="/opt/ml/model",
        ),
    )
}


def target(name: str) -> ServingTarget:
    """The entry for `name`; KeyError naming the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown serving target {name!r}; known: {', '.join(TARGETS)}") from None
