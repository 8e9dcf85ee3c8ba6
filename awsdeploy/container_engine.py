"""Container engine access: docker when a daemon answers, else podman.

Used by the deploy scripts (build, tag, push to ECR), by `make images`, and by the tests and
benchmarks that build and run the serving images. No boto3 here.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
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
        "(Debian: apt-get install podman), or set CONTAINER_ENGINE=docker|podman"
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


class RegistryLoginError(RuntimeError):
    """The registry refused the credentials (or could not be reached); one line for the user."""


class PushFailed(RuntimeError):
    """The engine could not push (network, quota, permissions); one line for the user."""


def image_id(tag: str) -> str:
    """The local image's id as `sha256:HEX`: the digest of its config, which a registry's
    manifest names too (podman prints the bare hex, docker the prefixed form)."""
    out = subprocess.run([engine(), "image", "inspect", tag, "--format", "{{.Id}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out if out.startswith("sha256:") else f"sha256:{out}"


def _tls_flags(tls_verify: bool) -> list[str]:
    # Plain HTTP needs podman's --tls-verify=false; docker has no such flag and already talks
    # plain HTTP to 127.0.0.0/8, the only place awsdeploy.aws lets an insecure registry be.
    return [] if tls_verify or engine() == "docker" else ["--tls-verify=false"]


def login(registry: str, username: str, password: str, tls_verify: bool = True) -> None:
    """`ENGINE login` with the password on stdin (never in argv, where `ps` shows it)."""
    command = [engine(), "login", *_tls_flags(tls_verify), "--username", username,
               "--password-stdin", registry]
    result = subprocess.run(command, input=password, text=True, capture_output=True)
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise RegistryLoginError(f"{engine()} login to {registry} as {username} failed: "
                                 f"{reason[-1] if reason else f'exit {result.returncode}'}")


def push(local_tag: str, remote_tag: str, tls_verify: bool = True) -> str:
    """Tag and push; returns the pushed manifest's digest (sha256:HEX).

    podman pushes `--format v2s2`: the Docker single-image manifest, the format the image was
    built in (build() keeps HEALTHCHECK that way), never a manifest list, which Lambda refuses.
    docker pushes what it built, a single manifest since build() passes --provenance=false.
    """
    subprocess.run([engine(), "tag", local_tag, remote_tag], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as folder:
        digest_file = Path(folder) / "digest"
        single = [] if engine() == "docker" else ["--format", "v2s2",
                                                   "--digestfile", str(digest_file)]
        command = [engine(), "push", *single, *_tls_flags(tls_verify), remote_tag]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            reason = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
            raise PushFailed(f"{engine()} push {remote_tag} failed: {reason[-1]}")
        if digest_file.exists():
            return digest_file.read_text().strip()
    # docker prints "TAG: digest: sha256:HEX size: N" as its last line.
    found = re.search(r"digest: (sha256:[0-9a-f]{64})", result.stdout)
    if not found:
        raise PushFailed(f"docker push {remote_tag} printed no digest: {result.stdout[-500:]}")
    return found[1]
