"""(5) Size: each image's size (as the engine reports it) and the installed size of its Python
environment (/opt/venv), with the largest packages — ONNX images (FP32 and INT8 file baked in;
SageMaker's mounts its model, so one image) vs the PyTorch baseline."""

from __future__ import annotations

import subprocess

import pytest

from awsdeploy.container_engine import base_image, engine, image_size_bytes
from benchmarks import BASELINE
from benchmarks.targets import IMAGE_VARIANTS, image_for

_DU = ("du -sk /opt/venv | cut -f1; "
       "du -sk /opt/venv/lib/python3*/site-packages/* | sort -rn | head -n 6")


def _venv_sizes(image: str) -> dict:
    """(/opt/venv KiB, top packages) by running `du` inside the image."""
    done = subprocess.run([engine(), "run", "--rm", "--entrypoint", "sh", image, "-c", _DU],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")
    total_kib = int(lines[0].strip())
    top = []
    for line in lines[1:]:
        if line.strip():
            size, path = line.split("\t", 1)
            top.append({"package": path.rsplit("/", 1)[-1], "mb": int(size) / 1024})
    return {"venv_mb": total_kib / 1024, "top_packages": top}


def _slimmed(image: str) -> bool:
    """Whether the image's root is the slim `FROM scratch` one (services/install-venv.sh
    rootfs: no dpkg, no coreutils) rather than a whole Debian base: the size report labels an
    unslimmed baseline as such, so no reader sets unlike images against each other."""
    done = subprocess.run([engine(), "run", "--rm", "--entrypoint", "sh", image, "-c",
                           "test -e /usr/bin/dpkg || test -e /var/lib/dpkg/status"],
                          capture_output=True, timeout=300)
    return done.returncode != 0


@pytest.mark.container
@pytest.mark.parametrize("variant", IMAGE_VARIANTS, ids=[v.key for v in IMAGE_VARIANTS])
def test_image_size(variant, request, results):
    image = image_for(request, variant)
    record = {"target": variant.target, "precision": variant.precision, "image": image,
              "image_mb": image_size_bytes(image) / 1e6, **_venv_sizes(image)}
    if results.get("size", "base") is None:
        try:
            base_mb = image_size_bytes(base_image()) / 1e6
        except subprocess.CalledProcessError:  # BASE_IMAGE not pulled/built locally
            base_mb = None
        results.put("size", "base", {"image": base_image(), "base_image_mb": base_mb})
    if variant.target == BASELINE:
        record["slimmed"] = _slimmed(image)
    results.put("size", variant.key, record)
    assert record["venv_mb"] > 0 and record["image_mb"] > 0
