"""Build the images the benchmarks run: every ONNX serving image and the PyTorch baseline.

The ONNX images are those of services/targets.py's registry, built with awsdeploy.images (the
same Dockerfiles and build arguments as `make images`), once with the benchmark's FP32 and
once with its INT8 file baked in where the target bakes one (a target that mounts its model
has one image for both), under `:bench-fp32` / `:bench-int8` tags; the engine's layer cache
makes this cheap after the tests built the same Dockerfiles. The baseline image is built from
a small, assembled context (the wheel and model never land in the repository).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from awsdeploy import container_engine, images
from services.targets import TARGETS

REPO_ROOT = container_engine.REPO_ROOT
# .dockerignore lets artifacts/*.onnx into the build context
BENCH_MODEL_IN_REPO = "artifacts/mhist-bench.{precision}.onnx"
BASELINE_DOCKERFILE = "benchmarks/baseline/Dockerfile"
BASELINE_TAG = "mhist-torch-baseline:bench"
DEFAULT_TORCH_VERSION = "2.13.0"
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/cpu"
# What the baseline image copies from the repository (paths relative to the root), besides
# the services/ modules that baseline/app.py imports and what they import in turn.
BASELINE_SOURCES = (
    "constraints.txt",
    BASELINE_DOCKERFILE,
    "benchmarks/baseline/app.py",
    "benchmarks/baseline/wheels/README.md",
    "services/install-venv.sh",  # its rootfs step slims the image as the ONNX ones
)
BASELINE_MODEL = "benchmarks/baseline/model/model.torchscript.pt"


class BaselineUnavailable(RuntimeError):
    """No torch CPU build can be put into the baseline image here; the message says why."""


@dataclass(frozen=True)
class BuiltImage:
    target: str
    tag: str
    build_s: float


def onnx_image_tag(name: str, precision: str) -> str:
    """e.g. mhist-flask:bench-int8; a target that mounts its model: mhist-sagemaker:bench."""
    target = TARGETS[name]
    return f"{target.image}:bench-{precision}" if target.bakes_model else f"{target.image}:bench"


def build_onnx_images(models: dict[str, Path], names: tuple[str, ...] = tuple(TARGETS)
                      ) -> dict[str, BuiltImage]:
    """`{name}-{precision}` → the built image, for every target and every precision in
    `models` ({"fp32": file, "int8": file}); a target that mounts its model is built once."""
    built: dict[str, BuiltImage] = {}
    for precision, model in models.items():
        relative = BENCH_MODEL_IN_REPO.format(precision=precision)
        staged = REPO_ROOT / relative
        staged.parent.mkdir(parents=True, exist_ok=True)
        if not staged.exists() or staged.read_bytes() != model.read_bytes():
            shutil.copyfile(model, staged)
        for name in names:
            tag = onnx_image_tag(name, precision)
            same = next((image for image in built.values() if image.tag == tag), None)
            if same is None:
                started = time.perf_counter()
                images.build_target(name, model=relative, tag=tag)
                same = BuiltImage(name, tag, time.perf_counter() - started)
            built[f"{name}-{precision}"] = same
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


def service_modules(entry: str = "benchmarks/baseline/app.py") -> list[str]:
    """The services/*.py files `entry` imports, directly or through each other (so a module
    that services/ splits off later travels with its importer), plus services/__init__.py."""
    found = {"services/__init__.py"}
    todo = [entry]
    while todo:
        tree = ast.parse((REPO_ROOT / todo.pop()).read_text())
        for node in ast.walk(tree):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                path = name.replace(".", "/") + ".py"
                if name.startswith("services.") and path not in found:
                    found.add(path)
                    todo.append(path)
    return sorted(found)


def assemble_baseline_context(context: Path, torchscript: Path, wheel: Path | None) -> Path:
    """A build context laid out like the repository, holding only what the Dockerfile copies."""
    if context.exists():
        shutil.rmtree(context)
    for relative in (*BASELINE_SOURCES, *service_modules()):
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
        container_engine.build(BASELINE_TAG, context / BASELINE_DOCKERFILE, context=context,
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


def image_package_version(image: str, package: str) -> str | None:
    """`package`'s version inside `image` (from its metadata: no import, so no torch start)."""
    done = subprocess.run(
        [container_engine.engine(), "run", "--rm", "--entrypoint", "python", image, "-c",
         f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True, text=True, timeout=300)
    return done.stdout.strip() or None if done.returncode == 0 else None


def _link_or_copy(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:  # another filesystem
        shutil.copyfile(source, destination)
