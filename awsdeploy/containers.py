"""Container engine access: docker when a daemon answers, else podman.

Used by the deploy scripts (build, tag, push to ECR), by `make images`, and by the tests and
benchmarks that build and run the serving images. No boto3 here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"


class EngineUnavailable(RuntimeError):
    """Neither a docker daemon nor podman can be used."""


@functools.cache
def engine() -> str:
    """`docker` if its daemon answers, else `podman`; `CONTAINER_ENGINE` overrides."""
    chosen = os.environ.get("CONTAINER_ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker") and _succeeds(["docker", "info"]):
        return "docker"
    if shutil.which("podman") and _succeeds(["podman", "info"]):
        return "podman"
    raise EngineUnavailable(
        "no container engine: start a Docker daemon or install podman "
        "(on the project's dev machines: bash ../shared/tools/container-setup.sh)"
    )


def _succeeds(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def base_image() -> str:
    """The Dockerfiles' BASE_IMAGE: the env var (set from container-setup.sh) or the public one."""
    return os.environ.get("BASE_IMAGE", DEFAULT_BASE_IMAGE)


def build(
    tag: str,
    dockerfile: str | Path,
    context: str | Path = REPO_ROOT,
    build_args: dict[str, str] | None = None,
    platform: str | None = None,
) -> str:
    """Build an image; returns the tag. Output goes to the caller's stderr on failure."""
    args = {"BASE_IMAGE": base_image(), **(build_args or {})}
    command = [engine(), "build", "-t", tag, "-f", str(dockerfile)]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    if platform:
        command += ["--platform", platform]
    if engine() == "docker":
        # ECR rejects the attestation manifests buildx adds by default.
        command += ["--provenance=false"]
    else:
        # podman's default OCI format drops HEALTHCHECK (and SHELL); the docker format keeps it.
        command += ["--format", "docker"]
    command.append(str(context))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return tag


def image_size_bytes(tag: str) -> int:
    out = subprocess.run(
        [engine(), "image", "inspect", tag, "--format", "{{json .Size}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out))


def login(registry: str, username: str, password: str) -> None:
    subprocess.run(
        [engine(), "login", "--username", username, "--password-stdin", registry],
        input=password,
        text=True,
        check=True,
        capture_output=True,
    )


def push(local_tag: str, remote_tag: str) -> None:
    subprocess.run([engine(), "tag", local_tag, remote_tag], check=True, capture_output=True)
    subprocess.run([engine(), "push", remote_tag], check=True, capture_output=True)
