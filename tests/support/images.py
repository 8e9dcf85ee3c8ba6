"""Build each serving image once per test session, with the fixture model baked in.

    tag = built_image("flask", model_int8_path)      # "localhost/mhist-flask:test"

The first call per (target, model content) builds through awsdeploy.images (the Dockerfiles
and build arguments `make images` uses); later calls in the same process return the tag at
once. The model is staged under artifacts/ (the only place .dockerignore lets an ONNX file
into the build context) and removed again. Tags are `localhost/mhist-<target>:test`, so a
module that builds the same image itself reuses the engine's layer cache.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

from awsdeploy import container_engine, images
from services.core.files import sha256_file
from services.targets import TARGETS

_built: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def image_tag(target: str) -> str:
    return f"localhost/{TARGETS[target].image}:test"


def built_image(target: str, model_path: str | Path) -> str:
    """The tag of `target`'s image serving `model_path` (SageMaker's reads it at run time)."""
    digest = sha256_file(model_path)
    key = (target, digest if TARGETS[target].bakes_model else "")
    with _lock:
        if key not in _built:
            _built[key] = _build(target, Path(model_path), digest)
        return _built[key]


def _build(target: str, model_path: Path, digest: str) -> str:
    artifacts = container_engine.REPO_ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    staged = artifacts / f"test-{target}-{digest[:12]}.onnx"
    shutil.copyfile(model_path, staged)
    try:
        model = str(staged.relative_to(container_engine.REPO_ROOT))
        return images.build_target(target, model=model,
                                   tag=image_tag(target))
    finally:
        staged.unlink(missing_ok=True)


def image_user(tag: str) -> str:
    """`id -u` inside the image as it runs by default (entrypoint bypassed)."""
    result = subprocess.run(
        [container_engine.engine(), "run", "--rm", "--entrypoint", "id", tag, "-u"],
        capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"id -u in {tag} failed: {result.stderr}")
    return result.stdout.strip()
