"""Build the images the benchmarks run: every ONNX serving image and the PyTorch baseline.

The ONNX images are those of services/targets.py's registry, built with awsdeploy.images (the
same Dockerfiles and build arguments as `make images`), with the benchmark's own INT8 model
baked in where the target bakes one, under `:bench` tags; the engine's layer cache makes this
cheap after the tests built the same Dockerfiles. The baseline image is built from a small,
assembled context (the wheel and model never land in the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from awsdeploy import containers, images
from services.targets import TARGETS

REPO_ROOT = containers.REPO_ROOT
BENCH_MODEL_IN_REPO = "artifacts/mhist-bench.int8.onnx"  # .dockerignore lets artifacts/*.onnx in
BASELINE_DOCKERFILE = "benchmarks/baseline/Dockerfile"
BASELINE_TAG = "mhist-torch-baseline:bench"
DEFAULT_TORCH_VERSION = "2.13.0"
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
# What the baseline image copies from the repository (paths relative to the root).
BASELINE_SOURCES = (
    "constraints.txt",
    "services/__init__.py",
    "services/errors.py",
    "services/payload.py",
    "services/preprocessing.py",
    BASELINE_DOCKERFILE,
    "benchmarks/baseline/app.py",
    "benchmarks/baseline/wheels/README.md",
)
BASELINE_MODEL = "benchmarks/baseline/model/model.torchscript.pt"


class BaselineUnavailable(RuntimeError):
    """No torch CPU build can be put into the baseline image here; the message says why."""


@dataclass(frozen=True)
class BuiltImage:
    target: str
    tag: str
    build_s: float


def onnx_image_tags() -> dict[str, str]:
    """Target name → its benchmark tag, e.g. flask → mhist-flask:bench."""
    return {name: f"{target.image}:bench" for name, target in TARGETS.items()}


def build_onnx_images(model: Path, names: tuple[str, ...] = tuple(TARGETS)
                      ) -> dict[str, BuiltImage]:
    """Build each serving image with `model` baked in (one that mounts its model, SageMaker's,
    reads it from a volume at run time)."""
    staged = REPO_ROOT / BENCH_MODEL_IN_REPO
    staged.parent.mkdir(parents=True, exist_ok=True)
    if not staged.exists() or staged.read_bytes() != model.read_bytes():
        shutil.copyfile(model, staged)
    built = {}
    for name in names:
        started = time.perf_counter()
        tag = images.build_target(name, model=BENCH_MODEL_IN_REPO, tag=onnx_image_tags()[name])
        built[name] = BuiltImage(name, tag, time.perf_counter() - started)
    return built


def torch_cpu_wheel(download_dir: Path, version: str = DEFAULT_TORCH_VERSION) -> Path | None:
    """A torch CPU wheel for the baseline: $MHIST_TORCH_WHEEL, else `pip download` (which, on
    machines with a local wheel cache, finds the CPU build). None when only a CUDA build (or
    nothing) is available: the image then installs from TORCH_INDEX_URL instead."""
    given = os.environ.get("MHIST_TORCH_WHEEL")
    if given:
        path = Path(given)
        if not path.is_file():
            raise BaselineUnavailable(f"MHIST_TORCH_WHEEL={given} is not a file")
        return path
    download_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", f"torch=={version}", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.11", "-d", str(download_dir)],
        capture_output=True, text=True, timeout=900,
    )
    wheels = sorted(download_dir.glob("torch-*.whl"))
    cpu = [w for w in wheels if "+cpu" in w.name]
    if result.returncode != 0 or not cpu:
        # PyPI's plain Linux wheel is the CUDA build (GBs with its nvidia-* dependencies):
        # never bake that into a "CPU baseline".
        return None
    return cpu[0]


def assemble_baseline_context(context: Path, torchscript: Path, wheel: Path | None) -> Path:
    """A build context laid out like the repository, holding only what the Dockerfile copies."""
    if context.exists():
        shutil.rmtree(context)
    for relative in BASELINE_SOURCES:
        destination = context / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / relative, destination)
    model = context / BASELINE_MODEL
    model.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(torchscript, model)
    if wheel is not None:
        _link_or_copy(wheel, context / "benchmarks/baseline/wheels" / wheel.name)
    return context


def build_baseline(context: Path, torchscript: Path, wheel: Path | None,
                   index_url: str | None = None,
                   version: str = DEFAULT_TORCH_VERSION) -> BuiltImage:
    """Build the PyTorch baseline image; BaselineUnavailable when no torch CPU build can be
    installed here (no wheel, and the index is unreachable)."""
    assemble_baseline_context(context, torchscript, wheel)
    args = {"MODEL_FILE": BASELINE_MODEL, "TORCH_VERSION": version,
            "TORCH_INDEX_URL": index_url or os.environ.get("MHIST_TORCH_INDEX_URL",
                                                           DEFAULT_TORCH_INDEX_URL)}
    started = time.perf_counter()
    try:
        containers.build(BASELINE_TAG, context / BASELINE_DOCKERFILE, context=context,
                         build_args=args)
    except RuntimeError as exc:
        if wheel is None:
            raise BaselineUnavailable(
                f"no torch CPU wheel here and installing torch=={version} from "
                f"{args['TORCH_INDEX_URL']} failed (offline?); set MHIST_TORCH_WHEEL to a "
                f"CPU wheel or skip with MHIST_BENCH_SKIP=torch-image. Build error: "
                f"{str(exc)[-800:]}"
            ) from exc
        raise
    return BuiltImage("torch-baseline", BASELINE_TAG, time.perf_counter() - started)


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copyfile(source, destination)
