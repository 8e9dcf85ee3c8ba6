"""Build the serving images with docker (daemon answering) or podman.

    python -m awsdeploy.images build flask [--model artifacts/model.int8.onnx] [--tag TAG]
    python -m awsdeploy.images build all --model artifacts/model.int8.onnx
    python -m awsdeploy.images list

The targets, their Dockerfiles, default image names and whether the Dockerfile bakes a model
in all come from the one registry, services/targets.py. BASE_IMAGE comes from the environment
(awsdeploy.container_engine.base_image); the model path is relative to the repository root, which is
the build context, and must match .dockerignore's whitelist (artifacts/*.onnx). A target that
mounts its model at run time (SageMaker: /opt/ml/model) gets no MODEL_FILE build argument.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from awsdeploy import container_engine
from services.targets import TARGETS, ServingTarget
from services.targets import target as serving_target

DEFAULT_MODEL = "artifacts/model.int8.onnx"


def build_args(target: ServingTarget, model: str | None) -> dict[str, str]:
    """Build arguments for one target; MODEL_FILE only where the Dockerfile bakes a model."""
    if not target.bakes_model:
        return {}
    path = model or DEFAULT_MODEL
    resolved = Path(path) if Path(path).is_absolute() else container_engine.REPO_ROOT / path
    try:
        relative = resolved.resolve().relative_to(container_engine.REPO_ROOT)
    except ValueError:
        raise SystemExit(
            f"--model {path} is outside the build context {container_engine.REPO_ROOT}; copy it to "
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
    """Build one target's image (default tag: the registry's image name); returns its tag."""
    target = serving_target(name)
    return container_engine.build(
        tag or target.image,
        container_engine.REPO_ROOT / target.dockerfile,
        context=container_engine.REPO_ROOT,
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
    sub.add_parser("list", help="print target, Dockerfile, image and how it gets its model")
    args = parser.parse_args(argv)

    if args.command == "list":
        for target in TARGETS.values():
            model = ("baked in (--model)" if target.bakes_model
                     else f"mounted at {target.model_mount}")
            print(f"{target.name}\t{target.dockerfile}\t{target.image}\t{model}")
        return 0
    names = list(TARGETS) if args.target == "all" else [args.target]
    if args.tag and len(names) > 1:
        parser.error("--tag needs a single target")
    try:
        engine = container_engine.engine()
    except container_engine.EngineUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in names:
        started = time.perf_counter()
        try:
            tag = build_target(name, args.model, args.tag)
        except RuntimeError as exc:
            print(f"error: building {name} failed: {exc}", file=sys.stderr)
            return 1
        size_mb = container_engine.image_size_bytes(tag) / 1e6
        print(f"{name}: built {tag} with {engine} in {time.perf_counter() - started:.0f} s "
              f"({size_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
