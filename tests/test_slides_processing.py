"""A bucket of slides as a SageMaker Processing job (docs/slides.md, "A bucket of slides").

What can be tested here without SageMaker (moto has no Processing jobs): the Flask image built
with `EXTRAS=serving,slides` runs the job's ContainerEntrypoint exactly as a Processing
container does — no network, the input channel mounted read-only at /opt/ml/processing/input,
the output channel at /opt/ml/processing/output, the image's own user — over a folder with one
good slide and one file that is not a slide. The good slide's answers must equal the host CLI's
on the same slide with the same model, and the bad file must fail on its own line.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from awsdeploy import container_engine, images
from services.core.files import sha256_file
from services.targets import TARGETS
from tests.conftest import REPO_ROOT
from tests.support.slides import tissue_canvas, write_pyramid

pytestmark = pytest.mark.container

INPUT, OUTPUT = "/opt/ml/processing/input", "/opt/ml/processing/output"
# docs/slides.md's create_processing_job ContainerEntrypoint, word for word.
ENTRYPOINT = ["python", "-m", "services.slides", INPUT, "--model", "/opt/model/model.onnx",
              "--out", OUTPUT, "--no-progress"]
# As tests/test_slides.py: a 448 µm field per cell at 2.0 µm/px, level 0 four times finer.
CANVAS_MPP, LEVEL0_MPP, CELL_PX = 2.0, 0.5, 224


@pytest.fixture(scope="module")
def slides_image(require_containers: str, model_int8_path: Path) -> str:
    """The Flask image with the slides extra and the fixture model baked in."""
    staged = REPO_ROOT / "artifacts" / f"test-slides-{sha256_file(model_int8_path)[:12]}.onnx"
    staged.parent.mkdir(exist_ok=True)
    shutil.copyfile(model_int8_path, staged)
    try:
        args = {**images.build_args(TARGETS["flask"], str(staged.relative_to(REPO_ROOT))),
                "EXTRAS": "serving,slides"}
        return container_engine.build("localhost/mhist-flask:slides-test",
                                REPO_ROOT / TARGETS["flask"].dockerfile, build_args=args)
    finally:
        staged.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(input channel: one slide and one non-slide, empty output channel)."""
    root = tmp_path_factory.mktemp("processing")
    source, output = root / "input", root / "output"
    source.mkdir()
    output.mkdir()
    canvas, _ = tissue_canvas(("SSHH", "S..H", "HHSS"), CELL_PX)
    write_pyramid(source / "polyp.tif", canvas, CANVAS_MPP, LEVEL0_MPP)
    (source / "readme.txt").write_text("not a slide\n")
    for folder in (root, source):
        folder.chmod(0o755)
    for path in source.iterdir():
        path.chmod(0o644)
    output.chmod(0o777)  # written by the image's own user (uid 10001), as on SageMaker
    return source, output


@pytest.fixture(scope="module")
def job(slides_image: str, channels: tuple[Path, Path]) -> subprocess.CompletedProcess:
    source, output = channels
    return subprocess.run(
        [container_engine.engine(), "run", "--rm", "--network", "none",
         "-v", f"{source}:{INPUT}:ro,Z", "-v", f"{output}:{OUTPUT}:Z",
         "--entrypoint", ENTRYPOINT[0], slides_image, *ENTRYPOINT[1:]],
        capture_output=True, text=True, timeout=600)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_the_job_writes_every_output_of_the_good_slide(job, channels) -> None:
    _, output = channels
    assert "Traceback" not in job.stderr, job.stderr[-3000:]
    for suffix in (".tiles.csv", ".geojson", ".heatmap.png", ".summary.json"):
        assert (output / f"polyp{suffix}").stat().st_size > 0, suffix


def test_the_bad_file_fails_alone_and_marks_the_job_failed(job, channels) -> None:
    _, output = channels
    assert job.returncode == 1, job.stdout + job.stderr  # SageMaker marks the job Failed
    table = {Path(row["slide"]).name: row for row in _rows(output / "slides.summary.csv")}
    assert set(table) == {"polyp.tif", "readme.txt"}
    assert table["polyp.tif"]["status"] == "ok"
    assert table["readme.txt"]["status"] != "ok" and table["readme.txt"]["error"]
    failures = [line for line in job.stderr.splitlines() if "readme.txt" in line]
    assert len(failures) == 1, job.stderr[-3000:]


def test_the_container_answers_as_the_host_cli(job, channels, model_int8_path: Path,
                                               tmp_path: Path) -> None:
    source, output = channels
    host = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "services.slides", str(source / "polyp.tif"),
                    "--model", str(model_int8_path), "--out", str(host), "--no-progress"],
                   cwd=REPO_ROOT, check=True, capture_output=True, text=True, timeout=300)
    ours, theirs = _rows(output / "polyp.tiles.csv"), _rows(host / "polyp.tiles.csv")
    assert len(ours) == len(theirs) > 0
    keys = ("x", "y", "width", "height", "label")
    assert [tuple(r[k] for k in keys) for r in ours] == [tuple(r[k] for k in keys)
                                                          for r in theirs]
    p_column = next(k for k in ours[0] if k.startswith("p_"))
    np.testing.assert_allclose([float(r[p_column]) for r in ours],
                               [float(r[p_column]) for r in theirs], atol=1e-5)


def test_the_entrypoint_is_the_docs() -> None:
    """The command run above is the one docs/slides.md tells users to give SageMaker."""
    import ast
    import re

    page = (REPO_ROOT / "docs" / "slides.md").read_text()
    found = re.search(r'"ContainerEntrypoint": (\[.*?\])\}', page, re.DOTALL)
    assert found, "docs/slides.md lost its create_processing_job example"
    assert ast.literal_eval(re.sub(r"\s+", " ", found.group(1))) == ENTRYPOINT
