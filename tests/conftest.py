"""Session fixtures built by the real pipeline: synthetic sample → training → export.

Nothing here is mocked: the ONNX files every serving test uses come out of
`training/train.py` and `export/to_onnx.py`, run as a user runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small enough to train and export in well under a minute on 2 CPU cores. The sample is about
# as hard as MHIST (generator version 2): 96 images for 1 epoch gave validation AUC 0.75 and
# probabilities too timid for the slide tests; 200 images for 5 epochs (~5 s an epoch here)
# gave validation AUC 0.81, test AUC 0.90 and tell the planted SSA and HP fields apart.
FIXTURE_IMAGE_SIZE = 64
FIXTURE_COUNT = 200
FIXTURE_EPOCHS = 5


def run_cli(
    *args: str, env: dict | None = None, cwd: Path = REPO_ROOT, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run one of the project's CLIs with this interpreter; fail the test with its output."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
            f"{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SYNTHETIC dataset in the MHIST layout (annotations.csv + images/)."""
    out = tmp_path_factory.mktemp("mhist-sample")
    run_cli(
        "-m",
        "training.sample_data",
        "--out",
        str(out),
        "--count",
        str(FIXTURE_COUNT),
        "--size",
        "96",
        "--seed",
        "7",
    )
    return out


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def exported(sample_dir: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train from scratch, register the model, export FP32 + INT8 from the registry."""
    work = tmp_path_factory.mktemp("pipeline")
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    # Run from the work folder: MLflow puts a new experiment's artifacts (./mlruns) in the
    # working folder, and the repository must stay clean.
    run_cli(
        str(REPO_ROOT / "training" / "train.py"),
        "--data-dir",
        str(sample_dir),
        "--epochs",
        str(FIXTURE_EPOCHS),
        "--weights",
        "none",
        "--image-size",
        str(FIXTURE_IMAGE_SIZE),
        "--batch-size",
        "16",
        "--out",
        str(work / "checkpoints"),
        "--tracking-uri",
        tracking_uri,
        env=env,
        cwd=work,
    )
    out = work / "onnx"
    run_cli(
        str(REPO_ROOT / "export" / "to_onnx.py"),
        "--model-uri",
        "models:/mhist-resnet18/latest",
        "--data-dir",
        str(sample_dir),
        "--out",
        str(out),
        "--tracking-uri",
        tracking_uri,
        "--calibration-size",
        "16",
        "--allow-degraded",
        env=env,
        cwd=work,
    )
    return {
        "dir": out,
        "fp32": out / "model.onnx",
        "int8": out / "model.int8.onnx",
        "report": out / "export_report.json",
        "checkpoint": work / "checkpoints" / "best.pt",
        "tracking_uri": tracking_uri,
    }


@pytest.fixture(scope="session")
def model_fp32_path(exported: dict) -> Path:
    return exported["fp32"]


@pytest.fixture(scope="session")
def model_int8_path(exported: dict) -> Path:
    return exported["int8"]


@pytest.fixture(scope="session")
def sample_image_path(sample_dir: Path) -> Path:
    return sorted((sample_dir / "images").glob("*.png"))[0]


@pytest.fixture(scope="session")
def sample_image_bytes(sample_image_path: Path) -> bytes:
    return sample_image_path.read_bytes()


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose tool (container engine, Chromium, Playwright, torch, an image) is
    missing, but FAIL when CI demands everything (MHIST_REQUIRE_CONTAINERS=1, set by .ci/run):
    a skipped test must not look green. `reason` says what is missing and how to install it."""
    if os.environ.get("MHIST_REQUIRE_CONTAINERS") == "1":
        pytest.fail(f"required in CI (MHIST_REQUIRE_CONTAINERS=1), but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_containers() -> str:
    """The container engine's name; skips without one, fails in CI (see `unavailable`)."""
    from awsdeploy.container_engine import EngineUnavailable, engine

    try:
        return engine()
    except EngineUnavailable as exc:
        unavailable(f"no container engine works: {exc}")
