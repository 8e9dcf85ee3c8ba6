"""Build the three serving images with docker (daemon answering) or podman.

    python -m awsdeploy.images build flask [--model artifacts/model.int8.onnx] [--tag TAG]
    python -m awsdeploy.images build all --model artifacts/model.int8.onnx
    python -m awsdeploy.images list

BASE_IMAGE comes from the environment (awsdeploy.containers.base_image); the model path is
relative to the repository root, which is the build context, and must match .dockerignore's
whitelist (artifacts/*.onnx). SageMaker's image reads its model from /opt/ml/model at run time,
so --model is not passed to it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from awsdeploy import containers

DEFAULT_MODEL = "artifacts/model.int8.onnx"


@dataclass(frozen=True)
class Target:
    name: str
    dockerfile: str  # relative to the repository root
    tag: str
    takes_model: bool  # whether the Dockerfile bakes MODEL_FILE in


TARGETS: dict[str, Target] = {
    "flask": Target("flask", "services/Dockerfile", "mhist-flask", True),
    "lambda": Target("lambda", "lambda/Dockerfile", "mhist-lambda", True),
    "sagemaker": Target("sagemaker", "sagemaker/Dockerfile", "mhist-sagemaker", False),
}


def build_args(target: Target, model: str | None) -> dict[str, str]:
    """Build arguments for one target; MODEL_FILE only where the Dockerfile bakes a model."""
    if not target.takes_model:
        return {}
    path = model or DEFAULT_MODEL
    resolved = Path(path) if Path(path).is_absolute() else containers.REPO_ROOT / path
    try:
        relative = resolved.resolve().relative_to(containers.REPO_ROOT)
    except ValueError:
        raise SystemExit(
            f"--model {path} is outside the build context {containers.REPO_ROOT}; copy it to "
            "artifacts/ first"
        ) from None
    if relative.parent != Path("artifacts") or relative.suffix != ".onnx":
        # .dockerignore sends only artifacts/*.onnx into the build context.
        raise SystemExit(f"--model {path} must be an artifacts/*.onnx file (see .dockerignore)")
    if not resolved.is_file():
        raise SystemExit(
            f"--model {path} does not exist; export one with `python export/to_onnx.py "
            "--out artifacts` (or `make export`)"
        )
    return {"MODEL_FILE": relative.as_posix()}


def build_target(name: str, model: str | None = None, tag: str | None = None) -> str:
    """Build one target's image; returns its tag."""
    target = TARGETS[name]
    return containers.build(
        tag or target.tag,
        containers.REPO_ROOT / target.dockerfile,
        context=containers.REPO_ROOT,
        build_args=build_args(target, model),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the serving images.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build one target or all")
    build.add_argument("target", choices=[*TARGETS, "all"], help="which image")
    build.add_argument("--model", default=None,
                       help=f"ONNX file inside the repository to bake in (default {DEFAULT_MODEL})")
    build.add_argument("--tag", default=None, help="image tag (default: the target's, e.g. "
                                                    "mhist-flask); only with one target")
    sub.add_parser("list", help="print target, Dockerfile and tag")
    args = parser.parse_args(argv)

    if args.command == "list":
        for target in TARGETS.values():
            print(f"{target.name}\t{target.dockerfile}\t{target.tag}")
        return 0
    names = list(TARGETS) if args.target == "all" else [args.target]
    if args.tag and len(names) > 1:
        parser.error("--tag needs a single target")
    try:
        engine = containers.engine()
    except containers.EngineUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in names:
        started = time.perf_counter()
        try:
            tag = build_target(name, args.model, args.tag)
        except RuntimeError as exc:
            print(f"error: building {name} failed: {exc}", file=sys.stderr)
            return 1
        size_mb = containers.image_size_bytes(tag) / 1e6
        print(f"{name}: built {tag} with {engine} in {time.perf_counter() - started:.0f} s "
              f"({size_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
